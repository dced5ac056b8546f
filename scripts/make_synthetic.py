"""Generate a synthetic shapes dataset: COCO format, or LVIS v1 format with a long-tailed class distribution.

Options left out take the generator's defaults, which differ between the formats (shown in brackets as
coco / lvis). LVIS-only options are rejected with --format coco, and --crowd-prob with --format lvis.

Examples:
    python scripts/make_synthetic.py --out data/synthetic --num-train 600 --num-val 100
    python scripts/make_synthetic.py --format lvis --out data/synthetic_lvis
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import sys
import time

try:
    from detector.data.synthetic import generate_synthetic_coco
    from detector.data.synthetic_lvis import generate_synthetic_lvis
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from detector.data.synthetic import generate_synthetic_coco
    from detector.data.synthetic_lvis import generate_synthetic_lvis

GENERATORS = {"coco": generate_synthetic_coco, "lvis": generate_synthetic_lvis}
_DEFAULTS = {
    name: {key: p.default for key, p in inspect.signature(fn).parameters.items() if key != "root"}
    for name, fn in GENERATORS.items()
}


def _default(key: str) -> str:
    return " / ".join(str(_DEFAULTS[name].get(key, "-")) for name in GENERATORS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=tuple(GENERATORS), default="coco", help="annotation format (coco)")
    parser.add_argument("--out", default=None, help="output root folder (data/synthetic / data/synthetic_lvis)")
    options = [
        ("--num-train", int, "training images"),
        ("--num-val", int, "validation images"),
        ("--image-size", int, "largest image side; each side is drawn from [0.75, 1] x this"),
        ("--num-classes", int, "number of classes"),
        ("--min-object-size", int, "smallest object side in pixels"),
        ("--max-object-size", int, "largest object side in pixels"),
        ("--max-objects", int, "at most this many objects per image"),
        ("--seed", int, "random seed (same seed, same files)"),
        ("--image-format", str, "image file format: png or jpg"),
        ("--crowd-prob", float, "probability of a crowd region per image (coco only)"),
        ("--num-rare", int, "rare classes, 1-10 train images (lvis only)"),
        ("--num-common", int, "common classes, 11-100 train images (lvis only); the rest are frequent"),
        ("--head-images", int, "train images of the most frequent class (lvis only)"),
        ("--min-val-images", int, "val images of every class at least (lvis only)"),
        ("--neg-category-prob", float, "chance that an absent class is listed in neg_category_ids (lvis only)"),
        ("--not-exhaustive-prob", float, "chance that a class with 2+ instances loses one annotation and is "
                                         "listed in not_exhaustive_category_ids (lvis only)"),
    ]
    for flag, kind, text in options:
        key = flag[2:].replace("-", "_")
        choices = ("png", "jpg") if key == "image_format" else None
        parser.add_argument(flag, type=kind, default=None, choices=choices, help=f"{text} [{_default(key)}]")
    args = parser.parse_args(argv)
    accepted = _DEFAULTS[args.format]
    given = {key: value for key, value in vars(args).items() if value is not None and key not in ("format", "out")}
    wrong = sorted(key for key in given if key not in accepted)
    if wrong:
        parser.error(f"--format {args.format} does not take " + ", ".join("--" + k.replace("_", "-") for k in wrong))
    args.params = given
    if args.out is None:
        args.out = "data/synthetic" if args.format == "coco" else "data/synthetic_lvis"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    paths = GENERATORS[args.format](args.out, **args.params)
    seconds = time.perf_counter() - start
    num_images = 0
    for split in ("train", "val"):
        with open(paths[f"{split}_ann_file"], "r", encoding="utf-8") as f:
            dataset = json.load(f)
        num_images += len(dataset["images"])
        num_crowd = sum(ann.get("iscrowd", 0) for ann in dataset["annotations"])
        print(
            f"{split}: {len(dataset['images'])} images in {paths[f'{split}_img_dir']}, "
            f"{len(dataset['annotations']) - num_crowd} boxes + {num_crowd} crowd regions, "
            f"{len(dataset['categories'])} classes -> {paths[f'{split}_ann_file']}"
        )
    if args.format == "lvis":
        groups = collections.Counter(cat["frequency"] for cat in dataset["categories"])
        print(f"frequency groups (from train image counts): {groups['r']} rare, {groups['c']} common, "
              f"{groups['f']} frequent")
    print(f"parameters: {paths['params_file']}")
    print(f"done in {seconds:.1f} s ({num_images / max(seconds, 1e-9):.0f} images/s)")


if __name__ == "__main__":
    main()
