"""Pascal VOC XML labels -> COCO JSON (`voc_to_coco`).

One XML file per image, as in the VOC devkit's ``Annotations/`` folder or LabelImg's and CVAT's VOC exports:

    <annotation>
      <filename>000005.jpg</filename>
      <size><width>500</width><height>375</height><depth>3</depth></size>
      <object>
        <name>chair</name> <truncated>0</truncated> <difficult>1</difficult>
        <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
      </object>
    </annotation>

Coordinates. VOC corners are 1-based pixel indices and both are inclusive: the box covers pixel columns
xmin..xmax. In COCO's continuous frame pixel column i (1-based) spans [i - 1, i], so

    x = xmin - 1,   y = ymin - 1,   w = xmax - xmin + 1,   h = ymax - ymin + 1
    (and back: xmin = x + 1, ymin = y + 1, xmax = x + w, ymax = y + h)

A one-pixel box (xmin == xmax) has w = 1; a box over the whole image, (1, 1, W, H), is [0, 0, W, H]. This is the
VOC devkit's convention (and detectron2's reading of it). Integer corners give integer COCO boxes, so the mapping
is exact both ways; non-integer corners, which some tools write, go through the same formula (coco_json.py
rounds to 3 decimals). xmax < xmin or ymax < ymin is an error. A box may overrun the image by up to one pixel
(corner 0 or W + 1: tools that write 0-based corners): it is clipped to the image and counted; farther out
is an error.

Difficult and truncated. ``<difficult>1</difficult>`` boxes, which VOC's own evaluation ignores, become
``iscrowd: 1`` regions: focaldet's COCO reader treats them as ignore regions in training (no positive, no
negative) and pycocotools' evaluation ignores detections matched to them. ``keep_difficult=True``
(``--keep-difficult``) keeps them as ordinary boxes. Truncated boxes are ordinary boxes. Every annotation also
carries the XML's ``difficult`` and ``truncated`` (0 / 1; 0 when absent), which COCO readers ignore.

Images. An XML file ``a/b/x.xml`` (relative to the label root) names its image ``a/b/<filename>`` relative to the
image root; without ``<filename>``, or when ``<filename>`` lacks a suffix, the image ``a/b/x.*`` / ``a/b/<filename>.*``
is looked up. The image must exist. ``<folder>`` and ``<path>`` are not used (they name folders on the annotating
machine). The size comes from ``<size>``; when that is missing or 0 it is read from the image header (EXIF
orientation applied: dataset_files.py). The default image root is the devkit's ``JPEGImages/`` when the labels
are its sibling ``Annotations/`` folder, else the label folder itself (LabelImg saves XML beside the images).

Labels. SRC is a folder (every .xml below it, in sorted path order), one .xml file, or a VOC split list
(``ImageSets/Main/trainval.txt``: one image id per line, first token; the XML files are read from the
``Annotations/`` folder found beside the list or above it, in list order).

Classes. With a class list (``--classes``, see dataset_files.py) category ids follow its order and an object
of another class is an error; without one the classes are the names found, sorted by Unicode code point.
Ids are 1..K.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from detector.conversion.coco_json import CocoBuilder, ConversionResult
from detector.conversion.dataset_files import (IMAGE_SUFFIXES, ConversionError, ImageFolder, find_label_files,
                                               finite_number, join_posix, located, read_image_size,
                                               read_label_text)

VOC_TOLERANCE_PIXELS = 1.0  # how far a box may overrun its image before it is an error (then it is clipped)


@dataclass
class XmlElement:
    """An XML element with the line its start tag is on; `text` joins its character data."""

    tag: str
    line: int
    text: str = ""
    children: list[XmlElement] = field(default_factory=list)

    def child(self, tag: str) -> XmlElement | None:
        return next((element for element in self.children if element.tag == tag), None)


def parse_xml(path: Path) -> XmlElement:
    """Parse an XML file into `XmlElement`s; DTD entity declarations are refused.

    xml.etree (and expat under it) expands the entities a file declares in its DTD, so a crafted file (nested
    entities, the "billion laughs") can blow up memory where expat is older than 2.4 (which caps the
    amplification); defusedxml, the usual guard, is not a dependency. This parser refuses every entity
    declaration, as defusedxml does (VOC files never declare entities), and expat loads no external entity
    without a handler for it. It also records each element's line, which xml.etree does not, so that errors
    can name it.
    """
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    roots: list[XmlElement] = []
    stack: list[XmlElement] = []

    def start(tag, attributes):
        element = XmlElement(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(tag):
        stack.pop()

    def text(data):
        if stack:
            stack[-1].text += data

    def refuse_entity(name, *args):
        raise ConversionError(f"{located(path, parser.CurrentLineNumber)}: the file declares the XML entity "
                              f"{name!r}; entity declarations are refused (they can expand without bound)")

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as err:
        raise ConversionError(f"{located(path, err.lineno)}: not well-formed XML "
                              f"({expat.ErrorString(err.code)})") from err
    except OSError as err:
        raise ConversionError(f"{path}: cannot read ({err.strerror})") from err
    return roots[0]


@dataclass
class VocObject:
    name: str
    name_line: int
    corners: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written: 1-based, inclusive
    box_line: int
    difficult: bool
    truncated: bool


@dataclass
class VocAnnotation:
    path: Path
    line: int  # of <annotation>
    filename: str | None
    filename_line: int | None
    size: tuple[int, int] | None  # (width, height); None when <size> is missing or 0
    objects: list[VocObject]


def _required(parent: XmlElement, tag: str, path: Path) -> XmlElement:
    element = parent.child(tag)
    if element is None or not element.text.strip() and not element.children:
        raise ConversionError(f"{located(path, parent.line)}: <{parent.tag}> has no <{tag}>")
    return element


def _number(parent: XmlElement, tag: str, path: Path) -> float:
    element = _required(parent, tag, path)
    value = finite_number(element.text.strip())
    if value is None:
        raise ConversionError(f"{located(path, element.line)}: <{tag}> is {element.text.strip()!r}, not a number")
    return value


def _flag(parent: XmlElement, tag: str, path: Path) -> bool:
    element = parent.child(tag)
    text = element.text.strip().lower() if element is not None else ""
    if text in ("", "0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise ConversionError(f"{located(path, element.line)}: <{tag}> is {element.text.strip()!r}, expected 0 or 1")


def _size(root: XmlElement, path: Path) -> tuple[int, int] | None:
    size = root.child("size")
    if size is None or size.child("width") is None or size.child("height") is None:
        return None
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width == 0 or height == 0:  # some tools write 0 when they did not read the image
        return None
    if width < 0 or height < 0 or not width.is_integer() or not height.is_integer():
        raise ConversionError(f"{located(path, size.line)}: <size> is {width:g} x {height:g}, expected positive "
                              "whole pixel counts")
    return int(width), int(height)


def read_voc_xml(path: Path) -> VocAnnotation:
    """Read one VOC XML file; errors name the file and the line."""
    root = parse_xml(path)
    if root.tag != "annotation":
        raise ConversionError(f"{located(path, root.line)}: the root element is <{root.tag}>, expected <annotation>")
    filename = root.child("filename")
    objects = []
    for element in root.children:
        if element.tag != "object":
            continue
        name = _required(element, "name", path)
        box = _required(element, "bndbox", path)
        corners = tuple(_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(name.text.strip(), name.line, corners, box.line, _flag(element, "difficult", path),
                                 _flag(element, "truncated", path)))
    has_filename = filename is not None and filename.text.strip()
    return VocAnnotation(path, root.line, filename.text.strip() if has_filename else None,
                         filename.line if has_filename else None, _size(root, path), objects)


def voc_label_files(src: Path) -> tuple[Path, list[str]]:
    """The label root and the XML files relative to it: a folder, one .xml file or a VOC split list."""
    if not (src.is_file() and src.suffix.lower() == ".txt"):
        return find_label_files(src, ".xml")
    annotations_dir = next((parent / "Annotations" for parent in src.resolve().parents
                            if (parent / "Annotations").is_dir()), None)
    if annotations_dir is None:
        raise ConversionError(f"{src}: read as a VOC split list, but there is no Annotations/ folder beside it or "
                              "above it")
    rel_paths, seen = [], {}
    for line_no, line in enumerate(read_label_text(src).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        rel_path = f"{tokens[0]}.xml"
        if rel_path in seen:
            raise ConversionError(f"{located(src, line_no)}: image id {tokens[0]!r} is listed again "
                                  f"(first on line {seen[rel_path]})")
        if not (annotations_dir / rel_path).is_file():
            raise ConversionError(f"{located(src, line_no)}: no annotation file {annotations_dir / rel_path}")
        rel_paths.append(rel_path)
        seen[rel_path] = line_no
    if not rel_paths:
        raise ConversionError(f"{src}: the split list names no image")
    return annotations_dir, rel_paths


def default_voc_images_root(label_root: Path) -> Path:
    """The devkit's JPEGImages/ beside an Annotations/ label folder, else the label folder itself."""
    if label_root.name == "Annotations" and (label_root.parent / "JPEGImages").is_dir():
        return label_root.parent / "JPEGImages"
    return label_root


def _image_file_name(folder: ImageFolder, annotation: VocAnnotation, rel_path: str) -> str:
    """The image of one XML file, relative to the image root; it must exist."""
    rel_dir, xml_name = os.path.split(rel_path)
    where = located(annotation.path, annotation.filename_line or annotation.line)
    name = annotation.filename
    if name is None:
        return folder.find(rel_dir, os.path.splitext(xml_name)[0], where)
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ConversionError(f"{where}: <filename> {name!r} must be a path relative to the image folder")
    file_name = join_posix(rel_dir, name)
    if file_name in folder:
        return file_name
    if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:  # e.g. "000005" written without its suffix
        return folder.find(rel_dir, name, where)
    no_size = "" if annotation.size is not None else "; the file has no <size> either"
    raise ConversionError(f"{where}: image {folder.root / file_name} not found{no_size}")


def _voc_corners(obj: VocObject, path: Path, width: int, height: int) -> tuple[tuple[float, ...], bool]:
    """COCO-frame corners (x1, y1, x2, y2) of a VOC box (module docstring) and whether they were clipped."""
    xmin, ymin, xmax, ymax = obj.corners
    where = located(path, obj.box_line)
    if xmax < xmin or ymax < ymin:
        raise ConversionError(f"{where}: box has xmax < xmin or ymax < ymin (xmin, ymin, xmax, ymax = "
                              f"{xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
    corners = (xmin - 1, ymin - 1, xmax, ymax)
    clipped = (max(corners[0], 0.0), max(corners[1], 0.0), min(corners[2], width), min(corners[3], height))
    tolerance = VOC_TOLERANCE_PIXELS
    outside = corners[0] < -tolerance or corners[1] < -tolerance or corners[2] > width + tolerance or \
        corners[3] > height + tolerance
    if outside or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ConversionError(f"{where}: box (xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) "
                              f"lies outside the {width}x{height} image (VOC corners are 1-based: 1 <= xmin <= "
                              "xmax <= width)")
    return clipped, clipped != corners


def voc_to_coco(src: Path | str, images: Path | str | None = None, class_names: list[str] | None = None,
                keep_difficult: bool = False, exif_orientation: bool = True) -> ConversionResult:
    """Convert VOC XML labels into a COCO-format dict (see the module docstring for every convention).

    Args:
        src: a folder of XML files (searched recursively), one XML file, or a VOC split list (.txt).
        images: the image root (default: JPEGImages/ beside an Annotations/ folder, else the label folder).
        class_names: class names in category-id order (default: the names found, sorted).
        keep_difficult: keep difficult boxes as ordinary boxes instead of iscrowd ignore regions.
        exif_orientation: sizes read from images are the displayed size (EXIF orientation applied).
    """
    label_root, rel_paths = voc_label_files(Path(src))
    folder = ImageFolder(Path(images) if images is not None else default_voc_images_root(label_root))
    annotations = [read_voc_xml(label_root / rel_path) for rel_path in rel_paths]
    if class_names is None:
        class_names = sorted({obj.name for annotation in annotations for obj in annotation.objects})
        if not class_names:
            raise ConversionError(f"{src}: no <object> in any file, so no class names: give them with --classes")
    category_ids = {name: index + 1 for index, name in enumerate(class_names)}
    builder = CocoBuilder(class_names, f"converted from Pascal VOC XML labels in {src}")
    num_clipped = num_difficult = 0
    labels_of: dict[str, Path] = {}  # image file name -> the XML file that named it
    for rel_path, annotation in zip(rel_paths, annotations):
        file_name = _image_file_name(folder, annotation, rel_path)
        if file_name in labels_of:
            raise ConversionError(f"{located(annotation.path, annotation.filename_line or annotation.line)}: "
                                  f"image {file_name} is named by {labels_of[file_name]} too")
        labels_of[file_name] = annotation.path
        folder.used.add(file_name)
        width, height = annotation.size or read_image_size(folder.root / file_name, exif_orientation)
        image_id = builder.add_image(file_name, width, height)
        for obj in annotation.objects:
            if obj.name not in category_ids:
                raise ConversionError(f"{located(annotation.path, obj.name_line)}: class {obj.name!r} is not in "
                                      f"the class list ({len(class_names)} names: {', '.join(class_names[:10])}"
                                      f"{', ...' if len(class_names) > 10 else ''})")
            corners, clipped = _voc_corners(obj, annotation.path, width, height)
            num_clipped += clipped
            num_difficult += obj.difficult
            builder.add_box(image_id, category_ids[obj.name], corners, iscrowd=obj.difficult and not keep_difficult,
                            extra={"difficult": int(obj.difficult), "truncated": int(obj.truncated)})
    notes = [f"{num_difficult} difficult boxes kept as ordinary boxes" if keep_difficult else
             f"{num_difficult} difficult boxes became iscrowd ignore regions (--keep-difficult keeps them as boxes)"]
    if num_clipped:
        notes.append(f"{num_clipped} boxes overran their image by up to {VOC_TOLERANCE_PIXELS:g} pixel and were "
                     "clipped to it")
    if folder.num_unused():
        notes.append(f"{folder.num_unused()} images under {folder.root} are named by no XML file read here and "
                     "are not included")
    return ConversionResult(builder.to_dict(), folder.root, builder.summary(), notes)
