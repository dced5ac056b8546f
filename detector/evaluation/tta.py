"""Test-time augmentation (TTA): predict each image at several scales, as is and mirrored, and merge the views.

:class:`TestTimeAugmentation` wraps a detector and takes its place: ``tta(images, image_sizes=...)`` returns
the same per-image dicts as ``model(images, image_sizes=...)`` (boxes xyxy in the frame of ``images``, clipped
to each image's size), so the evaluation (:func:`~detector.evaluation.inference.run_inference`) and
:class:`~detector.predict.Detector` rescale them to the original images as they do without TTA.

For an image of size (h, w) in the batch (after the test resize, before the padding), each scale s gives the
view size (h_s, w_s) = resized_shape(h, w, s, max_size): shorter side s, longer side at most ``max_size``
(:func:`~detector.data.transforms.resized_shape`, the test resize's own rule). The view is the image resized
to that size (bilinear with antialiasing, as the test resize; a view of the image's own size is the image
itself, not resampled), mirrored left-right when its flip is true. Views are padded to their own canonical
shape and run in batches of one shape (:func:`~detector.data.inference_batches.shape_grouped_batches`), so an
image's detections do not depend on its batch partners, with or without TTA. A view's detections are mapped
back to the image:

    un-flip (mirrored views only):  x1' = w_s - x2,  x2' = w_s - x1  (y unchanged)
    rescale:                        x * w / w_s,  y * h / h_s, clipped to the image
                                    (:func:`~detector.evaluation.inference.rescale_boxes`)

Merge: every view's detections of an image are pooled and go through one more class-aware NMS, batched over
the images (:func:`~detector.models.postprocess.nms_fixed_layout`, the model's own post-processing), keeping
the best ``max_dets``. NMS rather than weighted box fusion: it keeps each kept box and score exactly as one view
predicted it (a view's detections are already NMS-ed, so one view alone comes back unchanged), it is the
operation the model's own post-processing runs (one torchvision ``batched_nms`` call for the batch), and the
scores stay the model's calibrated ones; WBF averages the coordinates of overlapping boxes with score weights
and rescales scores by the fraction of views agreeing, which needs its own clustering pass and changes the
score distribution that ``score_thr`` and the AP ranking see.

The views are resized from the test-resized image the loader gives (one decode and one test transform per
image), not from the original file; for scales above ``data.test_min_size`` that upsamples the test-size image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as F

from detector.config_schema import Config, TTAConfig
from detector.data.collate import DetectionCollator
from detector.data.inference_batches import shape_grouped_batches
from detector.data.transforms import resized_shape
from detector.evaluation.inference import rescale_boxes
from detector.models.postprocess import image_sizes_tensor, nms_fixed_layout, unpad_detections

__all__ = ["TestTimeAugmentation", "build_tta", "unflip_boxes"]


def unflip_boxes(boxes: Tensor, width: int | float) -> Tensor:
    """xyxy boxes (N, 4) predicted on an image mirrored left-right, in the unmirrored image of ``width`` pixels:
    (x1, y1, x2, y2) -> (width - x2, y1, width - x1, y2)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=-1)  # (N, 4)


@dataclass
class _View:
    image_index: int          # the image of the batch it comes from
    size: tuple[int, int]     # (h_s, w_s) of the view
    flip: bool
    pixels: Tensor            # (3, h_s, w_s)


class TestTimeAugmentation(nn.Module):
    """A detector predicting every image at each of ``scales`` x ``flips`` and merging the views by class-aware
    NMS (see the module docstring). Inference only.

    Args:
        model: a detector whose eval-mode ``model(images, image_sizes=...)`` returns per image ``boxes`` (N, 4)
            xyxy in input pixels, ``scores`` (N,), ``labels`` (N,).
        scales: shorter sides of the views, in pixels.
        flips: for each scale, a view as is (False) and / or mirrored left-right (True).
        max_size: the longer side of a view at most.
        size_divisor: views are padded to a multiple of it (the model's ``data.size_divisor``).
        nms_iou: IoU threshold of the merge NMS.
        max_dets: detections kept per image after the merge.
    """

    def __init__(self, model: nn.Module, *, scales: Sequence[int], flips: Sequence[bool], max_size: int,
                 size_divisor: int, nms_iou: float, max_dets: int):
        super().__init__()
        if not scales or min(scales) < 1 or max_size < 1:
            raise ValueError(f"TTA scales and max_size must be positive, got scales={list(scales)}, "
                             f"max_size={max_size}")
        if not flips or len(set(flips)) != len(flips):
            raise ValueError(f"TTA flips must list False and / or True once each, got {list(flips)}")
        self.model = model
        self.scales = [int(s) for s in scales]
        self.flips = [bool(f) for f in flips]
        self.max_size = int(max_size)
        self.collate = DetectionCollator(size_divisor)
        self.nms_iou = float(nms_iou)
        self.max_dets = int(max_dets)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, flips={self.flips}, max_size={self.max_size}, nms_iou={self.nms_iou}"

    def make_views(self, images: Tensor, sizes: list[tuple[int, int]]) -> list[_View]:
        """Every image's views: for each scale, the image resized (shorter side s, longer at most max_size),
        then as is and / or mirrored. ``images`` (B, 3, H, W) padded, ``sizes`` each image's (h, w)."""
        views = []
        for index, (height, width) in enumerate(sizes):
            image = images[index, :, :height, :width]  # (3, h, w) without the padding
            for scale in self.scales:
                size = resized_shape(height, width, scale, self.max_size)
                resized = image if size == (height, width) else F.resize(image, list(size), antialias=True)
                views.extend(_View(index, size, flip, resized.flip(-1) if flip else resized) for flip in self.flips)
        return views

    @torch.no_grad()
    def forward(self, images: Tensor, image_sizes=None) -> list[dict]:
        """Merged detections per image of ``images`` (B, 3, H, W): ``boxes`` (M, 4) xyxy in the pixels of
        ``images``, clipped to each image's ``image_sizes`` (h, w) (None: the padded size), ``scores``, ``labels``."""
        if self.training:
            raise RuntimeError("TestTimeAugmentation is for inference: call .eval() first")
        num_images = images.shape[0]
        sizes_tensor = image_sizes_tensor(image_sizes, tuple(images.shape[-2:]), num_images, images.device)  # (B, 2)
        sizes = [(int(h), int(w)) for h, w in sizes_tensor.tolist()]
        views = self.make_views(images, sizes)
        channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shapes = [self.collate.padded_shape(*view.size) for view in views]
        view_detections: list[dict] = [{}] * len(views)
        for batch in shape_grouped_batches(shapes, range(len(views)), batch_size=num_images * len(self.flips)):
            padded, _ = self.collate([(views[i].pixels, {}) for i in batch])  # (V, 3, H_s, W_s)
            outputs = self.model(padded.contiguous(memory_format=memory_format),
                                 image_sizes=[views[i].size for i in batch])
            for i, output in zip(batch, outputs):
                view_detections[i] = self.to_image_frame(output, views[i], sizes[views[i].image_index])
        return self.merge(views, view_detections, sizes_tensor)

    @staticmethod
    def to_image_frame(output: dict, view: _View, image_size: tuple[int, int]) -> dict:
        """A view's detections with boxes un-flipped and rescaled from the view to its image (h, w)."""
        boxes = output["boxes"].float()  # (N, 4) in the view's pixels
        if view.flip:
            boxes = unflip_boxes(boxes, view.size[1])
        return {"boxes": rescale_boxes(boxes, view.size, image_size), "scores": output["scores"].float(),
                "labels": output["labels"]}

    def merge(self, views: list[_View], view_detections: list[dict], sizes: Tensor) -> list[dict]:
        """Pool each image's views and keep, per image, the best ``max_dets`` after class-aware NMS: the model's own
        clip + NMS + top ``max_dets`` (one call for the batch), cut per image as the model's ``predict`` does."""
        counts = torch.tensor([len(d["scores"]) for d in view_detections], device=sizes.device)  # (V,)
        image_of_view = torch.tensor([view.image_index for view in views], device=sizes.device)  # (V,)
        labels = torch.cat([d["labels"] for d in view_detections]).long()  # (N,)
        num_classes = int(labels.max()) + 1 if len(labels) else 1  # separates the classes in the NMS keys
        merged = nms_fixed_layout(torch.cat([d["boxes"] for d in view_detections]),  # (N, 4)
                                  torch.cat([d["scores"] for d in view_detections]), labels,
                                  image_of_view.repeat_interleave(counts), len(sizes), sizes, num_classes,
                                  self.nms_iou, self.max_dets)
        return unpad_detections(merged)


def build_tta(model: nn.Module, tta: TTAConfig | None, cfg: Config) -> nn.Module:
    """``model`` wrapped in :class:`TestTimeAugmentation` as ``tta`` says (scales null: ``data.test_min_size``,
    max_size null: ``data.test_max_size``; merge at ``model.test.nms_iou``, keeping ``model.test.max_dets``), or
    ``model`` itself when ``tta`` is None."""
    if tta is None:
        return model
    return TestTimeAugmentation(
        model, scales=tta.scales or [cfg.data.test_min_size], flips=tta.flips,
        max_size=tta.max_size or cfg.data.test_max_size, size_divisor=cfg.data.size_divisor,
        nms_iou=cfg.model.test.nms_iou, max_dets=cfg.model.test.max_dets)
