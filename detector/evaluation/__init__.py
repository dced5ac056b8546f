"""Evaluation: inference over a loader, COCO-format results, COCO box AP, reports.

Flow (``tools/eval.py`` and the trainer): ``run_inference`` -> ``gather_results`` (distributed) ->
``save_results`` / ``load_results`` -> ``evaluator.evaluate(results, per_class=...)`` ->
``format_metrics_table`` / ``write_metrics_json``.

Every evaluator exposes the same ``evaluate(results: list[dict], per_class: bool = False) -> dict``
returning a flat dict of fractions (AP, AP50, AP75, APs, APm, APl, ...; plus a ``"per_class"`` dict when
asked), with ``image_ids`` and ``cat_ids`` attributes for ``load_results`` validation, so an LVIS
evaluator can sit beside ``COCOEvaluator``.
"""

from .coco_evaluator import COCOEvaluator
from .inference import gather_results, rescale_boxes, run_inference
from .report import format_metrics_table, format_per_class_table, write_metrics_json
from .results import ResultsFormatError, detections_to_coco_results, load_results, save_results

__all__ = [
    "COCOEvaluator",
    "ResultsFormatError",
    "detections_to_coco_results",
    "format_metrics_table",
    "format_per_class_table",
    "gather_results",
    "load_results",
    "rescale_boxes",
    "run_inference",
    "save_results",
    "write_metrics_json",
]
