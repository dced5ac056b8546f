"""EFL Fig. 2: positive / negative sample ratio per category under the config's anchors and assigner.

    python tools/plot_sample_ratio.py CONFIG --out fig.png [--split train] [--max-images N] [--opts ...]

For category j, pos_j counts the anchors assigned to its ground truths and neg_j every other non-ignored
anchor (as in the EFL paper), summed over the split's images; the network never runs (only the anchors and
the assigner of the model the config builds). Categories are sorted by training instances; LVIS-format
annotation files colour them rare / common / frequent. Each image counts once (no repeat-factor sampling):
the figure describes the dataset under the assigner, as the EFL paper's does for LVIS v1 train.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.analysis.sample_ratio import (annotation_batches, count_samples, format_counts, instances_per_class,
                                            plot_sample_ratio)
from detector.cli.common import add_config_argument, add_opts_argument, load_tool_config, tool_parser
from detector.cli.entry import run_command
from detector.data.build import DATASETS, prepare_synthetic_data
from detector.models import build_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser, "YAML config file (its model's anchors and assigner, its data)")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images of the split")
    add_opts_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    # only anchors and the assigner are used: never fetch backbone weights
    cfg = load_tool_config(args.config, args.opts, fixed=["model.backbone.weights=null"])
    data, split = cfg.data, getattr(cfg.data, args.split)
    min_size, max_size = (max(data.min_size), data.max_size) if args.split == "train" else \
        (data.test_min_size, data.test_max_size)
    prepare_synthetic_data(cfg)
    dataset = DATASETS[split.format](split.ann_file, img_dir=None, filter_empty=split.filter_empty)
    if dataset.num_classes != cfg.model.num_classes:
        raise ValueError(f"{split.ann_file} has {dataset.num_classes} categories but model.num_classes is "
                         f"{cfg.model.num_classes}")
    model = build_model(cfg)
    batches = annotation_batches(dataset, min_size, max_size, data.size_divisor, data.batch_size, args.max_images)
    counts = count_samples(model.anchor_generator, model.head.assigner, batches, dataset.num_classes)
    instances = instances_per_class(dataset, dataset.num_classes, args.max_images)
    frequency = getattr(dataset, "category_frequency", None) or None
    print(f"{args.split}: {counts.num_images} images, assigner {model.head.assigner!r}")
    print(format_counts(counts, instances, dataset.class_names, frequency))
    if frequency:
        for group in ("r", "c", "f"):
            members = [j for j, g in enumerate(frequency) if g == group]
            if members:
                ratio = counts.positives[members].sum() / max(counts.negatives[members].sum(), 1)
                print(f"group {group}: {len(members)} categories, pooled pos/neg {ratio:.2e}")
    title = f"{Path(args.config).stem} ({cfg.model.assigner.type} assigner), {args.split}: {split.ann_file}"
    print(f"wrote {plot_sample_ratio(counts, instances, args.out, frequency, title=title)}")


def main(argv=None) -> int:
    return run_command(parse_args, run, argv, bad_input=(FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
