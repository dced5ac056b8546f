"""Ground truth and detections of chosen val images, drawn on the original images.

Detections come either from a COCO-format results list (``bbox`` [x, y, w, h] in original pixels and the
dataset's category ids, as written by ``tools/eval.py --out``), from its columnar form (LVIS shards), or from
running a model over the chosen images with :func:`predict_images`, which goes through the evaluation's
inference path (:func:`detector.evaluation.run_inference`: the val transforms, batch padding, the model's
post-processing and the rescale to original pixels), so what is drawn is what the evaluator scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from detector.data.collate import DetectionCollator
from detector.data.inference_batches import padded_shape, shape_grouped_batches
from detector.data.detection_dataset import BadImageError, DetectionDataset
from detector.evaluation import run_inference
from detector.visualization.draw import draw_gt_and_detections

__all__ = ["select_indices", "detections_by_image", "predict_images", "draw_image", "draw_first_images",
           "DEFAULT_SCORE_THR"]

logger = logging.getLogger("detector.visualization")

DEFAULT_SCORE_THR = 0.3


def select_indices(dataset: DetectionDataset, image_ids: Sequence[int] | None = None,
                   max_images: int | None = None) -> list[int]:
    """Dataset indices of ``image_ids`` (in the order given), or of the first ``max_images`` images.

    Raises ValueError naming the annotation file and the ids it does not hold.
    """
    if image_ids:
        index_of = {image_id: index for index, image_id in enumerate(dataset.image_ids)}
        unknown = [image_id for image_id in image_ids if image_id not in index_of]
        if unknown:
            known = f"ids {min(index_of)}..{max(index_of)}" if index_of else "no ids"
            raise ValueError(f"image id(s) {', '.join(map(str, unknown))} not in {dataset.ann_file} "
                             f"({len(index_of)} images, {known})")
        indices = [index_of[image_id] for image_id in dict.fromkeys(image_ids)]  # de-duplicated, order kept
    else:
        indices = list(range(len(dataset)))
    return indices[:max_images] if max_images is not None else indices


def detections_by_image(results: list[dict] | Mapping[str, np.ndarray], cat_id_to_label: Mapping[int, int],
                        image_ids: Iterable[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Group COCO results per image as tensors: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,).

    ``results`` is a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` or the same as
    columns (``bbox`` (N, 4)). Category ids become contiguous labels through ``cat_id_to_label``; with
    ``image_ids`` only those images are kept. Images without a detection are absent from the result.
    """
    if isinstance(results, Mapping):
        image_col = np.asarray(results["image_id"], dtype=np.int64)  # (N,)
        cat_col = np.asarray(results["category_id"], dtype=np.int64)  # (N,)
        bbox_col = np.asarray(results["bbox"], dtype=np.float32).reshape(-1, 4)  # (N, 4)
        score_col = np.asarray(results["score"], dtype=np.float32)  # (N,)
    else:
        image_col = np.array([r["image_id"] for r in results], dtype=np.int64)
        cat_col = np.array([r["category_id"] for r in results], dtype=np.int64)
        bbox_col = np.array([r["bbox"] for r in results], dtype=np.float32).reshape(-1, 4)
        score_col = np.array([r["score"] for r in results], dtype=np.float32)
    wanted = None if image_ids is None else set(int(i) for i in image_ids)
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for image_id in np.unique(image_col).tolist():
        if wanted is not None and image_id not in wanted:
            continue
        rows = np.flatnonzero(image_col == image_id)
        xywh = torch.from_numpy(bbox_col[rows])  # (n, 4)
        grouped[image_id] = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),  # (n, 4) xyxy
            "scores": torch.from_numpy(score_col[rows]),  # (n,)
            "labels": torch.tensor([cat_id_to_label[c] for c in cat_col[rows].tolist()], dtype=torch.int64),
        }
    return grouped


def predict_images(model: nn.Module, dataset: DetectionDataset, indices: Sequence[int], device: torch.device,
                   batch_size: int = 1, size_divisor: int = 32, amp_dtype: torch.dtype | None = None,
                   progress: bool = False, test_size: tuple[int, int] | None = None) -> list[dict]:
    """Run ``model`` on the images ``indices`` of ``dataset`` (with its val transforms) and return COCO
    results in original image pixels, exactly as the evaluation's :func:`run_inference` makes them: with
    ``test_size`` (the transforms' (min_size, max_size)) in batches of one padded shape, as the val loader."""
    indices = list(indices)
    if test_size is None:
        batches = [list(range(start, min(start + batch_size, len(indices))))
                   for start in range(0, len(indices), batch_size)]
    else:
        sizes = dataset.image_sizes()
        shapes = [padded_shape(*sizes[index], *test_size, size_divisor) for index in indices]
        batches = shape_grouped_batches(shapes, range(len(indices)), batch_size)
    loader = DataLoader(Subset(dataset, indices), batch_sampler=batches, num_workers=0,
                        collate_fn=DetectionCollator(size_divisor))
    return run_inference(model, loader, device, amp_dtype=amp_dtype, progress=progress,
                         label_to_cat_id=dataset.label_to_cat_id)


_NO_DETECTIONS = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def draw_image(dataset: DetectionDataset, index: int, detections: Mapping[int, Mapping[str, torch.Tensor]],
               score_thr: float = DEFAULT_SCORE_THR, scale: int = 1) -> torch.Tensor:
    """Image ``index`` as decoded from its file, with its ground truth and its detections (two panels, see
    :func:`draw_gt_and_detections`, enlarged ``scale`` times); ``detections`` maps image id ->
    boxes/scores/labels in original pixels."""
    image = dataset.load_image(index)  # (3, H, W) uint8, the original file
    target = dataset.get_target(index)  # boxes in original pixels
    pred = detections.get(target["image_id"], _NO_DETECTIONS)
    return draw_gt_and_detections(image, target["boxes"], target["labels"], pred["boxes"], pred["scores"],
                                  pred["labels"], class_names=dataset.class_names, score_thr=score_thr,
                                  title=f"image {target['image_id']}", scale=scale)


def draw_first_images(dataset: DetectionDataset, results: list[dict] | Mapping[str, np.ndarray], num_images: int,
                      score_thr: float = DEFAULT_SCORE_THR) -> dict[str, torch.Tensor]:
    """The first ``num_images`` images of ``dataset`` drawn with their ground truth and the detections of
    ``results`` (COCO results, list or columns); returns ``{"image_<id>": uint8 (3, H, W)}``.

    An image that cannot be read (possible with ``data.on_bad_image=skip``) is left out with a warning.
    """
    indices = list(range(min(num_images, len(dataset))))
    detections = detections_by_image(results, dataset.cat_id_to_label, [dataset.image_ids[i] for i in indices])
    drawn = {}
    for index in indices:
        try:
            drawn[f"image_{dataset.image_ids[index]}"] = draw_image(dataset, index, detections, score_thr)
        except BadImageError as err:
            logger.warning("not drawn: %s", err)
    return drawn
