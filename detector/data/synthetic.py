"""Deterministic synthetic COCO-format detection dataset.

Every class has its own shape, base colour and texture (synthetic_shapes.py); objects are drawn on textured
grey backgrounds (low saturation, so never confusable with the saturated objects), with sizes log-uniform between
`min_object_size` and `max_object_size` so that every FPN level sees objects. Boxes are the tight pixel
extent of each drawn mask. Category ids are non-contiguous (1, 3, 5, ...) and image ids odd numbers, so
code that confuses ids with indices fails on it. The quick start trains a tiny RetinaNet on it on a CPU.

Drawing is vectorised numpy over each object's box; images are saved with PIL.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image

from detector.data.synthetic_shapes import category_id, class_appearance, class_names, texture_brightness

logger = logging.getLogger("detector.data")

GENERATOR_VERSION = 1
_MAX_OVERLAP_IOU = 0.3
_MAX_HIDDEN_FRACTION = 0.35
_PLACEMENT_TRIES = 30


# ---------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey, low-saturation textured background (H, W, 3) float: smooth noise, gradient or stripes."""
    base = rng.uniform(75.0, 150.0)
    tint = rng.normal(0.0, 6.0, size=3)
    kind = int(rng.integers(3))
    if kind == 0:  # smooth noise: a coarse random grid upsampled bicubically
        coarse = rng.normal(0.0, 1.0, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        pattern = pattern * rng.uniform(10.0, 22.0)
    else:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = xs * math.cos(angle) + ys * math.sin(angle)  # (H, W)
        if kind == 1:  # linear gradient
            pattern = (along / max(height, width)) * rng.uniform(25.0, 55.0)
            pattern -= pattern.mean()
        else:  # stripes
            pattern = np.sin(along * (2.0 * math.pi / rng.uniform(6.0, 30.0))) * rng.uniform(5.0, 12.0)
    return base + tint[None, None, :] + pattern[:, :, None]  # (H, W, 3)


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _overlap_check(box: np.ndarray, placed: list[dict]) -> tuple[np.ndarray, float] | None:
    """Whether xyxy `box` (4,) may join the `placed` objects, and the hidden areas if it does.

    Objects are drawn largest box first, so where two overlap the smaller one hides part of the larger.
    Rejected (None): IoU > 0.3 with a placed object, or a box (new or placed) whose area hidden by smaller
    boxes (sum of intersections, an upper bound) would exceed 35% of its area. Accepted: the updated hidden
    areas of the placed objects (N,) and the new object's hidden area.
    """
    if not placed:
        return np.zeros(0), 0.0
    boxes = np.stack([obj["box"] for obj in placed])  # (N, 4)
    hidden = np.array([obj["hidden"] for obj in placed])  # (N,)
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)  # (N,)
    area, areas = _box_area(box), _box_area(boxes)
    if (inter / (area + areas - inter) > _MAX_OVERLAP_IOU).any():
        return None
    below = areas >= area  # placed objects the new one is drawn over
    new_hidden = hidden + np.where(below, inter, 0.0)  # (N,)
    own_hidden = float(inter[~below].sum())
    if (new_hidden > _MAX_HIDDEN_FRACTION * areas).any() or own_hidden > _MAX_HIDDEN_FRACTION * area:
        return None
    return new_hidden, own_hidden


def _tight_box(mask: np.ndarray, x0: int, y0: int) -> np.ndarray | None:
    """xyxy pixel extent (4,) of a mask placed at (x0, y0), or None if the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1], dtype=np.float64)


def _place(rng, label, height, width, min_size, max_size, placed, crowd=False):
    """Try to place one object (or a crowd cluster) of class `label` among the `placed` records.

    On success, update the placed records' hidden areas and return the new record (paste origin, mask,
    RGB layer, tight box, pixel area, hidden area, label, iscrowd); return None if no room was found.
    """
    shape, colour, texture = class_appearance(label)
    max_size = min(max_size, int(0.9 * min(height, width)))
    min_size = min(min_size, max_size)
    for _ in range(_PLACEMENT_TRIES):
        if crowd:  # a grid of small instances, annotated as one region
            cols, rows = int(rng.integers(2, 5)), int(rng.integers(2, 4))
            cell = max(4, int(rng.uniform(0.6, 1.0) * min_size))
            box_w, box_h = min(cols * cell, width), min(rows * cell, height)
            # Coordinates local to each cell, scaled so that every instance fills 80% of its cell.
            u = ((np.arange(box_w, dtype=np.float32) % cell + 0.5) / cell * 2.0 - 1.0)[None, :] / 0.8
            v = ((np.arange(box_h, dtype=np.float32) % cell + 0.5) / cell * 2.0 - 1.0)[:, None] / 0.8
        else:
            size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
            stretch = math.exp(rng.uniform(-0.2, 0.2))
            box_w = int(np.clip(round(size * stretch), 4, width))
            box_h = int(np.clip(round(size / stretch), 4, height))
            u = ((np.arange(box_w, dtype=np.float32) + 0.5) / box_w * 2.0 - 1.0)[None, :]
            v = ((np.arange(box_h, dtype=np.float32) + 0.5) / box_h * 2.0 - 1.0)[:, None]
        mask = shape(u, v)  # (box_h, box_w)
        x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        box = _tight_box(mask, x0, y0)
        check = None if box is None else _overlap_check(box, placed)
        if check is None:
            continue
        for obj, hidden in zip(placed, check[0]):
            obj["hidden"] = float(hidden)
        jitter = rng.normal(0.0, 10.0, size=3) + rng.uniform(-15.0, 10.0)
        rgb = np.clip(np.array(colour) + jitter, 0.0, 255.0)
        layer = texture_brightness(texture, u, v)[:, :, None] * rgb[None, None, :]  # (h, w, 3)
        return {"x0": x0, "y0": y0, "mask": mask, "layer": layer, "box": box, "area": int(mask.sum()),
                "hidden": check[1], "label": label, "iscrowd": int(crowd)}
    return None


def _render_image(rng, height, width, labels, min_size, max_size, crowd_label):
    """Draw one image; return its pixels (H, W, 3) uint8 and the records of the objects that found room."""
    objects = []
    if crowd_label is not None:
        crowd = _place(rng, crowd_label, height, width, min_size, max_size, [], crowd=True)
        if crowd is not None:
            objects.append(crowd)
    for label in labels:
        obj = _place(rng, label, height, width, min_size, max_size, objects)
        if obj is not None:
            objects.append(obj)
    image = _background(rng, height, width)
    for obj in sorted(objects, key=lambda o: -_box_area(o["box"])):  # large first: small ones stay visible
        mask_h, mask_w = obj["mask"].shape
        region = image[obj["y0"] : obj["y0"] + mask_h, obj["x0"] : obj["x0"] + mask_w]
        region[obj["mask"]] = obj["layer"][obj["mask"]]
    image += rng.normal(0.0, 3.0, size=image.shape)  # sensor noise
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------------- dataset files
def _generate_split(img_dir: str, split: str, split_id: int, num_images: int, seed: int, image_size: int,
                    num_classes: int, min_object_size: int, max_object_size: int, max_objects: int,
                    extension: str, crowd_prob: float) -> dict:
    """Render one split into `img_dir` and return its COCO-format dict. Each image has its own generator
    seeded by (seed, split_id, index); classes not yet seen in the split are drawn first, so that every
    class appears as soon as the split holds enough objects."""
    os.makedirs(img_dir, exist_ok=True)
    images, annotations, seen = [], [], set()
    low_side = max(8, int(round(0.75 * image_size)))
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_id, index])
        height, width = (int(side) for side in rng.integers(low_side, image_size + 1, size=2))
        missing = [label for label in range(num_classes) if label not in seen]
        labels = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            labels.append(missing.pop(int(rng.integers(len(missing)))) if missing else int(rng.integers(num_classes)))
        crowd_label = None
        if crowd_prob > 0 and rng.random() < crowd_prob:
            crowd_label = int(rng.integers(num_classes))
        pixels, objects = _render_image(rng, height, width, labels, min_object_size, max_object_size, crowd_label)
        image_id = 2 * index + 1
        file_name = f"{image_id:012d}.{extension}"
        path = os.path.join(img_dir, file_name)
        if extension == "png":
            Image.fromarray(pixels).save(path, compress_level=1)
        else:
            Image.fromarray(pixels).save(path, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            x1, y1, x2, y2 = (float(c) for c in obj["box"])
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id(obj["label"]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(obj["area"]),
                "iscrowd": obj["iscrowd"],
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })
            if not obj["iscrowd"]:
                seen.add(obj["label"])
    if num_images and len(seen) < num_classes:
        raise ValueError(
            f"the {split} split ({num_images} images) holds only {len(seen)} of {num_classes} classes; "
            f"generate more {split} images"
        )
    categories = [
        {"id": category_id(label), "name": name, "supercategory": "shape"}
        for label, name in enumerate(class_names(num_classes))
    ]
    return {
        "info": {"description": f"focaldet synthetic shapes, {split} split", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def synthetic_paths(root: str) -> dict:
    """Paths of the files a generated dataset under `root` consists of."""
    return {
        "root": root,
        "train_ann_file": os.path.join(root, "annotations", "instances_train.json"),
        "train_img_dir": os.path.join(root, "train"),
        "val_ann_file": os.path.join(root, "annotations", "instances_val.json"),
        "val_img_dir": os.path.join(root, "val"),
        "params_file": os.path.join(root, "params.json"),
    }


def generate_synthetic_coco(
    root: str,
    num_train: int = 600,
    num_val: int = 100,
    image_size: int = 256,
    num_classes: int = 6,
    min_object_size: int = 16,
    max_object_size: int = 160,
    max_objects: int = 6,
    seed: int = 0,
    image_format: str = "png",
    crowd_prob: float = 0.0,
) -> dict:
    """Write a synthetic COCO-format dataset under `root` and return its paths.

    Writes `root/train/`, `root/val/` (images of sides in [0.75, 1] * image_size), then
    `root/annotations/instances_{train,val}.json` and `root/params.json`. The same arguments always give
    the same files. Classes beyond the 10 shapes reuse shapes with other colours and textures.
    """
    params = {
        "num_train": num_train, "num_val": num_val, "image_size": image_size, "num_classes": num_classes,
        "min_object_size": min_object_size, "max_object_size": max_object_size, "max_objects": max_objects,
        "seed": seed, "image_format": image_format, "crowd_prob": crowd_prob,
    }
    _check_params(params)
    extension = "png" if image_format.lower() == "png" else "jpg"
    paths = synthetic_paths(root)
    os.makedirs(os.path.dirname(paths["train_ann_file"]), exist_ok=True)
    common = dict(seed=seed, image_size=image_size, num_classes=num_classes, min_object_size=min_object_size,
                  max_object_size=max_object_size, max_objects=max_objects, extension=extension,
                  crowd_prob=crowd_prob)
    for split_id, (split, num_images) in enumerate((("train", num_train), ("val", num_val))):
        dataset = _generate_split(paths[f"{split}_img_dir"], split, split_id, num_images, **common)
        with open(paths[f"{split}_ann_file"], "w", encoding="utf-8") as f:
            json.dump(dataset, f)
    with open(paths["params_file"], "w", encoding="utf-8") as f:
        json.dump({"generator_version": GENERATOR_VERSION, **params}, f, indent=2)
    return paths


def _check_params(params: dict) -> None:
    if params["num_train"] < 0 or params["num_val"] < 0:
        raise ValueError("num_train and num_val must be >= 0")
    if params["num_classes"] < 1 or params["max_objects"] < 1:
        raise ValueError("num_classes and max_objects must be >= 1")
    if params["image_size"] < 32:
        raise ValueError(f"image_size must be >= 32, got {params['image_size']}")
    if not 4 <= params["min_object_size"] <= params["max_object_size"]:
        raise ValueError("need 4 <= min_object_size <= max_object_size")
    if params["image_format"].lower() not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format must be png or jpg, got {params['image_format']!r}")
    if not 0.0 <= params["crowd_prob"] <= 1.0:
        raise ValueError(f"crowd_prob must be in [0, 1], got {params['crowd_prob']}")


def ensure_synthetic_coco(root: str, **params) -> dict:
    """Generate the dataset under `root` unless its annotation files exist; return its paths.

    Generation goes to a temporary sibling folder that is then renamed to `root`, so a reader never sees a
    half-written dataset and two processes racing here both end with the same complete files. The parameters
    are recorded in `root/params.json`; an existing dataset made with other parameters is kept, with a warning.
    """
    return ensure_generated(root, synthetic_paths, generate_synthetic_coco, ("train", "val"), params)


def ensure_generated(root: str, paths_of: Callable[[str], dict], generate: Callable[..., dict],
                     image_folders: tuple[str, ...], params: dict) -> dict:
    """The shared body of the `ensure_synthetic_*` functions: generate into a temporary sibling of `root`
    with `generate(tmp_root, **params)`, move it into place, and return `paths_of(root)`."""
    root = os.path.abspath(root)
    paths = paths_of(root)
    if not _is_complete(paths):
        parent = os.path.dirname(root)
        os.makedirs(parent, exist_ok=True)
        tmp_root = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
        os.chmod(tmp_root, 0o755)  # mkdtemp makes it private; the dataset should not be
        try:
            generate(tmp_root, **params)
            _move_into_place(tmp_root, root, paths, image_folders)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    _warn_if_params_differ(paths, params)
    return paths


def _is_complete(paths: dict) -> bool:
    return all(os.path.isfile(paths[key]) for key in ("train_ann_file", "val_ann_file", "params_file"))


def _move_into_place(tmp_root: str, root: str, paths: dict, image_folders: tuple[str, ...]) -> None:
    """Rename `tmp_root` to `root` (atomic when `root` is absent or empty); if `root` already holds other
    files, move the parts in one by one, annotations last, so they mark completion."""
    try:
        os.rename(tmp_root, root)
        return
    except OSError:
        if _is_complete(paths):  # another process finished first
            return
    for name in (*image_folders, "params.json", "annotations"):
        target = os.path.join(root, name)
        if os.path.isdir(target):  # stale leftovers of an interrupted run: move them aside to be deleted
            os.rename(target, os.path.join(tmp_root, f"stale-{name}"))
        os.replace(os.path.join(tmp_root, name), target)


def _warn_if_params_differ(paths: dict, params: dict) -> None:
    with open(paths["params_file"], "r", encoding="utf-8") as f:
        recorded = json.load(f)
    differing = {key: (recorded.get(key), value) for key, value in params.items() if recorded.get(key) != value}
    if differing:
        logger.warning("%s was generated with other parameters (recorded, requested): %s; keeping it",
                       paths["root"], differing)
