"""LVIS v1 detection dataset.

LVIS v1 annotates the COCO 2017 images with 1203 categories in a federated way: each category carries a
frequency group ("r" rare: 1-10 training images, "c" common: 11-100, "f" frequent: > 100), and each image
lists the categories verified absent (`neg_category_ids`) and those present but not exhaustively annotated
(`not_exhaustive_category_ids`); the evaluator needs both, training does not. LVIS has no crowd boxes.

LVIS v1 image entries have no "file_name": their file is named by the last two parts of `coco_url`
(e.g. "http://images.cocodataset.org/val2017/000000397133.jpg" -> "val2017/000000397133.jpg"; LVIS v1 val
also uses train2017 images), so `img_dir` is the COCO root holding train2017/ and val2017/ (a flat folder
with all the files works too).
"""

from __future__ import annotations

import logging
import os
import posixpath
from urllib.parse import urlparse

import numpy as np

from detector.data.annotation_files import check_detection_dict, format_hint, load_detection_json, lvis_evidence
from detector.data.detection_dataset import DetectionDataset

logger = logging.getLogger("detector.data")

FREQUENCY_GROUPS = ("r", "c", "f")


class LVISDetection(DetectionDataset):
    """Detection dataset over an LVIS v1 annotation file and the COCO image folder.

    Args:
        ann_file: LVIS JSON (e.g. lvis_v1_train.json). Malformed files raise ValueError naming the file and
            the entry, as for `CocoDetection`; a COCO-format file (no category has a "frequency") gets a hint
            to set data.*.format to coco.
        img_dir: folder under which images are found. An image entry with "file_name" is read from
            `img_dir/<file_name>`; otherwise from `img_dir/<folder>/<file>` and then `img_dir/<file>`, where
            `<folder>/<file>` are the last two parts of its "coco_url" (e.g. val2017/000000397133.jpg).
            None: annotations only, as for `CocoDetection`.
        transforms, filter_empty, on_bad_image, exif_orientation: as for `CocoDetection`.

    Items, `cat_ids`, `label_to_cat_id`, `cat_id_to_label`, `class_names`, `num_classes` (1203 for LVIS v1),
    `image_ids`, `stats`, `aspect_ratios()`, `image_category_ids()` are those of `CocoDetection`
    (`ignore_boxes` is always empty). In addition:

    - `category_frequency[label]`: "r", "c" or "f" from the category's "frequency" field;
    - `get_image_info(i)` adds "coco_url" (or None), "neg_category_ids" and "not_exhaustive_category_ids"
      (original category ids; an entry without these lists gets empty ones);
    - `lvis`: an `lvis.LVIS` index of the file, re-read on first use (it is not kept from construction:
      LVIS v1 train with its polygons takes gigabytes that every DataLoader worker would inherit).
    """

    has_crowd = False

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
        self._lvis: LVIS | None = None
        # Our own reader rather than lvis.LVIS: its index is not needed here, and it fails on malformed
        # files with bare KeyErrors / assertions, where _index names the file and the entry.
        dataset = load_detection_json(ann_file, kind="LVIS")
        categories = self._index(dataset)

        coco_like = lvis_evidence(dataset) is None  # no frequency, no neg ids, every image with a file_name
        self.category_frequency: list[str] = []
        for cat in categories:
            frequency = cat.get("frequency")
            if frequency not in FREQUENCY_GROUPS:
                hint = ""
                if coco_like:
                    hint = (f"; no category has a 'frequency', so this looks like a COCO-format file: "
                            f"{format_hint(ann_file, 'coco')}")
                raise ValueError(f"{ann_file}: category id {cat['id']} has frequency {frequency!r}; "
                                 f"LVIS needs one of {FREQUENCY_GROUPS}{hint}")
            self.category_frequency.append(frequency)

        images = {int(img["id"]): img for img in dataset["images"]}
        kept = [images[image_id] for image_id in self.image_ids]
        self._coco_urls: list[str | None] = [img.get("coco_url") for img in kept]
        self._has_file_name = np.array(["file_name" in img for img in kept], dtype=bool)  # (N,)
        self._neg_ids, self._neg_offsets = self._id_lists(kept, "neg_category_ids")
        self._not_exhaustive_ids, self._not_exhaustive_offsets = self._id_lists(kept, "not_exhaustive_category_ids")
        counts = {group: self.category_frequency.count(group) for group in FREQUENCY_GROUPS}
        logger.info("%s: %d categories: %d rare, %d common, %d frequent", ann_file, self.num_classes,
                    counts["r"], counts["c"], counts["f"])

    def _relative_file(self, img: dict) -> str:
        """The image's "file_name", else "<folder>/<file>" from the last two parts of its "coco_url"."""
        if "file_name" in img:
            return str(img["file_name"])
        url = img.get("coco_url")
        if not isinstance(url, str):
            raise ValueError(f"{self.ann_file}: image entry {img['id']} has neither 'file_name' nor 'coco_url'")
        parts = [part for part in urlparse(url).path.split("/") if part]
        if not parts:
            raise ValueError(f"{self.ann_file}: image entry {img['id']} has a coco_url without a file: {url!r}")
        return posixpath.join(*parts[-2:])

    def _id_lists(self, images: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
        """Concatenate the images' `key` category-id lists into one int64 array and (N + 1,) offsets,
        checking that every id is a known category."""
        lists = []
        for img in images:
            ids = img.get(key, [])
            if not isinstance(ids, list) or any(cat_id not in self.cat_id_to_label for cat_id in ids):
                raise ValueError(f"{self.ann_file}: image id {img['id']} has {key} {ids!r}, which is not a list "
                                 "of category ids in 'categories'")
            lists.append(ids)
        counts = np.array([len(ids) for ids in lists], dtype=np.int64)
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
        return np.array([cat_id for ids in lists for cat_id in ids], dtype=np.int64), offsets

    @property
    def lvis(self) -> LVIS:
        """`lvis.LVIS` index of the annotation file, built on first use (evaluators need it, workers do not)."""
        if self._lvis is None:
            self._lvis = _read_lvis(self.ann_file)
        return self._lvis

    def candidate_paths(self, index: int) -> list[str]:
        relative = self._file_names[index]
        if self._has_file_name[index]:
            return [os.path.join(self.img_dir, relative)]
        nested = os.path.join(self.img_dir, *relative.split("/"))
        flat = os.path.join(self.img_dir, posixpath.basename(relative))
        return [nested] if nested == flat else [nested, flat]

    def get_image_info(self, index: int) -> dict:
        """{"id", "file_name", "height", "width", "coco_url", "neg_category_ids", "not_exhaustive_category_ids"}
        of image `index`; "file_name" is the entry's own or the url-derived "<folder>/<file>"."""
        info = super().get_image_info(index)
        neg = slice(self._neg_offsets[index], self._neg_offsets[index + 1])
        not_exhaustive = slice(self._not_exhaustive_offsets[index], self._not_exhaustive_offsets[index + 1])
        info["coco_url"] = self._coco_urls[index]
        info["neg_category_ids"] = self._neg_ids[neg].tolist()
        info["not_exhaustive_category_ids"] = self._not_exhaustive_ids[not_exhaustive].tolist()
        return info


def _read_lvis(ann_file: str) -> "LVIS":  # noqa: F821 (lvis.LVIS)
    """`lvis.LVIS(ann_file)`, with malformed files reported as a ValueError naming the file and the fault."""
    from lvis import LVIS  # imported here: the lvis package pulls in cv2 and matplotlib, which training never uses

    try:
        api = LVIS(ann_file)
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError) as err:  # ValueError: JSON, UTF-8
        # lvis asserts or fails on a missing key without naming the file: re-read for a precise message.
        load_detection_json(ann_file, kind="LVIS")
        raise ValueError(f"{ann_file}: not an LVIS-format file ({type(err).__name__}: {err})") from err
    check_detection_dict(api.dataset, ann_file, kind="LVIS")
    return api
