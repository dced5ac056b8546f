"""Hand-made label files and tiny images for the dataset converter tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def save_image(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    """A solid-colour image of the given stored size (format from the suffix), optionally with an EXIF
    orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (40, 120, 200))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)
    return path


def voc_xml(filename: str | None, size: tuple[int, int] | None, objects: list[dict]) -> str:
    """VOC XML text; each object: name, box (xmin, ymin, xmax, ymax) and optional difficult / truncated."""
    lines = ["<annotation>", "  <folder>VOC2007</folder>"]
    if filename is not None:
        lines.append(f"  <filename>{filename}</filename>")
    if size is not None:
        lines.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for obj in objects:
        lines += ["  <object>", f"    <name>{obj['name']}</name>"]
        for flag in ("truncated", "difficult"):
            if flag in obj:
                lines.append(f"    <{flag}>{obj[flag]}</{flag}>")
        xmin, ymin, xmax, ymax = obj["box"]
        lines += ["    <bndbox>", f"      <xmin>{xmin}</xmin>", f"      <ymin>{ymin}</ymin>",
                  f"      <xmax>{xmax}</xmax>", f"      <ymax>{ymax}</ymax>", "    </bndbox>", "  </object>"]
    return "\n".join(lines + ["</annotation>", ""])


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def convert_tool():
    """The command behind tools/convert_dataset.py and ``focaldet convert``, to call its main(argv) in-process."""
    return importlib.import_module("detector.cli.convert")
