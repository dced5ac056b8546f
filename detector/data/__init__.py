"""Datasets, transforms, samplers, collation and the synthetic dataset generators."""

from detector.data.coco import CocoDetection
from detector.data.collate import DetectionCollator
from detector.data.detection_dataset import BadImageError, DetectionDataset
from detector.data.lvis import LVISDetection
from detector.data.repeat_factor import category_repeat_factors, repeat_factors
from detector.data.samplers import GroupedBatchSampler, InferenceSampler
from detector.data.synthetic import ensure_synthetic_coco, generate_synthetic_coco
from detector.data.synthetic_lvis import ensure_synthetic_lvis, generate_synthetic_lvis
from detector.data.transforms import build_transforms

__all__ = [
    "BadImageError",
    "CocoDetection",
    "DetectionCollator",
    "DetectionDataset",
    "GroupedBatchSampler",
    "InferenceSampler",
    "LVISDetection",
    "build_transforms",
    "category_repeat_factors",
    "ensure_synthetic_coco",
    "ensure_synthetic_lvis",
    "generate_synthetic_coco",
    "generate_synthetic_lvis",
    "repeat_factors",
]
