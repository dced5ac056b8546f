"""repeat_factors against hand-computed values."""

from __future__ import annotations

import math

import pytest

from detector.data import category_repeat_factors, repeat_factors

# 4 images; category 7 is in 1 of them (f = 1/4), 3 in 2 (f = 2/4), 5 in all 4 (f = 4/4).
# Repeated ids within an image (several boxes) count once.
IMAGES = [[7, 3, 5, 7], [3, 5], [5], [5, 5]]


def test_hand_computed_threshold_one_half():
    # t = 0.5: r_7 = sqrt(0.5 / 0.25) = sqrt(2) = 1.41421356; r_3 = sqrt(0.5 / 0.5) = 1; r_5 = max(1, sqrt(0.5)) = 1.
    assert category_repeat_factors(IMAGES, 0.5) == pytest.approx({3: 1.0, 5: 1.0, 7: 1.41421356})
    assert repeat_factors(IMAGES, 0.5) == pytest.approx([1.41421356, 1.0, 1.0, 1.0])


def test_hand_computed_threshold_point_eight():
    # t = 0.8: r_7 = sqrt(0.8 / 0.25) = sqrt(3.2) = 1.78885438; r_3 = sqrt(0.8 / 0.5) = sqrt(1.6) = 1.26491106;
    # r_5 = max(1, sqrt(0.8)) = 1. Image 0 takes its largest, r_7; image 1 r_3.
    assert repeat_factors(IMAGES, 0.8) == pytest.approx([1.78885438, 1.26491106, 1.0, 1.0])


def test_images_without_categories_count_in_n_and_get_one():
    # 5 images now: f_7 = 1/5, so t = 0.8 gives r_7 = sqrt(4) = 2 and r_3 = sqrt(0.8 / 0.4) = sqrt(2).
    factors = repeat_factors(IMAGES + [[]], 0.8)
    assert factors == pytest.approx([2.0, math.sqrt(2.0), 1.0, 1.0, 1.0])


def test_limits_and_errors():
    assert repeat_factors(IMAGES, 0.0) == [1.0, 1.0, 1.0, 1.0]
    assert repeat_factors([], 0.001) == []
    assert repeat_factors([[], []], 0.5) == [1.0, 1.0]
    assert repeat_factors([[1]], 4.0) == [2.0]  # f = 1: r = sqrt(t)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            repeat_factors(IMAGES, bad)
