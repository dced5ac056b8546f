"""Draw what the model is fed: loader batches after the transforms, with the targets that come with them.

Each image of a batch (normalised and padded by the collator) is cut back to its ``img_size`` (the size
after resize and flip, before padding), the normalisation is undone with the config's ``data.mean`` /
``data.std``, and its target boxes (``boxes`` in the transformed frame) are drawn with their class names;
crowd regions (``ignore_boxes``) are drawn in grey. A caption names the image id, the original size, the
size after the transforms and the padded batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torchvision.utils import draw_bounding_boxes

from detector.visualization.draw import add_caption, denormalize, draw_boxes, upscale

__all__ = ["draw_transformed_sample", "iter_drawn_samples", "IGNORE_COLOR"]

IGNORE_COLOR = (128, 128, 128)


def draw_transformed_sample(image: torch.Tensor, target: dict, mean: Sequence[float], std: Sequence[float],
                            class_names: Sequence[str] | None = None, scale: int = 1) -> torch.Tensor:
    """One loader sample drawn: ``image`` (3, H_pad, W_pad) normalised float, ``target`` with ``boxes``
    (G, 4) xyxy and ``labels`` (G,) in the transformed frame, ``img_size``, ``orig_size`` and ``image_id``.

    Returns uint8 (3, caption + s h, s w) with (h, w) = ``img_size`` and s = ``scale`` (see :func:`upscale`).
    """
    height, width = (int(v) for v in target["img_size"])
    pad_h, pad_w = image.shape[-2:]
    pixels = upscale(denormalize(image[:, :height, :width], mean, std), scale)  # (3, s h, s w)
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4) * scale  # (G, 4)
    drawn = draw_boxes(pixels, boxes, target["labels"], class_names)
    ignore = torch.as_tensor(target.get("ignore_boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
    if len(ignore):
        ignore = ignore * scale
        ignore[:, 0::2] = ignore[:, 0::2].clamp(0, width * scale - 1)
        ignore[:, 1::2] = ignore[:, 1::2].clamp(0, height * scale - 1)
        ignore = ignore[(ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])]
        if len(ignore):
            drawn = draw_bounding_boxes(drawn, ignore.floor(), labels=["crowd"] * len(ignore), colors=IGNORE_COLOR,
                                        width=1)
    orig_h, orig_w = (int(v) for v in target["orig_size"])
    caption = (f"image {target['image_id']}: {orig_w}x{orig_h} -> {width}x{height} (batch {pad_w}x{pad_h}), "
               f"{len(target['labels'])} boxes")
    return add_caption(drawn, caption)


def iter_drawn_samples(loader: Iterable, mean: Sequence[float], std: Sequence[float],
                       class_names: Sequence[str] | None, max_images: int,
                       scale: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(file stem, drawn image)`` for the first ``max_images`` samples of ``loader``.

    The stem is ``<image id>_<w>x<h>`` (size after the transforms), with ``_2``, ``_3``, ... appended when
    the same image comes again (repeat-factor sampling, several epochs).
    """
    count, seen = 0, {}
    if max_images <= 0:
        return
    for images, targets in loader:
        for image, target in zip(images, targets):  # (3, H_pad, W_pad) each
            height, width = (int(v) for v in target["img_size"])
            stem = f"{target['image_id']}_{width}x{height}"
            seen[stem] = seen.get(stem, 0) + 1
            if seen[stem] > 1:
                stem = f"{stem}_{seen[stem]}"
            yield stem, draw_transformed_sample(image, target, mean, std, class_names, scale)
            count += 1
            if count >= max_images:
                return
