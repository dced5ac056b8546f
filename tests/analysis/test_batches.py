import pytest
import torch

from detector.analysis.batches import first_images


def _batches(sizes):
    start = 0
    for size in sizes:
        yield torch.arange(start, start + size), [{"id": i} for i in range(start, start + size)]
        start += size


def test_cuts_the_last_batch_to_max_images():
    out = list(first_images(_batches([3, 3, 3]), max_images=5))
    assert [images.tolist() for images, _ in out] == [[0, 1, 2], [3, 4]]
    assert [t["id"] for _, targets in out for t in targets] == [0, 1, 2, 3, 4]


def test_none_takes_everything_and_stops_at_the_limit_exactly():
    assert sum(len(t) for _, t in first_images(_batches([2, 2]), None)) == 4
    assert [len(t) for _, t in first_images(_batches([2, 2, 2]), 4)] == [2, 2]


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        list(first_images(_batches([2]), max_images=0))
    with pytest.raises(ValueError, match="no images"):
        list(first_images(_batches([]), max_images=None))
