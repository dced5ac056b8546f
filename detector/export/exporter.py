"""export_detector: write a dense detector as an ONNX model or a TorchScript module (see graph.py for the inputs
and outputs).

* ONNX: torch.onnx's TorchScript-based exporter (``dynamo=False``), which has torchvision's ONNX symbolic for
  ``nms`` (NonMaxSuppression) and records data-dependent sizes (NonZero, TopK) as graph values; the
  ``torch.export``-based exporter (``dynamo=True``) stops in torchvision's batched_nms, whose ``boxes.numel() ==
  0`` test branches on the data-dependent number of candidates (GuardOnDataDependentSymNode; torch 2.14,
  torchvision 0.29). Opset 17 by default (11 at least: NonMaxSuppression, CumSum). ONNX's NonMaxSuppression
  takes float32 boxes: the graph shifts each (image, class) group's boxes apart in float64 as the eager model
  does, then rounds the shifted boxes to float32, which moves a coordinate by up to ~6e-8 times its shift (group
  index x (largest coordinate + 1)): 0.004 px for class 79 of one 1333-px image. Two boxes whose IoU is that
  close to the NMS threshold can be decided the other way than by the eager model's exact float64 NMS.
* TorchScript: ``torch.jit.trace``; sizes are recorded as graph values, so the module runs at any input size.

Without ``dynamic`` an ONNX graph has the fixed input shape (batch_size, 3, H, W) of ``input_size``; with it the
batch, height and width axes are free. The file carries the preprocessing settings and class names (ONNX
metadata_props, the TorchScript extra file ``focaldet.json``) so a deployment can prepare its inputs without
focaldet: see :func:`export_metadata`.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path

import torch

from detector.export.graph import INPUT_NAMES, OUTPUT_NAMES, ExportableDetector
from detector.models.detector import DenseDetector

__all__ = ["EXPORT_FORMATS", "ExportError", "default_input_size", "export_detector", "export_metadata",
           "MIN_OPSET"]

EXPORT_FORMATS = ("onnx", "torchscript")
MIN_OPSET = 11
METADATA_FILE = "focaldet.json"


class ExportError(ValueError):
    """A bad export request (format, size, opset), or an ONNX / TorchScript exporter failure."""


def default_input_size(test_max_size: int, size_divisor: int) -> tuple[int, int]:
    """The square canvas that holds any image resized by the test rule (longer side <= ``test_max_size``), padded
    to a multiple of ``size_divisor``."""
    side = math.ceil(test_max_size / size_divisor) * size_divisor
    return side, side


def export_metadata(class_names: list[str], category_ids: list[int], mean: list[float], std: list[float],
                    test_min_size: int, test_max_size: int, size_divisor: int, model_type: str) -> dict[str, str]:
    """String key -> value pairs stored with the exported model (JSON-encoded lists)."""
    return {"producer": "focaldet", "model_type": model_type, "class_names": json.dumps(class_names),
            "category_ids": json.dumps(category_ids), "mean": json.dumps(mean), "std": json.dumps(std),
            "test_min_size": str(test_min_size), "test_max_size": str(test_max_size),
            "size_divisor": str(size_divisor), "input_layout": "normalised_padded_nchw_float32",
            "inputs": ",".join(INPUT_NAMES), "outputs": ",".join(OUTPUT_NAMES)}


def _example_inputs(input_size: tuple[int, int], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, *input_size, generator=generator)  # (B, 3, H, W)
    image_sizes = torch.tensor([list(input_size)] * batch_size, dtype=torch.int64)  # (B, 2)
    return images, image_sizes


def _check_request(fmt: str, input_size: tuple[int, int], batch_size: int, opset: int, size_divisor: int) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    height, width = input_size
    if height < size_divisor or width < size_divisor or height % size_divisor or width % size_divisor:
        raise ExportError(f"input size {height}x{width} must be positive multiples of data.size_divisor "
                          f"({size_divisor})")
    if batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")
    if opset < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is too old: NonMaxSuppression and CumSum need >= {MIN_OPSET}")


def export_detector(model: DenseDetector, path: str | os.PathLike, fmt: str, input_size: tuple[int, int],
                    metadata: dict[str, str], size_divisor: int = 32, dynamic: bool = False, batch_size: int = 1,
                    opset: int = 17) -> Path:
    """Export ``model`` (moved to the CPU, eval mode) to ``path`` as ``fmt`` ("onnx" or "torchscript"), traced at
    ``input_size`` (H, W) with ``batch_size`` images; ``dynamic``: free batch, height and width (ONNX; a
    TorchScript trace is size-generic either way). Returns the path written."""
    input_size = (int(input_size[0]), int(input_size[1]))
    _check_request(fmt, input_size, batch_size, opset, size_divisor)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = ExportableDetector(model.cpu().float().eval())
    inputs = _example_inputs(input_size, batch_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # the boolean-mask gathers have no negative indices, which is what this warning is about
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        if fmt == "onnx":
            _export_onnx(module, inputs, path, metadata, dynamic, opset)
        else:
            traced = torch.jit.trace(module, inputs, check_trace=False)
            traced.save(str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return path


def _export_onnx(module: ExportableDetector, inputs, path: Path, metadata: dict[str, str], dynamic: bool,
                 opset: int) -> None:
    try:
        import onnx  # the `export` extra
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install 'focaldet[export]'") from None

    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"},
                        "boxes": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"},
                        "num_detections": {0: "batch"}}
    buffer = io.BytesIO()
    try:
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes, do_constant_folding=True)
    except Exception as err:  # the exporter's own errors are of many kinds; name the request with them
        raise ExportError(f"ONNX export (opset {opset}) failed: {err}") from err
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
