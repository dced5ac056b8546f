"""YOLO txt labels <-> COCO JSON (`yolo_to_coco`, `coco_to_yolo`).

Format. One text file per image, with the image's stem (``x.jpg`` -> ``x.txt``), one box per line:

    <class index> <cx> <cy> <w> <h>

with a 0-based class index and the box centre and size divided by the image width (cx, w) and height (cy, h),
so every value lies in [0, 1]. An empty file is an image without boxes: it stays in the dataset. Blank lines
are skipped. Class names come from a names file or an Ultralytics data YAML (dataset_files.py); class index i
is COCO category id i + 1.

Reading (YOLO -> COCO). Pixel corners x1 = (cx - w / 2) W, x2 = (cx + w / 2) W, and likewise y with H, rounded
to 3 decimals (coco_json.py). Each of these stops with an error naming the file and line: a line without
exactly 5 values (polygon lines of segmentation labels and lines with a trailing confidence included), a
value that is not a finite number, a class index that is not an integer or not in the class list, w or h
<= 0, a value or box edge outside [0, 1] by more than YOLO_TOLERANCE (edges outside by less are clipped to
the image and counted), a box narrower than the 3-decimal pixel grid, labels without their image.
Labels ``a/b/x.txt`` (relative to the label folder) belong to the image ``a/b/x.<any image suffix>`` under
the image root, by default the label folder with its last path component named ``labels`` replaced by
``images`` when that folder exists (Ultralytics' ``images/train`` + ``labels/train``, Roboflow's
``train/images`` + ``train/labels``), else the label folder itself (darknet keeps labels beside the images).
Image sizes are read from the image headers (EXIF orientation applied: dataset_files.py). Images that no
label file names are not included (a note counts them; an empty label file includes an image as a background
image). A ``classes.txt`` directly in the label folder is the names file LabelImg and `coco_to_yolo` write
there, never labels.

Writing (COCO -> YOLO). One file per image at its ``file_name`` with the suffix ``.txt`` under the output
folder (subfolders mirrored), empty for an image without boxes, lines in annotation order. The class index is
the rank of the category id among the sorted ids (the order focaldet's COCO reader numbers labels in). Crowd
regions (``iscrowd: 1``) have no YOLO form and are left out; boxes are clipped to their image; boxes with no
area left are left out; each is counted in the notes. Beside the labels go ``classes.txt`` (one name per line)
and ``data.yaml`` (``nc`` and ``names`` as Ultralytics writes them). Values are written with YOLO_DECIMALS = 8
decimals, trailing zeros dropped.

Exact round trips, for images up to 66,666 pixels on a side:
    COCO -> YOLO -> COCO gives the same images (file_name, width, height), the same class names in the same
    order and, per image, the same non-crowd boxes in the same order, each with its corners x, y, x + w, y + h
    equal to the original's rounded to 3 decimals. Boxes inside their image whose corners lie on that grid
    (integer boxes, COCO's own two-decimal boxes) thus come back as identical floats, w and h included.
    Why: a value written with 8 decimals is off by at most 5e-9, so a corner (cx +- w / 2) W is off by at most
    7.5e-9 W < 5e-4 pixel, and rounding to 3 decimals restores the corner. Category ids come back as 1..K in
    the same order (identical when the source's were 1..K); image and annotation ids are renumbered.
    YOLO -> COCO -> YOLO gives the same files, class indices and line order; cx, cy come back within
    5e-4 / W (or / H) + 5e-9 and w, h within 1e-3 / W (or / H) + 5e-9: the 3-decimal rounding of the two pixel
    corners they are made of, plus the 8 written decimals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from detector.conversion.coco_json import CocoBuilder, ConversionResult, round_pixel
from detector.conversion.dataset_files import (ConversionError, ImageFolder, check_class_names, find_label_files,
                                               finite_number, located, read_image_size, read_label_text)

YOLO_DECIMALS = 8
YOLO_TOLERANCE = 1e-3  # how far a normalised value or box edge may leave [0, 1] (then it is clipped)
NAMES_FILE = "classes.txt"
DATA_YAML = "data.yaml"


def format_value(value: float) -> str:
    """A normalised value with YOLO_DECIMALS decimals and no trailing zeros ("0.125", "1", "0")."""
    return f"{value:.{YOLO_DECIMALS}f}".rstrip("0").rstrip(".")


def parse_yolo_line(line: str, where: str, num_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    """(class index, (cx, cy, w, h)) of one label line; `where` ("file:line") starts every error message."""
    tokens = line.split()
    if len(tokens) != 5:
        polygon = " (a polygon of segmentation labels? box labels have 5)" if len(tokens) >= 7 else ""
        raise ConversionError(f"{where}: expected 5 values (class cx cy w h), got {len(tokens)}{polygon}")
    values = [finite_number(token) for token in tokens]
    for token, value in zip(tokens, values):
        if value is None:
            raise ConversionError(f"{where}: {token!r} is not a finite number")
    if not values[0].is_integer():
        raise ConversionError(f"{where}: class index {tokens[0]!r} is not an integer")
    class_index = int(values[0])
    if not 0 <= class_index < num_classes:
        raise ConversionError(f"{where}: class index {class_index} is out of range: the class list has "
                              f"{num_classes} names (indices 0..{num_classes - 1})")
    cx, cy, w, h = values[1:]
    if w <= 0 or h <= 0:
        raise ConversionError(f"{where}: box width and height must be > 0, got w = {w:g}, h = {h:g}")
    edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if any(value < -YOLO_TOLERANCE or value > 1 + YOLO_TOLERANCE for value in (cx, cy, w, h, *edges)):
        raise ConversionError(f"{where}: box (cx, cy, w, h) = ({cx:g}, {cy:g}, {w:g}, {h:g}) reaches outside "
                              f"[0, 1] by more than {YOLO_TOLERANCE:g} (values are normalised by the image size)")
    return class_index, (cx, cy, w, h)


def default_yolo_images_root(label_root: Path) -> Path:
    """The label folder with its last ``labels`` component replaced by ``images``, if that exists, else itself."""
    parts = label_root.parts
    if "labels" in parts:
        index = len(parts) - 1 - parts[::-1].index("labels")
        candidate = Path(*parts[:index], "images", *parts[index + 1:])
        if candidate.is_dir():
            return candidate
    return label_root


def default_names_file(src: Path) -> Path | None:
    """classes.txt, else data.yaml, in the label folder (`src` or, for one file, its folder), or None."""
    folder = src if src.is_dir() else src.parent
    return next((folder / name for name in (NAMES_FILE, DATA_YAML) if (folder / name).is_file()), None)


def _pixel_corners(box: tuple[float, ...], width: int, height: int, where: str) -> tuple[tuple[float, ...], bool]:
    """Pixel corners (x1, y1, x2, y2) of a normalised (cx, cy, w, h), clipped to the image; and if clipped."""
    cx, cy, w, h = box
    corners = tuple(round_pixel(value) for value in ((cx - w / 2) * width, (cy - h / 2) * height,
                                                     (cx + w / 2) * width, (cy + h / 2) * height))
    clipped = (max(corners[0], 0.0), max(corners[1], 0.0), min(corners[2], width), min(corners[3], height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ConversionError(f"{where}: box is narrower than a thousandth of a pixel in the {width}x{height} image")
    return clipped, clipped != corners


def yolo_to_coco(src: Path | str, class_names: list[str], images: Path | str | None = None,
                 names_file: Path | str | None = None, exif_orientation: bool = True) -> ConversionResult:
    """Convert YOLO txt labels into a COCO-format dict (see the module docstring for every convention).

    Args:
        src: a folder of label files (searched recursively) or one label file.
        class_names: class names in class-index order.
        images: the image root (default: see `default_yolo_images_root`).
        names_file: the file the names came from, if it lies among the labels (it is not read as labels).
        exif_orientation: image sizes are the displayed size (EXIF orientation applied).
    """
    src = Path(src)
    label_dir = src if src.is_dir() else src.parent
    skip = {label_dir / NAMES_FILE} | ({Path(names_file)} if names_file is not None else set())
    label_root, rel_paths = find_label_files(src, ".txt", skip=skip)
    folder = ImageFolder(Path(images) if images is not None else default_yolo_images_root(label_root))
    builder = CocoBuilder(class_names, f"converted from YOLO labels in {src}")
    num_clipped = 0
    for rel_path in rel_paths:
        label_path = label_root / rel_path
        rel_dir, stem = os.path.split(os.path.splitext(rel_path)[0])
        file_name = folder.find(rel_dir, stem, str(label_path))
        folder.used.add(file_name)
        width, height = read_image_size(folder.root / file_name, exif_orientation)
        image_id = builder.add_image(file_name, width, height)
        for line_no, line in enumerate(read_label_text(label_path).splitlines(), start=1):
            if not line.strip():
                continue
            where = located(label_path, line_no)
            class_index, box = parse_yolo_line(line, where, len(class_names))
            corners, clipped = _pixel_corners(box, width, height, where)
            num_clipped += clipped
            builder.add_box(image_id, class_index + 1, corners)
    notes = []
    if num_clipped:
        notes.append(f"{num_clipped} boxes overran their image by at most {YOLO_TOLERANCE:g} of its size and were "
                     "clipped to it")
    if folder.num_unused():
        notes.append(f"{folder.num_unused()} images under {folder.root} have no label file and are not included "
                     "(an empty label file includes an image as a background image)")
    return ConversionResult(builder.to_dict(), folder.root, builder.summary(), notes)


@dataclass
class YoloExport:
    """What `coco_to_yolo` wrote: the label folder, its names files, a one-line summary and remarks."""

    label_dir: Path
    names_file: Path
    data_yaml: Path
    summary: str
    notes: list[str] = field(default_factory=list)


def _label_paths(images: list[dict], ann_file: str) -> dict[int, str]:
    """Image id -> its label file relative to the output folder; absolute, ``..`` and clashing paths refused."""
    label_paths: dict[int, str] = {}
    owner: dict[str, int] = {NAMES_FILE: -1}
    for image in images:
        path = PurePosixPath(image["file_name"].replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not path.stem:
            raise ConversionError(f"{ann_file}: image id {image['id']} has the file_name {image['file_name']!r}; "
                                  "YOLO labels mirror relative file names (no absolute path, no '..')")
        label_path = str(path.with_suffix(".txt"))
        if label_path in owner:
            other = "the names file" if owner[label_path] < 0 else f"image id {owner[label_path]}"
            raise ConversionError(f"{ann_file}: image id {image['id']} ({image['file_name']}) and {other} would "
                                  f"both be written to {label_path}")
        owner[label_path] = image["id"]
        label_paths[image["id"]] = label_path
    return label_paths


def _check_output_folder(out_dir: Path, planned: set[str]) -> None:
    """Refuse a folder holding files this conversion would not write: stale labels would change the dataset."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConversionError(f"{out_dir}: exists and is not a folder")
    stale = [os.path.relpath(os.path.join(dirpath, name), out_dir).replace(os.sep, "/")
             for dirpath, _, names in os.walk(out_dir) for name in names]
    stale = sorted(path for path in stale if path not in planned)
    if stale:
        raise ConversionError(f"{out_dir}: already holds {stale[0]}" + (f" and {len(stale) - 1} more files" if
                              len(stale) > 1 else "") + " that this conversion would not write (old labels would "
                              "join the dataset): write into an empty or new folder")


def _check_image_sizes(images: list[dict], images_root: Path, ann_file: str, exif_orientation: bool) -> None:
    """Each image exists under `images_root` and its header size is the JSON's (YOLO values are divided by it)."""
    if not images_root.is_dir():
        raise ConversionError(f"image folder not found: {images_root}")
    for image in images:
        path = images_root / image["file_name"]
        if not path.is_file():
            raise ConversionError(f"{ann_file}: image id {image['id']}: file not found: {path}")
        width, height = read_image_size(path, exif_orientation)
        if (width, height) != (image["width"], image["height"]):
            raise ConversionError(f"{ann_file}: image id {image['id']} is {image['width']}x{image['height']} in the "
                                  f"JSON but {path} is {width}x{height}"
                                  + (" as displayed (EXIF orientation applied)" if exif_orientation else ""))


def _yolo_line(class_index: int, bbox: list[float], width: int, height: int) -> tuple[str | None, bool]:
    """The label line of a COCO [x, y, w, h] clipped to its image (None if no area is left), and if clipped."""
    x, y, w, h = bbox
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        return None, False
    values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
    line = f"{class_index} " + " ".join(format_value(value) for value in values)
    return line, (x1, y1, x2, y2) != (x, y, x + w, y + h)


def _write_names(out_dir: Path, class_names: list[str], ann_file: str) -> tuple[Path, Path]:
    names_file, data_yaml = out_dir / NAMES_FILE, out_dir / DATA_YAML
    names_file.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    header = (f"# Classes of {ann_file}, written by tools/convert_dataset.py. Ultralytics also needs train: and val:\n"
              "# (image folders); it finds an image's labels by replacing /images/ with /labels/ in its path.\n")
    body = yaml.safe_dump({"nc": len(class_names), "names": dict(enumerate(class_names))}, allow_unicode=True,
                          sort_keys=False)
    data_yaml.write_text(header + body, encoding="utf-8")
    return names_file, data_yaml


def coco_to_yolo(ann_file: Path | str, out_dir: Path | str, images: Path | str | None = None,
                 exif_orientation: bool = True) -> YoloExport:
    """Write YOLO labels for a COCO-format file (see the module docstring for every convention).

    Args:
        ann_file: the COCO JSON; it is first checked by focaldet's COCO reader (errors name the entry).
        out_dir: the label folder to write (created; refused if it holds files this would not write).
        images: if given, the image root: every image must exist there with the JSON's size.
        exif_orientation: sizes of the images checked against the JSON are the displayed size.
    """
    # Imported here: detector.data brings in torch, which takes seconds to load and which the VOC and YOLO
    # readers (the usual command) never need.
    from detector.data import CocoDetection

    ann_file, out_dir = str(ann_file), Path(out_dir)
    reader = CocoDetection(ann_file, None)  # validates ids, sizes, categories and boxes, naming the entry
    class_names = check_class_names(list(reader.class_names), ann_file)
    class_index = {cat_id: index for index, cat_id in enumerate(reader.cat_ids)}
    with open(ann_file, "r", encoding="utf-8") as f:
        dataset = json.load(f)  # the raw values: the reader keeps float32 boxes, clipped
    images_list = sorted(dataset["images"], key=lambda image: image["id"])
    label_paths = _label_paths(images_list, ann_file)
    _check_output_folder(out_dir, set(label_paths.values()) | {NAMES_FILE, DATA_YAML})
    if images is not None:
        _check_image_sizes(images_list, Path(images), ann_file, exif_orientation)
    lines: dict[int, list[str]] = {image["id"]: [] for image in images_list}
    sizes = {image["id"]: (image["width"], image["height"]) for image in images_list}
    num_crowd, num_clipped, dropped = 0, 0, []
    for annotation in dataset["annotations"]:
        if annotation.get("iscrowd", 0):
            num_crowd += 1
            continue
        line, clipped = _yolo_line(class_index[annotation["category_id"]], annotation["bbox"],
                                   *sizes[annotation["image_id"]])
        if line is None:
            dropped.append(annotation["id"])
            continue
        num_clipped += clipped
        lines[annotation["image_id"]].append(line)
    for image_id, label_path in label_paths.items():
        path = out_dir / label_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines[image_id]), encoding="utf-8")
    names_file, data_yaml = _write_names(out_dir, class_names, ann_file)
    num_empty = sum(not image_lines for image_lines in lines.values())
    summary = (f"{len(label_paths)} label files ({num_empty} empty), {sum(map(len, lines.values()))} boxes, "
               f"{len(class_names)} classes")
    notes = [f"{num_crowd} crowd regions (iscrowd) left out: YOLO labels cannot mark ignore regions"] if num_crowd \
        else []
    if num_clipped:
        notes.append(f"{num_clipped} boxes overran their image and were clipped to it")
    if dropped:
        notes.append(f"{len(dropped)} boxes with no area inside their image left out (annotation ids "
                     f"{', '.join(map(str, dropped[:10]))}{', ...' if len(dropped) > 10 else ''})")
    return YoloExport(out_dir, names_file, data_yaml, summary, notes)
