"""Repeat factors for repeat-factor sampling (RFS; Gupta et al., "LVIS", CVPR 2019, section 5).

For a threshold t and N training images:
    f_c = (number of images that contain category c) / N
    r_c = max(1, sqrt(t / f_c))                       category repeat factor
    r_i = max over the categories c in image i of r_c  image repeat factor (1 for an image without any)
Images holding a rare category are seen about r_i times per epoch; `GroupedBatchSampler(repeat_factors=...)`
turns the factors into an epoch (see its docstring for how the epoch length is fixed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def category_repeat_factors(image_category_ids: Sequence[Sequence[int]], threshold: float) -> dict[int, float]:
    """r_c = max(1, sqrt(t / f_c)) of every category present in some image; f_c counts images, not boxes."""
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"repeat threshold must be a finite number >= 0, got {threshold}")
    num_images = len(image_category_ids)
    image_counts = Counter(cat_id for cat_ids in image_category_ids for cat_id in set(cat_ids))
    return {
        cat_id: max(1.0, math.sqrt(threshold / (count / num_images)))
        for cat_id, count in sorted(image_counts.items())
    }


def repeat_factors(image_category_ids: Sequence[Sequence[int]], threshold: float) -> list[float]:
    """r_i = max over the image's categories of r_c (1.0 for an image with no category), per image.

    Args:
        image_category_ids: the category ids of each image's boxes (duplicates allowed), e.g.
            `dataset.image_category_ids()`; N counts every entry, images without boxes included.
        threshold: t; 0 gives 1.0 everywhere. LVIS uses t = 0.001.
    """
    category_factors = category_repeat_factors(image_category_ids, threshold)
    return [max((category_factors[cat_id] for cat_id in cat_ids), default=1.0) for cat_ids in image_category_ids]
