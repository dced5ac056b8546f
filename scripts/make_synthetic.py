"""Generate the synthetic COCO-format shapes dataset.

Example:
    python scripts/make_synthetic.py --out data/synthetic --num-train 600 --num-val 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:
    from detector.data.synthetic import generate_synthetic_coco
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from detector.data.synthetic import generate_synthetic_coco


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic", help="output root folder (default: data/synthetic)")
    parser.add_argument("--num-train", type=int, default=600, help="training images")
    parser.add_argument("--num-val", type=int, default=100, help="validation images")
    parser.add_argument("--image-size", type=int, default=256,
                        help="largest image side; each side is drawn from [0.75, 1] x this")
    parser.add_argument("--num-classes", type=int, default=6, help="number of classes")
    parser.add_argument("--min-object-size", type=int, default=16, help="smallest object side in pixels")
    parser.add_argument("--max-object-size", type=int, default=160, help="largest object side in pixels")
    parser.add_argument("--max-objects", type=int, default=6, help="at most this many objects per image")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png", help="image file format")
    parser.add_argument("--crowd-prob", type=float, default=0.0, help="probability of a crowd region per image")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    paths = generate_synthetic_coco(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        num_classes=args.num_classes,
        min_object_size=args.min_object_size,
        max_object_size=args.max_object_size,
        max_objects=args.max_objects,
        seed=args.seed,
        image_format=args.image_format,
        crowd_prob=args.crowd_prob,
    )
    seconds = time.perf_counter() - start
    for split in ("train", "val"):
        with open(paths[f"{split}_ann_file"], "r", encoding="utf-8") as f:
            dataset = json.load(f)
        num_crowd = sum(ann["iscrowd"] for ann in dataset["annotations"])
        print(
            f"{split}: {len(dataset['images'])} images in {paths[f'{split}_img_dir']}, "
            f"{len(dataset['annotations']) - num_crowd} boxes + {num_crowd} crowd regions, "
            f"{len(dataset['categories'])} classes -> {paths[f'{split}_ann_file']}"
        )
    print(f"parameters: {paths['params_file']}")
    print(f"done in {seconds:.1f} s ({(args.num_train + args.num_val) / max(seconds, 1e-9):.0f} images/s)")


if __name__ == "__main__":
    main()
