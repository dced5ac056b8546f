"""Run a detector over a data loader and collect COCO-format results; gather them across processes.

The loader yields ``(images, targets)``: ``images`` (B, 3, H, W) normalised and padded, ``targets`` a list
of dicts with ``image_id``, ``orig_size`` (h, w) of the original image and ``img_size`` (h, w) after the
resize and before the padding.  The model in eval mode, ``model(images, image_sizes=[img_size, ...])``, returns
per image ``boxes`` (N, 4) xyxy in the network-input pixel frame (clipped to ``img_size``), ``scores`` (N,) and
``labels`` (N,) contiguous 0-based.

Results come out ordered by image id (each image's detections in the model's order), whatever order the
loader's batches visit the images in: the val loader groups images by padded shape
(:class:`detector.data.inference_batches.ShapeGroupedBatchSampler`), and the results of a 1-process and an
N-process run (contiguous shards, gathered in rank order) are then the same list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import clip_boxes_to_image
from tqdm import tqdm

from detector.runtime.signals import STOP_SIGNALS, deferred

from .results import detections_to_coco_results

__all__ = ["rescale_boxes", "run_inference", "gather_results"]


def _size_hw(size: Sequence[int] | torch.Tensor, name: str) -> tuple[int, int]:
    """(h, w) as Python ints from a tuple, list or tensor."""
    values = size.tolist() if isinstance(size, torch.Tensor) else list(size)
    if len(values) != 2:
        raise ValueError(f"{name} must be (h, w), got {size!r}")
    return int(values[0]), int(values[1])


def rescale_boxes(
    boxes: torch.Tensor,
    img_size: Sequence[int] | torch.Tensor,
    orig_size: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Map xyxy boxes from the resized image frame to the original image and clip them to it.

    x is multiplied by ``orig_w / img_w`` and y by ``orig_h / img_h``; the result is clipped to
    ``[0, orig_w] x [0, orig_h]``.  The computation is done in float32 (the input is not modified).

    Args:
        boxes: (N, 4) xyxy in the resized-image (network input) pixel frame.
        img_size: (h, w) of the resized image before padding.
        orig_size: (h, w) of the original image.
    """
    img_h, img_w = _size_hw(img_size, "img_size")
    orig_h, orig_w = _size_hw(orig_size, "orig_size")
    if img_h <= 0 or img_w <= 0:
        raise ValueError(f"img_size must be positive, got {(img_h, img_w)}")
    scale = torch.tensor(
        [orig_w / img_w, orig_h / img_h, orig_w / img_w, orig_h / img_h],
        dtype=torch.float32,
        device=boxes.device,
    )  # (4,)
    rescaled = boxes.to(torch.float32).reshape(-1, 4) * scale  # (N, 4)
    return clip_boxes_to_image(rescaled, (orig_h, orig_w))


def _label_to_cat_id(loader: Iterable) -> list[int]:
    """``label_to_cat_id`` of the loader's dataset, looking through wrappers such as Subset."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if hasattr(dataset, "label_to_cat_id"):
            return list(dataset.label_to_cat_id)
        dataset = getattr(dataset, "dataset", None)
    raise AttributeError(
        "the loader's dataset has no label_to_cat_id (contiguous label -> category id); "
        "pass label_to_cat_id= explicitly"
    )


def run_inference(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    *,
    label_to_cat_id: Sequence[int] | None = None,
) -> list[dict]:
    """Predict every image of ``loader`` and return COCO results in original image coordinates.

    The model is switched to eval mode and run under ``torch.inference_mode()``; with ``amp_dtype``
    (e.g. ``torch.float16`` or ``torch.bfloat16``) only the forward pass runs under ``torch.autocast``;
    boxes are converted to float32 before rescaling.  Results are converted per batch, so memory holds
    COCO dicts rather than tensors.

    Args:
        model: a detector whose eval-mode forward ``model(images, image_sizes=...)`` returns per-image dicts
            ``boxes`` (N, 4) xyxy in input pixels, ``scores`` (N,), ``labels`` (N,).
        loader: yields ``(images, targets)`` as described in the module docstring.
        device: where the model runs; images are moved there with ``non_blocking=True``.
        amp_dtype: autocast dtype for the forward pass, or None for full precision.
        progress: show a tqdm progress bar.
        label_to_cat_id: contiguous label -> original category id; default
            ``loader.dataset.label_to_cat_id``.

    Returns:
        COCO result dicts for this process's images, ordered by image id. In a distributed run, pass them to
        ``gather_results`` to collect every rank's share on rank 0.
    """
    device = torch.device(device)
    if label_to_cat_id is None:
        label_to_cat_id = _label_to_cat_id(loader)
    label_to_cat_id = list(label_to_cat_id)
    model.eval()

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    results_per_image: list[tuple[int, list[dict]]] = []  # (image id, its COCO results)
    # A DataLoader starts its workers here: the stop signals wait until they have started (a worker then ignores
    # them), so that one sent to the process group meanwhile reaches the caller's handler here, not in a forked
    # worker before it ignores them nor in a fork hook (where Python prints its exception and drops it).
    with deferred(STOP_SIGNALS):
        batches = iter(loader)
    with torch.inference_mode():
        for images, targets in tqdm(batches, total=total, desc="inference", disable=not progress):
            images = images.to(device, non_blocking=True)  # (B, 3, H, W)
            autocast = (
                torch.autocast(device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                outputs = model(images, image_sizes=[_size_hw(t["img_size"], "img_size") for t in targets])
            if len(outputs) != len(targets):
                raise ValueError(
                    f"model returned {len(outputs)} outputs for a batch of {len(targets)} images"
                )

            detections = []
            for output, target in zip(outputs, targets):
                pred_boxes = rescale_boxes(output["boxes"], target["img_size"], target["orig_size"])
                detections.append(
                    {"boxes": pred_boxes, "scores": output["scores"].float(), "labels": output["labels"]}
                )
            for image_id, detection in zip((int(target["image_id"]) for target in targets), detections):
                results_per_image.append(
                    (image_id, detections_to_coco_results([detection], [image_id], label_to_cat_id)))
    results_per_image.sort(key=lambda item: item[0])  # stable: an id seen twice keeps its loader order
    return [result for _, image_results in results_per_image for result in image_results]


def gather_results(results: list[dict]) -> list[dict]:
    """Collect every process's results on rank 0.

    With ``torch.distributed`` initialised and a world size above 1, each rank's list is sent to rank 0
    with ``gather_object``; rank 0 returns the concatenation in rank order and the other ranks return an
    empty list. Otherwise ``results`` is returned unchanged. Every rank must call this (it is a
    collective). With the NCCL backend, ``torch.cuda.set_device`` must have been called on each rank.
    Images must be sharded without duplicates (the InferenceSampler's job); no de-duplication happens here.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results
    world_size = dist.get_world_size()
    is_main = dist.get_rank() == 0
    gathered: list[list[dict] | None] | None = [None] * world_size if is_main else None
    dist.gather_object(results, gathered, dst=0)
    if not is_main:
        return []
    return [result for rank_results in gathered for result in rank_results]
