"""Draw training (or val) samples as the model receives them: after resize, flip, multi-scale choice and the
``data.augment`` augmentations (crops, large-scale jitter, photometric distortion) when they are on.

    python tools/browse_dataset.py CONFIG --out-dir browse/ [--split train|val] [--max-images 16] [--opts ...]

The samples come from the same loader training uses (tools/train.py: seeded per-sample augmentation,
aspect-ratio grouped batches, padding); each image is cut to its size after the transforms, un-normalised
with data.mean / data.std and drawn with its target boxes and class names (crowd regions in grey). Files are
named <image id>_<w>x<h>.png (size after the transforms); the caption adds the original and batch sizes.

Exit status: 0 on success; 1 on bad input (missing annotation or image file), reported as one `error: ...`
line; 2 on a bad config, override or command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detector.cli.common import add_config_argument, add_opts_argument, load_tool_config, tool_parser
from detector.cli.entry import run_command
from detector.data.build import build_train_loader, build_val_loader, prepare_synthetic_data
from detector.visualization import iter_drawn_samples, save_png

logger = logging.getLogger("detector")


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser)
    parser.add_argument("--out-dir", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="train: the training loader with its augmentation (default); val: the val loader")
    parser.add_argument("--max-images", type=int, default=16,
                        help="at most this many images, from the first epoch (default 16)")
    parser.add_argument("--scale", type=int, default=1, help="enlarge the images this many times (default 1)")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if args.max_images < 1 or args.scale < 1:
        parser.error("--max-images and --scale must be >= 1")
    return args


def run(args: argparse.Namespace) -> None:
    cfg = load_tool_config(args.config, args.opts)
    prepare_synthetic_data(cfg)
    if args.split == "train":
        loader, sampler = build_train_loader(cfg)
        sampler.set_epoch(0)  # the first epoch's order and augmentation, as training draws them
    else:
        loader = build_val_loader(cfg)
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # the train set is wrapped in a SeededDataset
    written = 0
    for stem, image in iter_drawn_samples(loader, cfg.data.mean, cfg.data.std, dataset.class_names,
                                          args.max_images, args.scale):
        save_png(image, Path(args.out_dir) / f"{stem}.png")
        written += 1
    logger.info("wrote %d images to %s", written, args.out_dir)


def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
