"""Reading COCO- and LVIS-format annotation files: JSON, top-level shape and which format a file is in.

Every error names the file (and, where it applies, the setting to change), so a wrong ``data.*.ann_file`` or
``data.*.format`` stops with one clear line.
"""

from __future__ import annotations

import json
import os

_REQUIRED_KEYS = ("images", "annotations", "categories")


def check_detection_dict(dataset, ann_file: str, kind: str = "COCO") -> dict:
    """Check that a loaded annotation file is an object with list-valued "images", "annotations" and
    "categories"; every error names the file. Returns `dataset`."""
    if not isinstance(dataset, dict):
        raise ValueError(
            f"{ann_file}: not a {kind}-format file (top level is {type(dataset).__name__}, expected an object)"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in dataset]
    if missing:
        raise ValueError(f"{ann_file}: not a {kind}-format detection file, missing key(s) {missing}")
    for key in _REQUIRED_KEYS:
        if not isinstance(dataset[key], list):
            raise ValueError(f"{ann_file}: key {key!r} must hold a list, got {type(dataset[key]).__name__}")
    return dataset


def load_detection_json(ann_file: str, kind: str = "COCO") -> dict:
    """Read and shape-check a COCO- or LVIS-format JSON file; every error names the file."""
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann_file}: not valid JSON ({err})") from err
    except UnicodeDecodeError as err:  # binary garbage, an image or a checkpoint given as annotation file
        raise ValueError(f"{ann_file}: not valid JSON (not UTF-8 text: {err.reason} at byte {err.start})") from err
    return check_detection_dict(dataset, ann_file, kind)


def lvis_evidence(dataset: dict) -> str | None:
    """Why a loaded annotation dict looks like an LVIS file (v0.5 / v1), or None when it does not.

    LVIS categories carry a "frequency" group, LVIS images list "neg_category_ids" /
    "not_exhaustive_category_ids", and LVIS v1 images are named by "coco_url" alone (no "file_name").
    COCO files have none of these (COCO images have a "coco_url" too, but always with a "file_name").
    """
    if any(isinstance(cat, dict) and "frequency" in cat for cat in dataset["categories"]):
        return "its categories carry a 'frequency' group"
    for img in dataset["images"]:
        if isinstance(img, dict):
            if "neg_category_ids" in img or "not_exhaustive_category_ids" in img:
                return f"image id {img.get('id')} lists neg_category_ids / not_exhaustive_category_ids"
            if "coco_url" in img and "file_name" not in img:
                return f"image id {img.get('id')} has a 'coco_url' and no 'file_name' (LVIS v1)"
    return None


def format_hint(ann_file: str, fmt: str) -> str:
    """The advice appended when a file is read with the wrong ``data.*.format``."""
    return (f"set data.train.format / data.val.format (whichever names {os.path.basename(ann_file)}) "
            f"to {fmt}")
