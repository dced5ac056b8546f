"""The core the COCO and LVIS datasets share: validation, box conversion, flat storage, image loading.

`DetectionDataset` reads an annotation file once, validates it, converts every box to xyxy in pixels
(clipped to its image) and keeps the result in flat arrays, so that `__getitem__` only decodes the image
and slices the arrays. Flat numpy arrays (rather than one Python list per image) also keep the dataset
cheap to share with forked DataLoader workers. `CocoDetection` (coco.py) reads COCO files into it;
`LVISDetection` (lvis.py) reads LVIS v1 files, whose images are found from their COCO url and which have no
crowd boxes. `BadImageError` is what a missing or undecodable image raises.
"""

from __future__ import annotations

import logging
import math
import os
import re

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from detector.data.image_io import ImageReadError, decode_image_file, exif_orientation_tag

logger = logging.getLogger("detector.data")

_BAD_IMAGE_POLICIES = ("error", "skip")


# Skip events are counted in a small shared-memory tensor with one slot per process (the process that
# built the dataset: slot 0; DataLoader worker w: slot 1 + w % (slots - 1)). Each process only writes its
# own slot, so no lock is needed, and every process can read the total at any time.
_SKIP_COUNTER_SLOTS = 64


class BadImageError(RuntimeError):
    """An image file is missing, unreadable or disagrees with its annotation entry.

    An error raised in a DataLoader worker reaches the main process re-created by the DataLoader as
    ``BadImageError("Caught BadImageError in DataLoader worker process N.\nOriginal Traceback ...")``.
    Such an error keeps the original one-line message as its text (so a command-line tool can print it as
    one clear line) and the worker's traceback in ``worker_traceback``.
    """

    def __init__(self, message: str = "") -> None:
        self.worker_traceback: str | None = None
        if isinstance(message, str) and message.startswith(f"Caught {type(self).__name__} "):
            lines = message.rstrip("\n").splitlines()
            pattern = re.compile(rf"^(?:[\w.]+\.)?{type(self).__name__}: ")
            for index in range(len(lines) - 1, -1, -1):
                match = pattern.match(lines[index])
                if match:
                    self.worker_traceback = message
                    message = "\n".join([lines[index][match.end():], *lines[index + 1:]])
                    break
        super().__init__(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class DetectionDataset(Dataset):
    """Core of the COCO and LVIS datasets: validation, box conversion, flat storage, image loading.

    A subclass reads its annotation file into a dict with "images", "annotations" and "categories" and
    passes it to `_index`; it may override `_relative_file` (how an image entry names its file) and
    `candidate_paths` (where that file may lie). Class attribute `has_crowd`: whether `iscrowd` boxes
    become ignore regions (COCO) or are ordinary boxes (LVIS has no crowd annotations).

    `__getitem__(i)` returns `(image, target)`; target holds `boxes` (G, 4) float32 xyxy, `labels` (G,) int64
    contiguous 0-based, `ignore_boxes` (C, 4) float32 crowd regions, `image_id` (original id), `orig_size`
    (h, w) of the file and `img_size` (h, w) after the transforms' resize (before any batch padding).
    """

    has_crowd = True

    def __init__(self, ann_file: str, img_dir: str | None, transforms=None, filter_empty: bool = False,
                 on_bad_image: str = "error", exif_orientation: bool = True) -> None:
        if on_bad_image not in _BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {_BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"annotation file not found: {ann_file}")
        if img_dir is not None and not os.path.isdir(img_dir):
            raise FileNotFoundError(f"image directory not found: {img_dir}")
        self.ann_file = ann_file
        self.img_dir = img_dir  # None: annotations only (validation, metadata, targets), no image loading
        self.transforms = transforms
        self.filter_empty = filter_empty
        self.on_bad_image = on_bad_image
        self.exif_orientation = exif_orientation  # apply the EXIF orientation tag (upright as viewers show it)
        self._skip_counts = torch.zeros(_SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()  # (slots,)

    # ------------------------------------------------------------------ parsing
    def _index(self, dataset: dict) -> list[dict]:
        """Build the category mapping and the per-image arrays; return the categories sorted by id."""
        ann_file = self.ann_file
        seen: set[int] = set()
        for cat in dataset["categories"]:
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise ValueError(f"{ann_file}: category entry {_short(cat)} needs an integer 'id'")
            if cat["id"] in seen:
                raise ValueError(f"{ann_file}: category id {cat['id']} appears twice in 'categories'")
            seen.add(cat["id"])
        categories = sorted(dataset["categories"], key=lambda cat: cat["id"])
        self.cat_ids: list[int] = [cat["id"] for cat in categories]  # label -> original category id
        self.class_names: list[str] = [str(cat.get("name", cat["id"])) for cat in categories]
        self.label_to_cat_id = self.cat_ids
        self.cat_id_to_label: dict[int, int] = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self._parse_annotations(dataset)
        dropped = ""
        if self.dropped_ann_ids:
            shown = ", ".join(str(i) for i in self.dropped_ann_ids[:10])
            more = f", ... and {len(self.dropped_ann_ids) - 10} more" if len(self.dropped_ann_ids) > 10 else ""
            dropped = f" (annotation ids {shown}{more})"
        logger.info(
            "%s: %d images (%d filtered out), %d boxes, %d crowd regions, %d boxes clipped, %d dropped as empty%s",
            ann_file, self.stats["num_images"], self.stats["num_filtered_images"], self.stats["num_boxes"],
            self.stats["num_crowd"], self.stats["num_clipped"], self.stats["num_dropped"], dropped,
        )
        return categories

    def _relative_file(self, img: dict) -> str:
        """Path of an image entry's file relative to `img_dir` (COCO: its "file_name")."""
        if not isinstance(img.get("file_name"), str):
            raise ValueError(f"{self.ann_file}: image id {img['id']} needs a string 'file_name', got "
                             f"{_short(img.get('file_name'))}")
        return img["file_name"]

    def _check_images(self, images: list) -> None:
        """Every image entry: an object with a unique integer id and positive integer height and width."""
        ann_file = self.ann_file
        seen: set[int] = set()
        for img in images:
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                raise ValueError(f"{ann_file}: image entry {_short(img)} needs an integer 'id'")
            if img["id"] in seen:
                raise ValueError(f"{ann_file}: image id {img['id']} appears twice in 'images'")
            seen.add(img["id"])
            for key in ("height", "width"):
                if key not in img:
                    raise ValueError(f"{ann_file}: image id {img['id']} lacks {key!r}")
                if not _is_int(img[key]) or img[key] < 1:
                    raise ValueError(f"{ann_file}: image id {img['id']} has {key} {_short(img[key])}, expected a "
                                     "positive integer")

    def _check_annotation(self, ann, image_index: dict[int, int]) -> list[float]:
        """Validate one annotation entry and return its [x, y, w, h] as floats."""
        ann_file = self.ann_file
        if not isinstance(ann, dict):
            raise ValueError(f"{ann_file}: annotation entry {_short(ann)} is not an object")
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        where = f"annotation id {_short(ann_id)} (image id {_short(image_id)})"
        if not _is_int(ann_id):
            raise ValueError(f"{ann_file}: {where} needs an integer 'id'")
        if not _is_int(image_id) or image_id not in image_index:
            raise ValueError(f"{ann_file}: {where} refers to an image id not in 'images'")
        cat_id = ann.get("category_id")
        if not _is_int(cat_id) or cat_id not in self.cat_id_to_label:
            raise ValueError(f"{ann_file}: {where} has category_id {_short(cat_id)}, which is not in 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise ValueError(f"{ann_file}: {where} has a malformed bbox {_short(bbox)} (expected 4 numbers "
                             "[x, y, w, h])")
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"{ann_file}: {where} has a non-finite bbox {bbox!r}")
        # Optional here (training does not read them), but when present the evaluators rely on them: a negative
        # area puts a ground truth outside every area range, so COCOeval silently ignores it.
        area = ann.get("area")
        if area is not None and not (_is_number(area) and math.isfinite(area) and area >= 0):
            raise ValueError(f"{ann_file}: {where} has area {_short(area)}; an area must be a finite number >= 0")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{ann_file}: {where} has iscrowd {_short(ann.get('iscrowd'))}, expected 0 or 1")
        return [float(v) for v in bbox]

    def _parse_annotations(self, dataset: dict) -> None:
        """Validate annotations and store per-image boxes as flat arrays with offsets.

        Errors (naming the file, the annotation id and the image id): an annotation that is not an object,
        lacks an integer id or repeats one, refers to an unknown image or category, whose bbox is not 4
        finite numbers, whose ``area`` (optional) is not a finite number >= 0 or whose ``iscrowd``
        (optional, 0 when absent) is not 0 or 1.
        Boxes of zero or negative size after clipping to the image are dropped and counted
        (`stats["num_dropped"]`; their annotation ids in `dropped_ann_ids`, the first ones logged).
        """
        self._check_images(dataset["images"])
        images = sorted(dataset["images"], key=lambda img: img["id"])
        file_names = [self._relative_file(img) for img in images]
        image_index = {img["id"]: index for index, img in enumerate(images)}
        num_all = len(images)
        per_image_boxes: list[list[list[float]]] = [[] for _ in range(num_all)]
        per_image_labels: list[list[int]] = [[] for _ in range(num_all)]
        per_image_crowd: list[list[list[float]]] = [[] for _ in range(num_all)]
        num_clipped = 0
        self.dropped_ann_ids: list[int] = []
        ann_ids: set[int] = set()
        num_without_area = 0
        self.first_without_area: tuple[int, int] | None = None  # (annotation id, image id); evaluation needs area

        for ann in dataset["annotations"]:
            x, y, w, h = self._check_annotation(ann, image_index)
            if ann["id"] in ann_ids:  # pycocotools indexes annotations by id: a repeat corrupts its AP
                raise ValueError(f"{self.ann_file}: annotation id {ann['id']} appears twice in 'annotations' (again "
                                 f"for image id {ann['image_id']}); annotation ids must be unique")
            ann_ids.add(ann["id"])
            if "area" not in ann:
                num_without_area += 1
                self.first_without_area = self.first_without_area or (ann["id"], ann["image_id"])
            index = image_index[ann["image_id"]]
            img = images[index]
            img_w, img_h = float(img["width"]), float(img["height"])
            x1, y1 = max(x, 0.0), max(y, 0.0)  # xywh -> xyxy, clipped to the image
            x2, y2 = min(x + w, img_w), min(y + h, img_h)
            if x2 <= x1 or y2 <= y1:
                self.dropped_ann_ids.append(ann["id"])
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                num_clipped += 1
            if self.has_crowd and ann.get("iscrowd", 0):
                per_image_crowd[index].append([x1, y1, x2, y2])
            else:
                per_image_boxes[index].append([x1, y1, x2, y2])
                per_image_labels[index].append(self.cat_id_to_label[ann["category_id"]])

        keep = [i for i in range(num_all) if per_image_boxes[i] or not self.filter_empty]
        self.image_ids: list[int] = [int(images[i]["id"]) for i in keep]
        self._file_names: list[str] = [file_names[i] for i in keep]
        self._heights = np.array([int(images[i]["height"]) for i in keep], dtype=np.int64)  # (N,)
        self._widths = np.array([int(images[i]["width"]) for i in keep], dtype=np.int64)  # (N,)
        self._gt_boxes, self._box_offsets = _flatten([per_image_boxes[i] for i in keep])
        self._gt_labels = np.array([l for i in keep for l in per_image_labels[i]], dtype=np.int64)  # (sum G,)
        self._ignore_boxes, self._ignore_offsets = _flatten([per_image_crowd[i] for i in keep])
        # Which images failed to load with on_bad_image=skip, shared with the loader workers like the counts.
        self._bad_image_flags = torch.zeros(len(keep), dtype=torch.uint8).share_memory_()  # (N,)
        num_boxes_per_image = np.diff(self._box_offsets)
        self.stats = {
            "num_images": len(keep),
            "num_filtered_images": num_all - len(keep),
            "num_empty_images": int((num_boxes_per_image == 0).sum()),
            "num_boxes": int(len(self._gt_labels)),
            "num_crowd": int(len(self._ignore_boxes)),
            "num_clipped": num_clipped,
            "num_dropped": len(self.dropped_ann_ids),
            "num_without_area": num_without_area,
        }

    # ------------------------------------------------------------------ metadata (no decoding)
    def __len__(self) -> int:
        return len(self.image_ids)

    def get_image_info(self, index: int) -> dict:
        """Return {"id", "file_name", "height", "width"} of image `index` from the JSON, without decoding."""
        return {
            "id": self.image_ids[index],
            "file_name": self._file_names[index],
            "height": int(self._heights[index]),
            "width": int(self._widths[index]),
        }

    def aspect_ratios(self) -> list[float]:
        """Height / width of every image, from the JSON (for aspect-ratio grouping)."""
        return (self._heights / self._widths).tolist()

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, from the JSON (e.g. for grouping inference batches by padded shape)."""
        return list(zip(self._heights.tolist(), self._widths.tolist()))

    def image_category_ids(self) -> list[list[int]]:
        """Original category ids of the non-crowd boxes of every image (e.g. for repeat-factor sampling)."""
        return [
            sorted({self.cat_ids[label] for label in self._gt_labels[start:end].tolist()})
            for start, end in zip(self._box_offsets[:-1], self._box_offsets[1:])
        ]

    def candidate_paths(self, index: int) -> list[str]:
        """Where the file of image `index` may lie, in the order they are tried."""
        return [os.path.join(self.img_dir, self._file_names[index])]

    def image_path(self, index: int) -> str:
        """Full path of image `index`: the first candidate that exists, else the first candidate."""
        self._require_img_dir()
        candidates = self.candidate_paths(index)
        return next((path for path in candidates if os.path.isfile(path)), candidates[0])

    # ------------------------------------------------------------------ bad-image accounting
    @property
    def num_skipped_images(self) -> int:
        """Bad images skipped so far (on_bad_image=skip) by this process and all its DataLoader workers;
        an image that fails in several epochs counts once per epoch."""
        return int(self._skip_counts.sum())

    @property
    def bad_image_ids(self) -> list[int]:
        """Ids of the distinct images skipped so far, by this process and all its DataLoader workers."""
        return [self.image_ids[i] for i in torch.nonzero(self._bad_image_flags).flatten().tolist()]

    def _record_skip(self, index: int, err: BadImageError) -> None:
        worker = get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % (_SKIP_COUNTER_SLOTS - 1)
        self._skip_counts[slot] += 1
        first_time = not bool(self._bad_image_flags[index])
        self._bad_image_flags[index] = 1
        # Each distinct bad image is named once as a warning with the running counts; repeats (later
        # epochs) are logged at debug level.
        logger.log(logging.WARNING if first_time else logging.DEBUG,
                   "on_bad_image=skip: %s; using the next image instead (%s: %d bad images, %d skips so far "
                   "over all loader workers)", err, self.ann_file, int(self._bad_image_flags.sum()),
                   self.num_skipped_images)

    # ------------------------------------------------------------------ loading
    def _require_img_dir(self) -> None:
        if self.img_dir is None:
            raise RuntimeError(f"{type(self).__name__}({self.ann_file}) was built without an image folder "
                               "(img_dir=None) and cannot load images")

    def load_image(self, index: int) -> torch.Tensor:
        """Decode image `index` as uint8 RGB (3, H, W); raise BadImageError naming the file and image id."""
        self._require_img_dir()
        image_id = self.image_ids[index]
        candidates = self.candidate_paths(index)
        path = next((path for path in candidates if os.path.isfile(path)), None)
        if path is None:
            if len(candidates) == 1:
                raise BadImageError(f"image file not found: {candidates[0]} (image id {image_id})")
            raise BadImageError(f"image file not found for image id {image_id}; tried {', '.join(candidates)}")
        try:
            image = decode_image_file(path, self.exif_orientation, name=f"{path} (image id {image_id})")  # (3, H, W)
        except ImageReadError as err:
            raise BadImageError(str(err)) from err
        expected = (int(self._heights[index]), int(self._widths[index]))
        if tuple(image.shape[-2:]) != expected:
            raise BadImageError(f"image {path} (image id {image_id}) decodes to size {tuple(image.shape[-2:])} but "
                                f"its annotation says (height, width) = {expected}{self._exif_hint(path)}")
        return image

    def _exif_hint(self, path: str) -> str:
        """What a size mismatch may owe to the file's EXIF orientation tag ("" when it has none)."""
        orientation = exif_orientation_tag(path)
        if orientation is None or orientation == 1:
            return ""
        turned = orientation >= 5  # 5-8: the stored pixel grid is the displayed one turned by 90 degrees
        if self.exif_orientation:
            return (f"; the file has EXIF orientation {orientation}, applied when reading (data.exif_orientation: "
                    f"true){', which swaps height and width' if turned else ''}: annotate the image as viewers "
                    "show it, or set data.exif_orientation: false if the annotation follows the stored pixel grid")
        return (f"; the file has EXIF orientation {orientation}, ignored (data.exif_orientation: false): set "
                "data.exif_orientation: true if the annotation follows the image as viewers show it")

    def get_target(self, index: int) -> dict:
        """Untransformed target of image `index` (boxes in original pixels)."""
        start, end = self._box_offsets[index], self._box_offsets[index + 1]
        ign_start, ign_end = self._ignore_offsets[index], self._ignore_offsets[index + 1]
        orig_size = (int(self._heights[index]), int(self._widths[index]))
        return {
            "boxes": torch.from_numpy(self._gt_boxes[start:end].copy()),  # (G, 4)
            "labels": torch.from_numpy(self._gt_labels[start:end].copy()),  # (G,)
            "ignore_boxes": torch.from_numpy(self._ignore_boxes[ign_start:ign_end].copy()),  # (C, 4)
            "image_id": self.image_ids[index],
            "orig_size": orig_size,
            "img_size": orig_size,
        }

    def __getitem__(self, index: int):
        image = None
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                image = self.load_image(current)
                break
            except BadImageError as err:
                if self.on_bad_image == "error":
                    raise
                self._record_skip(current, err)
        if image is None:
            raise BadImageError(f"{self.ann_file}: no readable image in {self.img_dir}")
        target = self.get_target(current)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _short(value, limit: int = 120) -> str:
    """repr() of a value from an annotation file, cut to `limit` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _flatten(per_image: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-image box lists into one (sum N, 4) float32 array and (num_images + 1,) offsets."""
    counts = np.array([len(boxes) for boxes in per_image], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
    flat = [box for boxes in per_image for box in boxes]
    array = np.array(flat, dtype=np.float32).reshape(-1, 4)
    return array, offsets
