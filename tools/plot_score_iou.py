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
from detector.config import ConfigError, load_config
from detector.data.build import build_val_loader, prepare_synthetic_data
from detector.data.detection_dataset import BadImageError
from detector.models import build_model
from detector.runtime.checkpoint import CheckpointError
from detector.runtime.device import resolve_device
from detector.runtime.logging_setup import setup_logging
from detector.runtime.model_state import load_model_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="CONFIG CHECKPOINT", help="pairs of config and checkpoint")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--names", nargs="+", help="panel names (default: config file stems)")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N val images")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config")
    args = parser.parse_args(argv)
    if len(args.models) % 2:
        parser.error(f"give CONFIG CHECKPOINT pairs; got {len(args.models)} paths")
    args.pairs = list(zip(args.models[::2], args.models[1::2]))
    if args.names and len(args.names) != len(args.pairs):
        parser.error(f"{len(args.names)} names for {len(args.pairs)} models")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(0)
    names = args.names or [Path(config).stem for config, _ in args.pairs]
    results = []
    for (config, checkpoint), name in zip(args.pairs, names):
        try:  # the checkpoint holds every weight: never fetch backbone weights
            cfg = load_config(config, ["model.backbone.weights=null", *args.opts])
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            prepare_synthetic_data(cfg)
            device = resolve_device(cfg.runtime.device)
            model = build_model(cfg)
            load_model_checkpoint(model, checkpoint)
            model.to(device).float()
            result = collect_score_iou(model, build_val_loader(cfg), device, args.max_images)
        except (FileNotFoundError, ValueError, CheckpointError, BadImageError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        r_high, num_high = result.correlation_above(0.5)
        print(f"{name}: {len(result.scores)} detections (after NMS) on {result.num_images} images, "
              f"Pearson r(score, IoU) = {result.correlation:.3f}; over the {num_high} with IoU >= 0.5: "
              f"r = {r_high:.3f}")
        results.append(result)
    print(f"wrote {plot_score_iou(results, names, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
