"""Streaming helpers on hand-made sequences: shape batches as they fill, bounded waiting, results in input order."""

from __future__ import annotations

import pytest

from detector.predict.streaming import InOrder, canonical_shape, shape_batches


def test_canonical_shape_rounds_each_side_up():
    assert canonical_shape((25, 64), 32) == (32, 64)
    assert canonical_shape((64, 33), 32) == (64, 64)
    assert canonical_shape((48, 50), 16) == (48, 64)


def test_batches_fill_per_shape_and_failures_pass_at_once():
    items = ["a1", "b1", "a2", None, "b2", "a3", "b3", "a4"]  # letter: the shape; None: a failure
    key = lambda item: None if item is None else item[0]  # noqa: E731
    batches = list(shape_batches(items, key, batch_size=2, max_pending=8))
    assert batches == [["a1", "a2"], [None], ["b1", "b2"], ["a3", "a4"], ["b3"]]


def test_the_oldest_bucket_runs_when_too_many_images_wait():
    items = ["a1", "b1", "a2", "c1", "a3"]
    batches = list(shape_batches(items, lambda item: item[0], batch_size=3, max_pending=4))
    # at c1, 4 images wait: the bucket holding the oldest (a1) runs, half full; the rest run at the end
    assert batches == [["a1", "a2"], ["b1"], ["c1"], ["a3"]]
    with pytest.raises(ValueError, match="batch_size"):
        list(shape_batches(items, lambda item: item[0], batch_size=4, max_pending=3))


def test_in_order_releases_by_index():
    order = InOrder()
    assert order.add(2, "c") == [] and order.add(0, "a") == ["a"] and order.add(1, "b") == ["b", "c"]
    assert order.add(4, "e") == [] and order.remaining() == ["e"] and order.remaining() == []
