"""Predicting on image files (``tools/predict.py``): finding the inputs, naming the outputs, decoding in DataLoader
workers, writing ``predictions.json`` safely and drawing the detections.

``predictions.json`` is written as the run goes into a temporary file beside it and renamed over it when the run
ends, normally, on an error or on an interrupt (SIGINT, SIGTERM): the file is then always complete JSON listing
every image predicted so far, in input order, and a previous ``predictions.json`` is only replaced by a complete
one. (A process killed outright, SIGKILL, leaves the temporary ``.predictions.json.*.tmp`` behind and the old file
in place.) Drawn images are written as their images are predicted.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from detector.data.image_io import IMAGE_EXTENSIONS, ImageReadError
from detector.predict.results import Detections
from detector.predict.streaming import Failure, ImagePreparer, PreparedImage
from detector.visualization.draw import draw_boxes

__all__ = ["find_images", "output_names", "ImageFiles", "PredictionsWriter", "prediction_entry", "save_drawing",
           "RunSummary", "predict_files"]

logger = logging.getLogger("detector.predict")

_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF"}


def _images_under(folder: Path, exclude: Path | None) -> list[Path]:
    found = [path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
    if exclude is not None:  # an output folder inside the input folder: not its own input on a second run
        found = [path for path in found if exclude not in path.resolve().parents]
    return sorted(found)


def find_images(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Path]:
    """Image files named by ``inputs``: files (taken as they are), folders (searched recursively for files with an
    image extension, sorted) and glob patterns (``*``, ``?``, ``[...]``, ``**``); duplicates dropped, order kept.
    Files under ``exclude`` (the output folder) are skipped in folders. FileNotFoundError names an input that
    matches nothing."""
    exclude_path = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _images_under(path, exclude_path)
        else:
            matches = []
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                matches += _images_under(match_path, exclude_path) if match_path.is_dir() else [match_path]
            if not matches:
                raise FileNotFoundError(f"{text}: no such file or folder, and no file matches it as a pattern")
        found.extend(matches)
    seen: set[Path] = set()
    unique = []
    for path in found:  # a file named twice (or by a file and a folder) is predicted once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def output_names(paths: Sequence[Path]) -> list[Path]:
    """Each path relative to the deepest folder holding them all: unique names keeping the subfolders."""
    if not paths:
        return []
    resolved = [path.resolve() for path in paths]
    common = Path(os.path.commonpath([str(path.parent) for path in resolved]))
    return [path.relative_to(common) for path in resolved]


class ImageFiles(Dataset):
    """Image files as :class:`PreparedImage` items (decoded and transformed in DataLoader workers), or a
    :class:`Failure` naming a file that cannot be read; ``keep_original`` keeps the decoded image for drawing."""

    def __init__(self, paths: Sequence[Path], preparer: ImagePreparer, keep_original: bool) -> None:
        self.paths = [str(path) for path in paths]
        self.preparer = preparer
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> PreparedImage | Failure:
        return self.preparer.or_failure(self.paths[index], index, self.keep_original)


def prediction_entry(detections: Detections) -> dict:
    """One image's entry of predictions.json: file name, width, height and its detections."""
    height, width = detections.image_size
    return {"file_name": detections.source, "width": width, "height": height, "detections": [
        {"box": [round(v, 3) for v in box], "score": round(score, 6), "category_id": category_id,
         "class_name": name}
        for box, score, category_id, name in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                 detections.category_ids, detections.class_names)]}


class PredictionsWriter:
    """Writes a JSON list entry by entry into a temporary file and renames it to ``path`` on :meth:`close`
    (called by ``with`` also when the block raises): ``path`` is always complete JSON."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp_path = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.file = os.fdopen(fd, "w", encoding="utf-8")
        self.file.write("[")
        self.count = 0

    def write(self, entry: dict) -> None:
        self.file.write(("\n" if self.count == 0 else ",\n") + json.dumps(entry))
        self.count += 1

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.write("\n]\n" if self.count else "]\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp_path, 0o644)
        os.replace(self.tmp_path, self.path)

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def save_drawing(image: torch.Tensor, detections: Detections, path: Path, score_thr: float,
                 class_names: Sequence[str]) -> Path:
    """Draw the detections scoring at least ``score_thr`` (class-coloured boxes, names and scores, the most
    confident on top) on the uint8 image (3, H, W) and save it at ``path``, in its format when PIL writes it
    (JPEG at quality 95), else as PNG (``.png`` appended)."""
    shown = detections.above(score_thr)
    order = shown.scores.argsort()  # lowest first: the most confident boxes end up on top
    drawn = draw_boxes(image, shown.boxes[order], shown.labels[order], class_names, scores=shown.scores[order])
    image_format = _SAVE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        path, image_format = path.with_name(path.name + ".png"), "PNG"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if image_format == "JPEG" else {}
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path, format=image_format, **options)
    return path


@dataclass
class RunSummary:
    num_images: int = 0       # predicted and written
    num_failed: int = 0       # unreadable, skipped
    num_detections: int = 0
    seconds: float = 0.0

    def line(self, out_file: Path) -> str:
        rate = self.num_images / self.seconds if self.seconds > 0 else 0.0
        failed = f" ({self.num_failed} unreadable, skipped)" if self.num_failed else ""
        return (f"{self.num_images} images{failed}, {self.num_detections} detections in {self.seconds:.1f} s "
                f"({rate:.2f} images/s) -> {out_file}")


def predict_files(detector, items: Iterable[PreparedImage | Failure], names: Sequence[Path], out_dir: Path,
                  score_thr: float | None, batch_size: int, draw_thr: float | None, strict: bool,
                  progress: bool = True, summary: RunSummary | None = None, tta=None) -> RunSummary:
    """Predict prepared images (a DataLoader over :class:`ImageFiles`), writing ``out_dir/predictions.json`` and,
    unless ``draw_thr`` is None, ``out_dir/<names[i]>`` drawings. A Failure is logged and skipped, or with
    ``strict`` raised as ImageReadError once every image before it is written. The counts go into ``summary``
    (a new one when None), which is complete also when this raises (an error, KeyboardInterrupt). ``tta``:
    test-time augmentation, as in :meth:`Detector.predict`."""
    summary = summary if summary is not None else RunSummary()
    start = time.perf_counter()
    bar = tqdm(total=len(names), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with PredictionsWriter(out_dir / "predictions.json") as writer:
            for item, detections in detector.stream(items, score_thr, batch_size, tta=tta):
                bar.update(1)
                if isinstance(detections, Failure):
                    if strict:
                        raise ImageReadError(detections.message)
                    logger.warning("skipped: %s", detections.message)
                    summary.num_failed += 1
                    continue
                writer.write(prediction_entry(detections))
                summary.num_images += 1
                summary.num_detections += len(detections)
                if draw_thr is not None:
                    save_drawing(item.original, detections, out_dir / names[item.index], draw_thr,
                                 detector.class_names)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary
