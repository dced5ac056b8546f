"""Evaluation: inference over a loader, COCO-format results, COCO and LVIS box AP, reports.

Flow (``tools/eval.py`` and the trainer): ``run_inference`` -> ``gather_results`` (distributed) ->
``save_results`` / ``load_results`` -> ``evaluator.evaluate(results, per_class=...)`` ->
``format_metrics_table`` / ``write_metrics_json``.

Every evaluator exposes the same ``evaluate(results, per_class=False, pr_curves=False) -> dict``
returning a flat dict of fractions (AP, AP50, AP75, APs, APm, APl, ...; plus ``"per_class"`` and
``"pr_curves"`` dicts when asked), with ``image_ids`` and ``cat_ids`` attributes for ``load_results``
validation: ``COCOEvaluator`` (a vectorised backend identical to pycocotools' COCOeval, or COCOeval
itself) and ``LVISEvaluator`` (adds APr/APc/APf; a vectorised backend identical to lvis-api, or lvis-api
itself through the NumPy 2 shim in ``lvis_compat``); both vectorised backends share ``box_matching``.  For large LVIS result
files, ``load_results_columnar`` and ``write_results_shard`` / ``merge_result_shards`` keep results as
numpy columns instead of millions of dicts.
"""

from .coco_evaluator import COCOEvaluator
from .inference import gather_results, rescale_boxes, run_inference
from .columnar import load_results_columnar, merge_result_shards, write_results_shard
from .lvis_evaluator import LVISEvaluator
from .report import format_metrics_table, format_per_class_table, write_metrics_json
from .results import ResultsFormatError, detections_to_coco_results, load_results, save_results

__all__ = [
    "COCOEvaluator",
    "LVISEvaluator",
    "ResultsFormatError",
    "detections_to_coco_results",
    "format_metrics_table",
    "format_per_class_table",
    "gather_results",
    "load_results",
    "load_results_columnar",
    "merge_result_shards",
    "rescale_boxes",
    "run_inference",
    "save_results",
    "write_results_shard",
    "write_metrics_json",
]
