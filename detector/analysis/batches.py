"""Batches from a loader, cut to a number of images: what the figure collectors iterate over."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import Tensor


def first_images(batches: Iterable[tuple[Tensor, list[dict]]],
                 max_images: int | None) -> Iterator[tuple[Tensor, list[dict]]]:
    """Yield ``(images, targets)`` batches until ``max_images`` images have been given (all when ``None``).

    The last batch is cut so that exactly ``max_images`` images come out when the loader has that many;
    raises ValueError when no image comes out at all (an empty dataset or ``max_images = 0``).
    """
    num_images = 0
    for images, targets in batches:
        if max_images is not None and num_images >= max_images:
            break
        if max_images is not None and num_images + len(targets) > max_images:
            keep = max_images - num_images
            images, targets = images[:keep], targets[:keep]
        num_images += len(targets)
        yield images, targets
    if num_images == 0:
        raise ValueError("no images to analyse (empty dataset or max_images = 0)")
