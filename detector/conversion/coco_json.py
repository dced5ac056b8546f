"""The COCO JSON the dataset label converters write, and the precision they write it with.

A converted file holds the keys every COCO reader expects ("info", "licenses", "images", "annotations",
"categories"):
    images       {"id", "file_name", "width", "height"}; ids 1..N in the order the converter lists them,
                 file names relative to the image folder, with "/" separators
    annotations  {"id", "image_id", "category_id", "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0 | 1}
                 (plus format-specific keys such as VOC's "difficult" and "truncated", which readers ignore);
                 ids 1..M in order
    categories   {"id", "name"}; ids 1..K in class-index order
Boxes are in COCO's continuous pixel frame: the image spans [0, W] x [0, H] and x, y is the top-left corner.

Precision: every pixel coordinate is rounded to PIXEL_DECIMALS = 3 decimals (a thousandth of a pixel), the
corners first and then w = x2 - x1, h = y2 - y1. Boxes whose corners lie on that grid (integer pixel boxes,
COCO's own two-decimal boxes) are therefore written bit for bit as the same floats a JSON reader makes of
their decimal text, which is what makes the converters' round trips exact (yolo.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PIXEL_DECIMALS = 3


def round_pixel(value: float) -> float:
    """A pixel coordinate rounded to PIXEL_DECIMALS decimals (-0.0 becomes 0.0)."""
    return round(float(value), PIXEL_DECIMALS) + 0.0


@dataclass
class ConversionResult:
    """What a conversion produced: the COCO dict, the folder its file names are relative to, a one-line
    summary and remarks the user should see (ignored, clipped or skipped boxes, unlabelled images)."""

    dataset: dict
    images_root: Path
    summary: str
    notes: list[str] = field(default_factory=list)


class CocoBuilder:
    """Collects images, boxes and categories and hands them out as a COCO-format dict.

    Args:
        class_names: category names in class-index order; class i gets category id i + 1.
        description: what the file was converted from, for the "info" entry.
    """

    def __init__(self, class_names: list[str], description: str) -> None:
        self.class_names = list(class_names)
        self.description = description
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._num_boxes_per_image: dict[int, int] = {}

    def add_image(self, file_name: str, width: int, height: int) -> int:
        """Add an image entry and return its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        self._num_boxes_per_image[image_id] = 0
        return image_id

    def add_box(self, image_id: int, category_id: int, corners: tuple[float, float, float, float],
                iscrowd: bool = False, extra: dict | None = None) -> dict:
        """Add a box given by its corners (x1, y1, x2, y2) in pixels; return the annotation entry."""
        x1, y1, x2, y2 = (round_pixel(value) for value in corners)
        width, height = round_pixel(x2 - x1), round_pixel(y2 - y1)
        annotation = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
                      "bbox": [x1, y1, width, height], "area": round(width * height, 2 * PIXEL_DECIMALS),
                      "iscrowd": int(bool(iscrowd)), **(extra or {})}
        self.annotations.append(annotation)
        if not iscrowd:
            self._num_boxes_per_image[image_id] += 1
        return annotation

    def to_dict(self) -> dict:
        return {
            "info": {"description": self.description},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": index + 1, "name": name} for index, name in enumerate(self.class_names)],
        }

    def summary(self) -> str:
        """One line: image, box, ignore-region and class counts, and the class names in id order."""
        num_crowd = sum(annotation["iscrowd"] for annotation in self.annotations)
        num_empty = sum(count == 0 for count in self._num_boxes_per_image.values())
        shown = ", ".join(self.class_names[:20]) + (", ..." if len(self.class_names) > 20 else "")
        return (f"{len(self.images)} images ({num_empty} without boxes), {len(self.annotations) - num_crowd} "
                f"boxes, {num_crowd} ignore regions (iscrowd), {len(self.class_names)} classes (ids 1..: "
                f"{shown})")


def write_coco_json(dataset: dict, path: Path | str) -> None:
    """Write `dataset` as JSON (ASCII with \\u escapes, so that readers with any locale read non-ASCII file
    names right), through a temporary file so that a failed write never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="ascii") as f:
            json.dump(dataset, f, ensure_ascii=True, separators=(",", ":"))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
