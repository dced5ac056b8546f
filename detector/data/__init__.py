"""Datasets, transforms, samplers, collation and the synthetic dataset generator."""

from detector.data.collate import DetectionCollator
from detector.data.coco import CocoDetection
from detector.data.samplers import GroupedBatchSampler, InferenceSampler
from detector.data.synthetic import ensure_synthetic_coco, generate_synthetic_coco
from detector.data.transforms import build_transforms

__all__ = [
    "CocoDetection",
    "DetectionCollator",
    "GroupedBatchSampler",
    "InferenceSampler",
    "build_transforms",
    "ensure_synthetic_coco",
    "generate_synthetic_coco",
]
