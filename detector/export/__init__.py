"""Exporting a trained detector to ONNX or TorchScript with decoding and NMS inside the graph
(:func:`export_detector`, the graph module :class:`ExportableDetector`)."""

from detector.export.exporter import EXPORT_FORMATS, ExportError, default_input_size, export_detector
from detector.export.graph import INPUT_NAMES, OUTPUT_NAMES, ExportableDetector

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportableDetector", "INPUT_NAMES", "OUTPUT_NAMES", "default_input_size",
           "export_detector"]
