"""GFL Fig. 2: predicted score of each detection against its IoU with the same-class ground truth.

    python tools/plot_score_iou.py CONFIG CHECKPOINT [CONFIG CHECKPOINT ...] --out fig.png
        [--names RetinaNet GFL] [--max-images N] [--opts KEY=VALUE ...]

One panel per model with Pearson's r. Detections are the models' final outputs (after NMS), over the first
N images of each config's val set; --opts apply to every config (e.g. model.test.score_thr=0.01).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.analysis.score_iou import collect_score_iou, plot_score_iou
from detector.cli.common import add_opts_argument, load_tool_config, load_trained_model, tool_parser
from detector.cli.entry import run_command
from detector.data.build import build_val_loader, prepare_synthetic_data
from detector.runtime.device import resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("models", nargs="+", metavar="CONFIG CHECKPOINT", help="pairs of config and checkpoint")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--names", nargs="+", help="panel names (default: config file stems)")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N val images")
    add_opts_argument(parser, "overrides for every config")
    args = parser.parse_args(argv)
    if len(args.models) % 2:
        parser.error(f"give CONFIG CHECKPOINT pairs; got {len(args.models)} paths")
    args.pairs = list(zip(args.models[::2], args.models[1::2]))
    if args.names and len(args.names) != len(args.pairs):
        parser.error(f"{len(args.names)} names for {len(args.pairs)} models")
    return args


def run(args: argparse.Namespace) -> None:
    names = args.names or [Path(config).stem for config, _ in args.pairs]
    results = []
    for (config, checkpoint), name in zip(args.pairs, names):
        # the checkpoint holds every weight: never fetch backbone weights
        cfg = load_tool_config(config, args.opts, fixed=["model.backbone.weights=null"])
        prepare_synthetic_data(cfg)
        device = resolve_device(cfg.runtime.device)
        model = load_trained_model(cfg, checkpoint, config).to(device).float()
        result = collect_score_iou(model, build_val_loader(cfg), device, args.max_images)
        r_high, num_high = result.correlation_above(0.5)
        print(f"{name}: {len(result.scores)} detections (after NMS) on {result.num_images} images, "
              f"Pearson r(score, IoU) = {result.correlation:.3f}; over the {num_high} with IoU >= 0.5: "
              f"r = {r_high:.3f}")
        results.append(result)
    print(f"wrote {plot_score_iou(results, names, args.out)}")


def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
