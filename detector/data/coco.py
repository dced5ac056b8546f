"""COCO-format detection dataset (the shared core is `DetectionDataset` in detection_dataset.py)."""

from __future__ import annotations

import contextlib
import io
import json

from pycocotools.coco import COCO

from detector.data.annotation_files import format_hint, load_detection_json, lvis_evidence
from detector.data.detection_dataset import DetectionDataset


class CocoDetection(DetectionDataset):
    """Detection dataset over a COCO-format annotation file and an image folder.

    Args:
        ann_file: path to the COCO-format JSON (keys "images", "annotations", "categories").
        img_dir: folder holding the images named by each image's "file_name"; None builds an annotations-only
            dataset (validation, metadata and targets; loading an image raises).
        transforms: optional callable `(image_uint8, target) -> (image, target)`, e.g. `build_transforms(...)`.
        filter_empty: drop images without any non-crowd box (used for training).
        on_bad_image: "error" raises BadImageError naming the file and image id of a missing, truncated or
            undecodable image; "skip" replaces the sample with the next readable index and counts it:
            `num_skipped_images` (skip events) and `bad_image_ids` (distinct images) are kept in shared
            memory, so they sum over the DataLoader worker processes and can be read from the main process
            at any time; each distinct bad image is logged once as a warning with the running counts.
            Meant for training: in evaluation the substitute image would be predicted twice.
        exif_orientation: apply the EXIF orientation tag when decoding (as mmcv, detectron2 and Ultralytics
            do), so an image and its annotation are in the orientation viewers show; False keeps the stored
            pixel grid. Files without the tag decode the same either way.

    An annotation file that is not COCO format raises ValueError naming the file and the fault (not JSON,
    not an object, missing or non-list "images" / "annotations" / "categories", an LVIS file (hint: set
    data.*.format to lvis), duplicate ids, and per annotation, with its id and image id: an unknown image or
    category, a bbox that is not 4 finite numbers). Boxes of zero or negative size are dropped and counted.

    `__getitem__(i)` returns `(image, target)`; target holds `boxes` (G, 4) float32 xyxy, `labels` (G,) int64
    contiguous 0-based, `ignore_boxes` (C, 4) float32 crowd regions, `image_id` (original id), `orig_size`
    (h, w) of the file and `img_size` (h, w) after the transforms' resize (before any batch padding).
    """

    def __init__(
        self,
        ann_file: str,
        img_dir: str | None,
        transforms=None,
        filter_empty: bool = False,
        on_bad_image: str = "error",
        exif_orientation: bool = True,
    ) -> None:
        super().__init__(ann_file, img_dir, transforms=transforms, filter_empty=filter_empty,
                         on_bad_image=on_bad_image, exif_orientation=exif_orientation)
        self._coco: COCO | None = None
        dataset = load_detection_json(ann_file)
        evidence = lvis_evidence(dataset)
        if evidence is not None:
            raise ValueError(f"{ann_file}: this is an LVIS file ({evidence}), read here as COCO format; "
                             f"{format_hint(ann_file, 'lvis')}")
        self._index(dataset)

    @property
    def coco(self) -> COCO:
        """pycocotools index of the annotation file, built on first use (evaluators need it, workers do not)."""
        if self._coco is None:
            coco = COCO()
            with open(self.ann_file, "r", encoding="utf-8") as f:
                coco.dataset = json.load(f)
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                coco.createIndex()
            self._coco = coco
        return self._coco
