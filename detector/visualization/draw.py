"""Draw ground-truth boxes and detections on images, for people to look at what a model sees.

Everything here works on uint8 RGB tensors (3, H, W), the format ``torchvision.io`` decodes and
``torchvision.utils.draw_bounding_boxes`` draws on. Boxes are xyxy in the image's pixels.

The layout of :func:`draw_gt_and_detections` is two panels side by side, each under a caption strip:
the ground truth on the left, the detections whose score reaches a threshold on the right (label
``"name 0.87"``). Both panels use the same colour for a class, so a missed or misclassified object shows
as a box present on one side only or in another colour.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes

__all__ = ["class_color", "denormalize", "draw_boxes", "draw_gt_and_detections", "add_caption",
           "hstack_panels", "save_png", "upscale"]

Color = tuple[int, int, int]

CAPTION_HEIGHT = 14  # pixels per line of the caption strip above a panel (the default PIL font is ~11 px high)
CAPTION_BACKGROUND: Color = (32, 32, 32)
CAPTION_TEXT: Color = (255, 255, 255)
PANEL_GAP = 4  # pixels between panels
LABEL_HEIGHT = 12  # pixels of a box's label patch
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(label: int) -> Color:
    """A bright RGB colour for a contiguous class label; neighbouring labels get far-apart hues.

    Hue ``h_k = (k * 0.618...) mod 1`` (the golden-ratio sequence spreads any number of hues evenly),
    saturation 0.85, value 1 (brightness alternating with 0.8 past 12 classes, to tell more hues apart).
    """
    if label < 0:
        raise ValueError(f"class label must be >= 0, got {label}")
    hue = (label * _GOLDEN_RATIO_CONJUGATE) % 1.0
    value = 1.0 if (label // 12) % 2 == 0 else 0.8
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)`` on a float image (3, H, W) in the [0, 1] scale; return uint8 (3, H, W).

    ``x_uint8 = round(clamp((x * std + mean) * 255, 0, 255))``.
    """
    if image.dim() != 3 or image.shape[0] != len(mean) or len(mean) != len(std):
        raise ValueError(f"expected a (C, H, W) image with C = len(mean) = len(std), got {tuple(image.shape)}, "
                         f"{len(mean)} means and {len(std)} stds")
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
    pixels = (image.detach().to("cpu", torch.float32) * std_t + mean_t) * 255.0  # (C, H, W)
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else ""
        raise ValueError(f"expected a uint8 RGB image (3, H, W), got {shape} {dtype}")


def _draw_labels(image: torch.Tensor, boxes: torch.Tensor, texts: Sequence[str], colors: Sequence[Color],
                 width: int) -> torch.Tensor:
    """Write each text in black on a patch of its box's colour, :data:`LABEL_HEIGHT` pixels high, just above
    the box's top-left corner (inside the box when there is no room above), kept within the image."""
    canvas = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    image_w = image.shape[-1]
    for (x1, y1, _, _), text, color in zip(boxes.tolist(), texts, colors):
        patch_w = int(font.getlength(text)) + 4
        inside = y1 < LABEL_HEIGHT
        top = y1 + width if inside else y1 - LABEL_HEIGHT
        left = max(0, min(x1 + width if inside else x1, image_w - patch_w))
        draw.rectangle((left, top, left + patch_w - 1, top + LABEL_HEIGHT - 1), fill=color)
        draw.text((left + 2, top), text, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)  # (3, H, W)


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
               class_names: Sequence[str] | None = None, scores: torch.Tensor | None = None,
               width: int = 2, show_labels: bool = True) -> torch.Tensor:
    """Draw xyxy ``boxes`` (N, 4) with class ``labels`` (N,) on a uint8 image (3, H, W); return a new image.

    Each box is outlined in :func:`class_color` of its label, ``width`` pixels thick, growing inwards from
    the box's edges (PIL's rule), at integer pixels ``floor(x)`` after clipping to ``[0, W-1] x [0, H-1]``.
    With ``show_labels`` the class name (or label number), and the score when ``scores`` is given, is
    written in black on a box-coloured patch just above the box's top-left corner (inside the box when the
    box touches the image's top). Boxes of zero size after clipping are skipped.
    """
    _check_image(image)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu()  # (N, 4)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()  # (N,)
    if labels.numel() != boxes.shape[0] or (scores is not None and len(scores) != boxes.shape[0]):
        raise ValueError(f"boxes ({boxes.shape[0]}), labels ({labels.numel()}) and scores "
                         f"({'-' if scores is None else len(scores)}) disagree in number")
    height, width_px = image.shape[-2:]
    # draw_bounding_boxes wants 0 <= x1 <= x2 < W: clip, then truncate to the pixel grid as it does.
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width_px - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    boxes = boxes.floor()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (N,)
    if not bool(keep.any()):
        return image.clone()
    boxes, labels = boxes[keep], labels[keep]
    colors = [class_color(i) for i in labels.tolist()]
    # torchvision writes labels inside the box, where they hide small objects: boxes here, labels below.
    drawn = draw_bounding_boxes(image, boxes, colors=colors, width=width)
    if not show_labels:
        return drawn
    texts = [class_names[i] if class_names is not None and i < len(class_names) else str(i)
             for i in labels.tolist()]
    if scores is not None:
        kept_scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu()[keep]
        texts = [f"{text} {score:.2f}" for text, score in zip(texts, kept_scores.tolist())]
    return _draw_labels(drawn, boxes.long(), texts, colors, width)


def _wrap(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``max_width`` pixels (a long word stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def add_caption(image: torch.Tensor, text: str) -> torch.Tensor:
    """Put a dark strip holding ``text`` above a uint8 image (3, H, W), wrapped to the image's width
    (:data:`CAPTION_HEIGHT` pixels per line)."""
    _check_image(image)
    font = ImageFont.load_default()
    lines = _wrap(text, font, image.shape[-1] - 6)
    strip = Image.new("RGB", (image.shape[-1], CAPTION_HEIGHT * len(lines)), CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for number, line in enumerate(lines):
        draw.text((3, 1 + number * CAPTION_HEIGHT), line, fill=CAPTION_TEXT, font=font)
    strip_t = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)  # (3, h, W)
    return torch.cat([strip_t, image], dim=1)


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Enlarge an image (C, H, W) ``factor`` times by repeating pixels (nearest neighbour); boxes follow as
    ``xyxy * factor``. For drawing small images with legible labels."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"upscale factor must be a positive integer, got {factor}")
    if factor == 1:
        return image
    return image.repeat_interleave(int(factor), dim=-2).repeat_interleave(int(factor), dim=-1)


def hstack_panels(panels: Sequence[torch.Tensor], gap: int = PANEL_GAP) -> torch.Tensor:
    """Place uint8 images (3, H_i, W_i) side by side, top-aligned, ``gap`` white pixels apart."""
    if not panels:
        raise ValueError("no panels to stack")
    height = max(panel.shape[1] for panel in panels)
    columns = []
    for index, panel in enumerate(panels):
        _check_image(panel)
        if index:
            columns.append(torch.full((3, height, gap), 255, dtype=torch.uint8))
        padded = torch.full((3, height, panel.shape[2]), 255, dtype=torch.uint8)
        padded[:, : panel.shape[1]] = panel
        columns.append(padded)
    return torch.cat(columns, dim=2)


def draw_gt_and_detections(image: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                           pred_boxes: torch.Tensor, pred_scores: torch.Tensor, pred_labels: torch.Tensor,
                           class_names: Sequence[str] | None = None, score_thr: float = 0.3,
                           title: str = "", width: int = 2, scale: int = 1) -> torch.Tensor:
    """Two captioned panels: ground truth (left) and detections with score >= ``score_thr`` (right).

    ``image`` is uint8 (3, H, W); boxes are xyxy in its pixels (G, 4) / (N, 4). Returns uint8
    (3, caption + s H, 2 s W + PANEL_GAP) for ``scale`` s (see :func:`upscale`). ``title`` (e.g.
    ``"image 42"``) starts both captions.
    """
    pred_scores = torch.as_tensor(pred_scores, dtype=torch.float32).reshape(-1).cpu()  # (N,)
    shown = pred_scores >= score_thr  # (N,)
    image = upscale(image, scale)
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4).cpu() * scale  # (G, 4)
    pred_boxes = torch.as_tensor(pred_boxes, dtype=torch.float32).reshape(-1, 4).cpu()[shown] * scale
    pred_labels = torch.as_tensor(pred_labels, dtype=torch.int64).reshape(-1).cpu()[shown]
    num_gt = int(torch.as_tensor(gt_labels).numel())
    prefix = f"{title}: " if title else ""
    gt_panel = add_caption(draw_boxes(image, gt_boxes, gt_labels, class_names, width=width),
                           f"{prefix}ground truth ({num_gt})")
    # Lowest scores first, so the most confident boxes and labels end up on top.
    order = pred_scores[shown].argsort()
    det_panel = add_caption(draw_boxes(image, pred_boxes[order], pred_labels[order], class_names,
                                       scores=pred_scores[shown][order], width=width),
                            f"{prefix}detections >= {score_thr:g} ({int(shown.sum())})")
    return hstack_panels([gt_panel, det_panel])


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a uint8 RGB image (3, H, W) as a PNG (creating the folder); return the path."""
    _check_image(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG", optimize=True)
    return path
