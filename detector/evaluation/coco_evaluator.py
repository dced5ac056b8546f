"""COCO box evaluation: pycocotools' COCOeval, or ``coco_fast`` (vectorised, the same numbers).

``COCOEvaluator.evaluate(results, per_class=False) -> dict`` is the shape every evaluator in this package
follows (an LVIS evaluator returns the same flat dict plus APr/APc/APf), so ``tools/eval.py`` and the
trainer can treat them alike.

What this wrapper adds to pycocotools:

* ``max_dets`` is honoured everywhere: ``params.maxDets`` becomes ``[1, 10, max_dets]`` and the headline
  numbers are read from the precision/recall arrays at ``max_dets`` with exactly the averaging of
  ``COCOeval.summarize`` (mean over entries > -1).  ``summarize`` itself hard-codes 100 for AP and would
  return -1 for any other ``max_dets``.
* An empty result list is evaluated as "no detections" (``COCO.loadRes`` raises on ``[]``): every metric
  with ground truth is 0.0; a warning is logged.
* Results are restricted to the evaluated images and known categories (others are dropped with a warning;
  ``loadRes`` would fail on unknown images).
* pycocotools' prints are captured and logged at DEBUG level.
* The ground truth is checked first (``ground_truth.check_ground_truth``): unique annotation ids, an
  ``area`` >= 0 on every annotation, ``iscrowd`` 0 or 1 (set to 0 where absent, for both backends); errors
  name the file and the annotation id.

Metric values are fractions in [0, 1] as pycocotools reports them; -1.0 means "no ground truth in this
area range" (pycocotools' convention).

Backends (``backend=``, config key ``evaluation.coco_backend``): ``"pycocotools"`` runs ``COCOeval``;
``"fast"`` (the default) runs ``coco_fast.evaluate_coco`` on numpy arrays, whose precision/recall arrays equal
``COCOeval``'s bit for bit (tests compare them on many random files with crowds, ties and empty images),
many times faster.  Both summarise the arrays with the same code, and the fast one also takes columnar
results (``load_results_columnar``'s dict of arrays).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .ap_common import mean_valid as _mean_valid
from .ap_common import pr_curves_from_precision
from .coco_fast import CocoGroundTruth, evaluate_coco, summarize_coco
from .box_matching import IOU_THRESHOLDS
from .columnar import Columnar, as_columnar
from .ground_truth import check_ground_truth

__all__ = ["COCOEvaluator"]

BACKENDS = ("fast", "pycocotools")

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def _run_quietly(fn: Callable[..., _T], *args: object) -> _T:
    """Call ``fn(*args)`` with stdout captured; the captured text is logged at DEBUG level."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            return fn(*args)
    finally:
        text = buffer.getvalue().strip()
        if text:
            logger.debug("pycocotools output:\n%s", text)


_IOU_50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])  # area "all" is index 0 (AREA_LABELS)


def _read_json(path: Path) -> dict:
    """A ground-truth JSON file as a dict; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{path}: not a COCO-format file (top level is {type(dataset).__name__}, expected an object)")
    return dataset


class COCOEvaluator:
    """Box AP on a COCO-format ground-truth file.

    Args:
        ann_file: COCO-format annotation JSON (ground truth).
        max_dets: detections per image that count (top-scoring first); 100 for COCO.
        image_ids: evaluate on these images only (e.g. a subset that was inferred); default all images
            of the annotation file.
        backend: ``"fast"`` (``coco_fast``, identical numbers, the default) or ``"pycocotools"`` (COCOeval).

    Use ``COCOEvaluator.from_coco(coco, ...)`` to reuse an already-loaded ``pycocotools.coco.COCO``.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        max_dets: int = 100,
        image_ids: Iterable[int] | None = None,
        backend: str = "fast",
    ) -> None:
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} does not exist")
        coco_gt = COCO()
        coco_gt.dataset = check_ground_truth(_read_json(ann_file), str(ann_file))
        _run_quietly(coco_gt.createIndex)
        self._setup(coco_gt, max_dets=max_dets, image_ids=image_ids, backend=backend)

    @classmethod
    def from_coco(
        cls,
        coco: COCO,
        max_dets: int = 100,
        image_ids: Iterable[int] | None = None,
        backend: str = "fast",
    ) -> COCOEvaluator:
        """Build an evaluator around an already-loaded pycocotools ``COCO`` ground truth (checked as
        ``ground_truth.check_ground_truth`` says; a missing ``iscrowd`` is set to 0 in its annotations)."""
        check_ground_truth(coco.dataset)
        evaluator = cls.__new__(cls)
        evaluator._setup(coco, max_dets=max_dets, image_ids=image_ids, backend=backend)
        return evaluator

    def _setup(self, coco_gt: COCO, max_dets: int, image_ids: Iterable[int] | None, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._fast_gt: CocoGroundTruth | None = None
        if int(max_dets) != max_dets or max_dets < 1:
            raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
        self.coco_gt = coco_gt
        self.max_dets = int(max_dets)
        all_image_ids = set(coco_gt.getImgIds())
        if image_ids is None:
            self.image_ids = sorted(all_image_ids)
        else:
            self.image_ids = sorted({int(i) for i in image_ids})
            unknown = sorted(set(self.image_ids) - all_image_ids)
            if unknown:
                raise ValueError(f"image ids {unknown[:10]} are not in the ground truth")
        self.cat_ids = sorted(coco_gt.getCatIds())
        self.class_names = self._unique_class_names()
        # [1, 10, max_dets] with nothing above max_dets: max_dets is the last (largest) entry, which
        # COCOeval.evaluateImg uses as the per-image cap.
        self.max_dets_thresholds = sorted({m for m in (1, 10) if m < self.max_dets} | {self.max_dets})

    def _unique_class_names(self) -> list[str]:
        """Category names in ``cat_ids`` order; a duplicated name gets its id appended."""
        names = [self.coco_gt.cats[cat_id].get("name", str(cat_id)) for cat_id in self.cat_ids]
        duplicated = {name for name in names if names.count(name) > 1}
        return [
            f"{name} ({cat_id})" if name in duplicated else name
            for name, cat_id in zip(names, self.cat_ids)
        ]

    def _restrict(self, results: list[dict] | Columnar) -> Columnar:
        """Columnar results on evaluated images and known categories (others dropped with a warning)."""
        columns = as_columnar(results)
        kept = np.isin(columns["image_id"], self.image_ids) & np.isin(columns["category_id"], self.cat_ids)
        if not kept.all():
            logger.warning(
                "dropped %d of %d detections whose image is not evaluated or whose category is unknown",
                int((~kept).sum()),
                len(kept),
            )
            columns = {key: value[kept] for key, value in columns.items()}
        return columns

    def _detections_to_coco(self, columns: Columnar) -> COCO:
        """A pycocotools COCO object holding the detections (also for none: loadRes fails on [])."""
        if len(columns["score"]):
            keys = ("image_id", "category_id", "bbox", "score")
            results = [dict(zip(keys, row)) for row in zip(*(columns[key].tolist() for key in keys))]
            return _run_quietly(self.coco_gt.loadRes, results)
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(self.coco_gt.dataset["images"]),
            "categories": copy.deepcopy(self.coco_gt.dataset["categories"]),
            "annotations": [],
        }
        _run_quietly(coco_dt.createIndex)
        return coco_dt

    def _run_pycocotools(self, columns: Columnar) -> tuple[np.ndarray, np.ndarray]:
        coco_eval = COCOeval(self.coco_gt, self._detections_to_coco(columns), iouType="bbox")
        coco_eval.params.imgIds = self.image_ids
        coco_eval.params.catIds = self.cat_ids
        coco_eval.params.maxDets = self.max_dets_thresholds
        _run_quietly(coco_eval.evaluate)
        _run_quietly(coco_eval.accumulate)
        return coco_eval.eval["precision"], coco_eval.eval["recall"]

    def _run_fast(self, columns: Columnar) -> tuple[np.ndarray, np.ndarray]:
        if self._fast_gt is None:  # the annotations were checked when the evaluator was built
            self._fast_gt = CocoGroundTruth.from_dataset(self.coco_gt.dataset, self.image_ids, self.cat_ids,
                                                         checked=True)
        return evaluate_coco(self._fast_gt, columns, tuple(self.max_dets_thresholds))

    def evaluate(self, results: list[dict] | Columnar, per_class: bool = False, pr_curves: bool = False) -> dict:
        """Score COCO-format results.

        Args:
            results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) or a
                columnar dict of arrays (``load_results_columnar``'s format).
            per_class: also return ``"per_class"``: {class name: AP}.
            pr_curves: also return ``"pr_curves"``: {class name: 101 precisions at recall 0.00, 0.01,
                ..., 1.00} at IoU 0.50, area "all", max_dets (the precision array's values); classes
                without ground truth in the evaluated images are left out.

        Returns:
            A flat dict of fractions: ``AP, AP50, AP75, APs, APm, APl`` (equal to pycocotools'
            ``stats[0:6]`` when max_dets is 100), ``AR1, AR10, AR<max_dets>`` (the thresholds at or
            below max_dets), ``ARs, ARm, ARl`` (at max_dets), and with ``per_class`` a dict
            {class name: AP averaged over IoU 0.50:0.95, all recall points, area "all", max_dets}.
            A class without ground truth in the evaluated images has no AP: its value is ``None``
            (JSON null). -1.0 marks an area range without ground truth, as in pycocotools.
        """
        columns = self._restrict(results)
        if not len(columns["score"]):
            logger.warning("no detections to evaluate: every AP and AR with ground truth is 0")
        run = self._run_fast if self.backend == "fast" else self._run_pycocotools
        precision, recall = run(columns)  # (T, R, K, A, M), (T, K, A, M)

        metrics = summarize_coco(precision, recall, self.max_dets_thresholds)
        if per_class:
            metrics["per_class"] = self._per_class_ap(precision)
        if pr_curves:
            metrics["pr_curves"] = pr_curves_from_precision(precision[_IOU_50, :, :, 0, -1], self.class_names)
        logger.debug("COCO metrics: %s", {k: v for k, v in metrics.items() if not isinstance(v, dict)})
        return metrics

    def _per_class_ap(self, precision: np.ndarray) -> dict[str, float | None]:
        """{class name: AP} from the precision array (area "all", max_dets); None without ground truth."""
        per_class: dict[str, float | None] = {}
        for class_index, name in enumerate(self.class_names):
            ap = _mean_valid(precision[:, :, class_index, 0, -1])
            per_class[name] = None if ap < 0 else ap
        return per_class
