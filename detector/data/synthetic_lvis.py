"""Deterministic synthetic dataset in LVIS v1 format, with a long-tailed class distribution.

The objects, backgrounds and their rendering are those of the synthetic COCO generator (synthetic.py):
class `label` has shape `label % 10`, texture `label % 8` and its own colour, so up to 40 classes have
distinct (shape, texture) pairs, and colours separate them further. What differs is the class distribution
and the file format:

- Long tail. Classes are ranked by a seeded permutation (so the frequency groups interleave with the ids,
  as in LVIS). The planned number of training images of each class falls geometrically within each group:
  `num_frequent` classes from `head_images` down to 115, `num_common` from 85 down to 14, `num_rare` from 8
  down to 1 (each range keeps a margin from the LVIS boundaries 10/11 and 100/101). Each class is put into
  exactly that many images, spread so that images hold similar numbers of classes; each class instance may
  get a second instance in the same image. Images are re-rendered (with a new seed) until every planned
  class found room, so the realised counts equal the plan except in pathological settings.
- Frequency groups follow the LVIS rule from the realised TRAIN image counts: "r" 1-10 images, "c" 11-100,
  "f" > 100. Both JSON files carry the same categories with the train `image_count` / `instance_count`.
- Val: class c is in max(`min_val_images`, round(n_c * num_val / num_train)) images, so every class,
  rare ones included, appears in val.
- LVIS v1 fields: images have `coco_url` (no `file_name`), e.g.
  "http://images.cocodataset.org/train2017/000000000001.jpg", and lie in `root/train2017/`, `root/val2017/`
  (pass `root` as the image folder); `neg_category_ids` lists each absent class with probability
  `neg_category_prob` (all absent classes are truly absent here); where a class has two or more instances,
  with probability `not_exhaustive_prob` one of them is drawn but left unannotated and the class is listed
  in `not_exhaustive_category_ids`, as LVIS does for incompletely annotated classes. Categories have id,
  name, synonyms, def, synset, frequency, image_count, instance_count; annotations id, image_id,
  category_id, bbox, area (mask pixels) and a box polygon as segmentation; there is no iscrowd.
  Category ids are 1, 3, 5, ... and image ids odd (train and val ids disjoint), so that ids confused with
  indices show up.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from PIL import Image

from detector.data.synthetic import _render_image, ensure_generated
from detector.data.synthetic_shapes import category_id, class_appearance, class_names

logger = logging.getLogger("detector.data")

GENERATOR_VERSION = 1
FREQUENT_LOW = 115  # planned train images of the least frequent "frequent" class
COMMON_RANGE = (85, 14)  # planned train images of the most and least frequent "common" classes
RARE_RANGE = (8, 1)
_EXTRA_INSTANCE_PROB = 0.3  # chance that a class present in an image gets a second instance there
_RENDER_ATTEMPTS = 8
_TEXTURE_NAMES = ("solid", "horizontally striped", "vertically striped", "checkered", "dotted",
                  "diagonally striped", "radially shaded", "vertically shaded")
_SPLITS = (("train", "train2017"), ("val", "val2017"))


def frequency_group(image_count: int) -> str:
    """LVIS frequency group of a category seen in `image_count` training images: r (1-10), c (11-100), f."""
    if image_count < 1:
        raise ValueError(f"a category needs at least one training image, got {image_count}")
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def synthetic_lvis_paths(root: str) -> dict:
    """Paths of a generated LVIS-format dataset under `root` (both image folders are `root`)."""
    return {
        "root": root,
        "train_ann_file": os.path.join(root, "annotations", "lvis_v1_train.json"),
        "train_img_dir": root,
        "val_ann_file": os.path.join(root, "annotations", "lvis_v1_val.json"),
        "val_img_dir": root,
        "params_file": os.path.join(root, "params.json"),
    }


def planned_train_image_counts(num_classes: int, num_rare: int, num_common: int, head_images: int,
                               seed: int = 0) -> list[int]:
    """Planned number of training images of each class (by label), as described in the module docstring."""
    num_frequent = num_classes - num_rare - num_common
    by_rank = np.concatenate([
        np.geomspace(head_images, min(head_images, FREQUENT_LOW), num_frequent),
        np.geomspace(*COMMON_RANGE, num_common),
        np.geomspace(*RARE_RANGE, num_rare),
    ])
    rank_of_label = np.random.default_rng([seed]).permutation(num_classes)
    return [int(round(by_rank[rank])) for rank in rank_of_label]


def _assign_classes(rng: np.random.Generator, counts: list[int], num_images: int, max_classes: int,
                    split: str) -> list[list[int]]:
    """Put class c into exactly counts[c] distinct images, most frequent classes first, each time into the
    images holding the fewest classes so far (ties broken at random); return each image's classes."""
    load = np.zeros(num_images)
    assigned: list[list[int]] = [[] for _ in range(num_images)]
    for label in sorted(range(len(counts)), key=lambda c: -counts[c]):
        keys = load + rng.uniform(0.0, 1.5, size=num_images)
        keys[load >= max_classes] = np.inf
        chosen = np.argsort(keys, kind="stable")[: counts[label]]
        if len(chosen) < counts[label] or np.isinf(keys[chosen]).any():
            raise ValueError(f"the {split} split ({num_images} images, at most {max_classes} objects each) cannot "
                             f"hold the planned {sum(counts)} class occurrences; generate more {split} images")
        load[chosen] += 1
        for index in chosen.tolist():
            assigned[index].append(label)
    return assigned


def _render_with_classes(seed_parts: list[int], classes: list[int], counts: list[int], image_size: int,
                         min_object_size: int, max_object_size: int, max_objects: int):
    """Render an image holding every class in `classes` (rarest placed first, as placement into an emptier
    image succeeds more often), re-drawing up to _RENDER_ATTEMPTS times; return (rng, pixels, objects)."""
    low_side = max(8, int(round(0.75 * image_size)))
    best = None
    for attempt in range(_RENDER_ATTEMPTS):
        rng = np.random.default_rng([*seed_parts, attempt])
        height, width = (int(side) for side in rng.integers(low_side, image_size + 1, size=2))
        labels = sorted(classes, key=lambda c: (counts[c], c))
        for label in list(labels):
            if len(labels) < max_objects and rng.random() < _EXTRA_INSTANCE_PROB:
                labels.append(label)
        pixels, objects = _render_image(rng, height, width, labels, min_object_size, max_object_size, None)
        num_placed = len({obj["label"] for obj in objects})
        if best is None or num_placed > best[0]:
            best = (num_placed, rng, pixels, objects)
        if num_placed == len(classes):
            break
    return best[1:]


def _generate_split(img_dir: str, split: str, split_id: int, counts: list[int], num_images: int,
                    first_image_id: int, first_ann_id: int, params: dict, extension: str) -> dict:
    """Render one split into `img_dir`; return its images and annotations (LVIS v1 entries)."""
    os.makedirs(img_dir, exist_ok=True)
    folder = os.path.basename(img_dir)
    num_classes = len(counts)
    assigned = _assign_classes(np.random.default_rng([params["seed"], split_id]), counts, num_images,
                               params["max_objects"], split)
    images, annotations = [], []
    for index, classes in enumerate(assigned):
        rng, pixels, objects = _render_with_classes(
            [params["seed"], split_id, index], classes, counts, params["image_size"], params["min_object_size"],
            params["max_object_size"], params["max_objects"])
        present = sorted({obj["label"] for obj in objects})
        not_exhaustive = []
        for label in present:
            instances = [obj for obj in objects if obj["label"] == label]
            if len(instances) >= 2 and rng.random() < params["not_exhaustive_prob"]:
                not_exhaustive.append(label)
                objects = [obj for obj in objects if obj is not instances[-1]]  # drawn, not annotated
        absent = [label for label in range(num_classes) if label not in present]
        negative = [label for label in absent if rng.random() < params["neg_category_prob"]]
        image_id = 2 * (first_image_id + index) + 1
        file_name = f"{image_id:012d}.{extension}"
        path = os.path.join(img_dir, file_name)
        if extension == "png":
            Image.fromarray(pixels).save(path, compress_level=1)
        else:
            Image.fromarray(pixels).save(path, quality=95)
        images.append({
            "id": image_id,
            "height": int(pixels.shape[0]),
            "width": int(pixels.shape[1]),
            "coco_url": f"http://images.cocodataset.org/{folder}/{file_name}",
            "license": 1,
            "neg_category_ids": [category_id(label) for label in negative],
            "not_exhaustive_category_ids": [category_id(label) for label in not_exhaustive],
        })
        for obj in objects:
            x1, y1, x2, y2 = (float(c) for c in obj["box"])
            annotations.append({
                "id": first_ann_id + len(annotations),
                "image_id": image_id,
                "category_id": category_id(obj["label"]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(obj["area"]),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })
    return {"images": images, "annotations": annotations}


def _categories(num_classes: int, train: dict) -> list[dict]:
    """LVIS category entries with frequency, image_count and instance_count from the train annotations."""
    images_of: dict[int, set[int]] = {category_id(label): set() for label in range(num_classes)}
    instances = dict.fromkeys(images_of, 0)
    for ann in train["annotations"]:
        images_of[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    categories = []
    for label, name in enumerate(class_names(num_classes)):
        cat_id = category_id(label)
        if not images_of[cat_id]:
            raise ValueError(f"class {label} ({name}) found room in no training image; generate more images or "
                             "use smaller objects")
        shape, colour, texture = class_appearance(label)
        rgb = tuple(int(round(c)) for c in colour)
        categories.append({
            "id": cat_id,
            "name": name,
            "synonyms": [name],
            "def": f"a {_TEXTURE_NAMES[texture]} {shape.__name__} of colour RGB{rgb} (synthetic)",
            "synset": f"{name}.n.01",
            "frequency": frequency_group(len(images_of[cat_id])),
            "image_count": len(images_of[cat_id]),
            "instance_count": instances[cat_id],
        })
    return categories


def generate_synthetic_lvis(
    root: str,
    num_train: int = 1000,
    num_val: int = 250,
    image_size: int = 192,
    num_classes: int = 40,
    num_rare: int = 8,
    num_common: int = 16,
    head_images: int = 200,
    min_val_images: int = 3,
    min_object_size: int = 16,
    max_object_size: int = 112,
    max_objects: int = 8,
    neg_category_prob: float = 0.5,
    not_exhaustive_prob: float = 0.05,
    seed: int = 0,
    image_format: str = "jpg",
) -> dict:
    """Write a synthetic LVIS-v1-format dataset under `root` and return its paths (`synthetic_lvis_paths`).

    Writes `root/train2017/`, `root/val2017/` (images of sides in [0.75, 1] * image_size), then
    `root/annotations/lvis_v1_{train,val}.json` and `root/params.json`. The same arguments always give the
    same files. `num_classes - num_rare - num_common` classes are frequent; `head_images` is the planned
    train image count of the most frequent class. See the module docstring for the distribution.
    """
    params = {
        "num_train": num_train, "num_val": num_val, "image_size": image_size, "num_classes": num_classes,
        "num_rare": num_rare, "num_common": num_common, "head_images": head_images,
        "min_val_images": min_val_images, "min_object_size": min_object_size, "max_object_size": max_object_size,
        "max_objects": max_objects, "neg_category_prob": neg_category_prob,
        "not_exhaustive_prob": not_exhaustive_prob, "seed": seed, "image_format": image_format,
    }
    _check_params(params)
    extension = "png" if image_format.lower() == "png" else "jpg"
    paths = synthetic_lvis_paths(root)
    os.makedirs(os.path.dirname(paths["train_ann_file"]), exist_ok=True)
    train_counts = planned_train_image_counts(num_classes, num_rare, num_common, head_images, seed)
    val_counts = [min(num_val, max(min_val_images, round(count * num_val / num_train))) for count in train_counts]
    train = _generate_split(os.path.join(root, "train2017"), "train", 0, train_counts, num_train, 0, 1, params,
                            extension)
    val = _generate_split(os.path.join(root, "val2017"), "val", 1, val_counts, num_val, num_train,
                          len(train["annotations"]) + 1, params, extension)
    val_classes = {ann["category_id"] for ann in val["annotations"]}
    if num_val and len(val_classes) < num_classes:
        raise ValueError(f"the val split ({num_val} images) holds only {len(val_classes)} of {num_classes} classes; "
                         "generate more val images")
    categories = _categories(num_classes, train)
    for split, data in (("train", train), ("val", val)):
        dataset = {
            "info": {"description": f"focaldet synthetic long-tailed shapes (LVIS v1 format), {split} split",
                     "version": str(GENERATOR_VERSION)},
            "licenses": [{"id": 1, "name": "synthetic, generated by focaldet", "url": ""}],
            "images": data["images"],
            "annotations": data["annotations"],
            "categories": categories,
        }
        with open(paths[f"{split}_ann_file"], "w", encoding="utf-8") as f:
            json.dump(dataset, f)
    with open(paths["params_file"], "w", encoding="utf-8") as f:
        json.dump({"generator_version": GENERATOR_VERSION, "format": "lvis", **params}, f, indent=2)
    groups = [sum(cat["frequency"] == group for cat in categories) for group in "rcf"]
    logger.info("synthetic LVIS under %s: %d train / %d val images, %d train boxes; %d rare, %d common, "
                "%d frequent classes", root, num_train, num_val, len(train["annotations"]), *groups)
    return paths


def _check_params(params: dict) -> None:
    if params["num_train"] < 1 or params["num_val"] < 0:
        raise ValueError("need num_train >= 1 (frequency groups come from it) and num_val >= 0")
    num_classes, num_rare, num_common = params["num_classes"], params["num_rare"], params["num_common"]
    if num_classes < 1 or num_rare < 0 or num_common < 0 or num_rare + num_common > num_classes:
        raise ValueError(f"need num_classes >= 1 and 0 <= num_rare + num_common <= num_classes, got "
                         f"{num_classes}, {num_rare}, {num_common}")
    has_frequent = num_rare + num_common < num_classes
    if has_frequent and params["head_images"] <= 100:
        raise ValueError(f"head_images must be > 100 for frequent classes, got {params['head_images']}")
    largest = max(params["head_images"] if has_frequent else 0, COMMON_RANGE[0] if num_common else 0,
                  RARE_RANGE[0] if num_rare else 0)
    if largest > params["num_train"]:
        raise ValueError(f"the most frequent class is planned in {largest} train images but num_train is "
                         f"{params['num_train']}")
    if params["max_objects"] < 1 or params["min_val_images"] < 1:
        raise ValueError("max_objects and min_val_images must be >= 1")
    if params["image_size"] < 32:
        raise ValueError(f"image_size must be >= 32, got {params['image_size']}")
    if not 4 <= params["min_object_size"] <= params["max_object_size"]:
        raise ValueError("need 4 <= min_object_size <= max_object_size")
    for key in ("neg_category_prob", "not_exhaustive_prob"):
        if not 0.0 <= params[key] <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {params[key]}")
    if params["image_format"].lower() not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format must be png or jpg, got {params['image_format']!r}")


def ensure_synthetic_lvis(root: str, **params) -> dict:
    """Generate the LVIS-format dataset under `root` unless its annotation files exist; return its paths.

    As `ensure_synthetic_coco`: generation goes to a temporary sibling folder renamed to `root`, so readers
    never see a half-written dataset and racing processes end with the same complete files; an existing
    dataset made with other parameters is kept, with a warning.
    """
    return ensure_generated(root, synthetic_lvis_paths, generate_synthetic_lvis, ("train2017", "val2017"), params)

