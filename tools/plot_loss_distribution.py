"""RetinaNet Fig. 4: cumulative distribution of the normalised focal loss of positives and negatives.

    python tools/plot_loss_distribution.py CONFIG CHECKPOINT --out fig4.png [--gammas 0 0.5 1 2]
        [--max-images N] [--negatives all_classes|max_class] [--max-negatives 10000000] [--opts KEY=VALUE ...]

Runs the trained model over the config's val set, assigns its anchors with the model's own assigner (as in
training), computes FL at each gamma for the positives (gt-class logit of positive anchors) and the negatives
(every class logit of background anchors by default; see detector/analysis/loss_distribution.py), and prints
the paper's readings: the share of the positive loss from the hardest 20% of positives and the share of the
negative loss from the hardest 5% of negatives.
"""

from __future__ import annotations

import argparse
import sys

from detector.analysis.loss_distribution import (NEGATIVE_MODES, collect_classification_logits, format_readings,
                                                 loss_distribution_readings, num_samples_text,
                                                 plot_loss_distribution)
from detector.cli.common import (add_config_argument, add_opts_argument, load_tool_config, load_trained_model,
                                 tool_parser)
from detector.cli.entry import run_command
from detector.data.build import build_val_loader, prepare_synthetic_data
from detector.runtime.device import resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser, "YAML config file of the trained model")
    parser.add_argument("checkpoint", help="checkpoint (.pt) holding the model weights")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0, 0.5, 1, 2])
    parser.add_argument("--max-images", type=int, default=None, help="use the first N val images")
    parser.add_argument("--negatives", choices=NEGATIVE_MODES, default="all_classes")
    parser.add_argument("--max-negatives", type=int, default=10**7, help="seeded subsample cap (paper: ~1e7)")
    add_opts_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    # the checkpoint holds every weight: never fetch backbone weights
    cfg = load_tool_config(args.config, args.opts, fixed=["model.backbone.weights=null"])
    prepare_synthetic_data(cfg)
    device = resolve_device(cfg.runtime.device)
    model = load_trained_model(cfg, args.checkpoint, args.config).to(device).float()
    samples = collect_classification_logits(model, build_val_loader(cfg), device, args.max_images,
                                            args.negatives, args.max_negatives, seed=cfg.runtime.seed)
    readings, curves = loss_distribution_readings(samples, args.gammas)
    print(num_samples_text(samples) + f" (negatives: {args.negatives})")
    print(format_readings(readings))
    title = f"{cfg.model.type}: cumulative normalized FL over {samples.num_images} val images"
    print(f"wrote {plot_loss_distribution(curves, samples, args.out, title=title)}")


def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
