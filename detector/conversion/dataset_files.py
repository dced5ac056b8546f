"""Files the dataset label converters (voc.py, yolo.py) share: class-name files, label files, image files.

Class names (`read_class_names`)
    - A names file: one class name per line, in class-index order (YOLO's ``classes.txt``, darknet's
      ``obj.names``, or a class list for VOC). White space around a name is stripped; blank lines at the end
      are ignored; a blank line before the last name is an error (it would shift every later index).
    - A data YAML (``.yaml`` / ``.yml``) with a ``names:`` key, as Ultralytics writes it: a list in index order,
      or a mapping ``{0: person, 1: bicycle}`` whose keys are exactly 0..K-1. An ``nc:`` key, when present,
      must equal K.
    Names must be non-empty and distinct. Class index i (0-based) becomes COCO category id i + 1.

Label files (`find_label_files`)
    SRC is one label file, or a folder searched recursively (hidden folders such as ``.git`` are skipped) for
    files with the format's suffix, in sorted order of their path relative to SRC.

Image files (`ImageFolder`, `read_image_size`)
    Images are found under an image root that mirrors the label tree: labels ``a/b/x.txt`` belong to the image
    ``a/b/x.<suffix>`` (any suffix in IMAGE_SUFFIXES, compared case-insensitively). Sizes are read from the file
    header through PIL's lazy `Image.open` (no pixel decoding), as the image is displayed: width and height swap
    when the EXIF orientation is 5..8 (a quarter turn), the way Ultralytics, mmcv and detectron2 read images;
    `exif_orientation=False` gives the stored pixel grid instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_QUARTER_TURN_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose the stored pixel grid
_EXIF_ORIENTATION_TAG = 0x0112


class ConversionError(ValueError):
    """Bad input to a dataset conversion. The message is one line naming the file (and line) at fault."""


def located(path: Path | str, line: int | None = None) -> str:
    """``path:line`` (or ``path``) for the start of an error message, the way compilers name a place."""
    return f"{path}:{line}" if line is not None else str(path)


def read_class_names(path: Path | str) -> list[str]:
    """Class names in index order from a names file or a data YAML (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"class names file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _names_from_yaml(path)
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            raise ConversionError(f"{located(path, line_no)}: empty line in a names file (one class name per "
                                  "line; an empty line would shift every later class index)")
        names.append(line.strip())
    return check_class_names(names, path)


def _names_from_yaml(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConversionError(f"{located(path, line)}: not valid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(data, dict) or "names" not in data:
        raise ConversionError(f"{path}: a data YAML needs a 'names:' key (a list, or a mapping 0: name, 1: ...)")
    names = data["names"]
    if isinstance(names, dict):
        keys = list(names)
        integer_keys = all(isinstance(key, int) and not isinstance(key, bool) for key in keys)
        if not integer_keys or sorted(keys) != list(range(len(keys))):
            raise ConversionError(f"{path}: the keys of 'names' must be the class indices 0..{len(keys) - 1}, "
                                  f"got {sorted(keys, key=str)[:10]}")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or any(isinstance(name, (dict, list)) or name is None for name in names):
        raise ConversionError(f"{path}: 'names' must be a list of class names or a mapping index: name")
    names = [str(name).strip() for name in names]
    if "nc" in data and data["nc"] != len(names):
        raise ConversionError(f"{path}: 'nc' is {data['nc']!r} but 'names' holds {len(names)} classes")
    return check_class_names(names, path)


def check_class_names(names: list[str], source: Path | str) -> list[str]:
    """Names must be non-empty, one line each and distinct; errors name `source` and the class index."""
    if not names:
        raise ConversionError(f"{source}: no class names")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name or "\n" in name or "\r" in name:
            raise ConversionError(f"{source}: class {index} has the name {name!r} (names must be non-empty, "
                                  "one line each)")
        if name in seen:
            raise ConversionError(f"{source}: class name {name!r} appears twice (classes {seen[name]} and {index})")
        seen[name] = index
    return names


def _read_text(path: Path) -> str:
    """A text file as str (UTF-8, a leading byte-order mark dropped); errors name the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConversionError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_label_text(path: Path) -> str:
    """A label file's text; errors (not UTF-8, unreadable) name the file."""
    try:
        return _read_text(path)
    except OSError as err:
        raise ConversionError(f"{path}: cannot read ({err.strerror})") from err


def _walk(root: Path):
    """(relative folder as POSIX text, file names) below `root`, hidden folders skipped, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        yield ("" if rel_dir == "." else rel_dir), sorted(filenames)


def join_posix(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def find_label_files(src: Path, suffix: str, skip: set[Path] = frozenset()) -> tuple[Path, list[str]]:
    """The label root and the label files' paths relative to it (POSIX, sorted); files in `skip` are left out."""
    if src.is_file():
        return src.parent, [src.name]
    if not src.is_dir():
        raise ConversionError(f"labels not found: {src}")
    resolved_src, skip = src.resolve(), {path.resolve() for path in skip}
    found = []
    for rel_dir, names in _walk(src):
        for name in names:
            if name.lower().endswith(suffix) and resolved_src / rel_dir / name not in skip:
                found.append(join_posix(rel_dir, name))
    if not found:
        raise ConversionError(f"{src}: no {suffix} label files in this folder or below")
    return src, sorted(found)


class ImageFolder:
    """The image files below a root folder, indexed once by (relative folder, stem).

    Looking an image up costs a dictionary access, not a file-system probe per suffix, and the index also
    tells which images no label file named (`num_unused`).
    """

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise ConversionError(f"image folder not found: {root}")
        self.root = root
        self._files: set[str] = set()
        self._by_stem: dict[tuple[str, str], list[str]] = {}
        for rel_dir, names in _walk(root):
            for name in names:
                stem, suffix = os.path.splitext(name)
                if suffix.lower() in IMAGE_SUFFIXES:
                    rel_path = join_posix(rel_dir, name)
                    self._files.add(rel_path)
                    self._by_stem.setdefault((rel_dir, stem), []).append(rel_path)
        self.used: set[str] = set()

    def __contains__(self, rel_path: str) -> bool:
        return rel_path in self._files

    def find(self, rel_dir: str, stem: str, where: str) -> str:
        """The one image named `stem` in folder `rel_dir`; `where` (the label file) starts the error message."""
        matches = self._by_stem.get((rel_dir, stem), [])
        if not matches:
            folder = self.root / rel_dir if rel_dir else self.root
            raise ConversionError(f"{where}: no image {stem}.* ({'/'.join(IMAGE_SUFFIXES)}) in {folder}")
        if len(matches) > 1:
            raise ConversionError(f"{where}: more than one image for these labels: {', '.join(matches)} in "
                                  f"{self.root}")
        return matches[0]

    def num_unused(self) -> int:
        """Images under the root that no label file named (so they are not in the converted dataset)."""
        return len(self._files - self.used)


def _exif_orientation(image: Image.Image) -> int:
    # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk behind the pixel data; the
    # base-class method reads only what the header parse found (info["exif"], XMP), as it does for JPEG.
    orientation = Image.Image.getexif(image).get(_EXIF_ORIENTATION_TAG, 1)
    return orientation if isinstance(orientation, int) else 1


def read_image_size(path: Path, exif_orientation: bool = True) -> tuple[int, int]:
    """(width, height) of an image from its header only; see the module docstring for the EXIF rule."""
    try:
        with Image.open(path) as image:  # lazy: parses the header, decodes no pixels
            width, height = image.size
            if exif_orientation and _exif_orientation(image) in _QUARTER_TURN_ORIENTATIONS:
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ConversionError(f"cannot read the size of image {path}: {err}") from err
    return width, height


def finite_number(text: str) -> float | None:
    """`text` as a finite float, or None when it is not one ("abc", "nan", "inf", "")."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
