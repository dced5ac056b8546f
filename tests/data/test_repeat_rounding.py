"""Repeat-factor sampling roundings: "ceil" (the official EFL code) and "stochastic" (detectron2's, the default)."""

from __future__ import annotations

import collections
import itertools
import json
import math

import numpy as np
import pytest
import torch

from detector.config import ConfigError, load_config
from detector.data import GroupedBatchSampler, repeat_factors
from detector.data.build import build_train_loader

# A hand-made set of 10 images and t = 0.5. Category 1 is in 1 image (f = 0.1), 2 in 2 (f = 0.2), 3 in 4
# (f = 0.4), 4 in 6 (f = 0.6); images 8 and 9 have no box and still count in N = 10.
#   r_1 = sqrt(0.5 / 0.1) = sqrt(5) = 2.2361   -> ceil 3
#   r_2 = sqrt(0.5 / 0.2) = sqrt(2.5) = 1.5811 -> ceil 2
#   r_3 = sqrt(0.5 / 0.4) = sqrt(1.25) = 1.1180 -> ceil 2
#   r_4 = max(1, sqrt(0.5 / 0.6)) = 1
# r_i is the largest r_c of the image's categories (1 without any).
IMAGES = [[1, 4], [2, 3], [2, 4], [3], [3, 4, 4], [3, 4], [4], [4], [], []]
THRESHOLD = 0.5
HAND_FACTORS = [math.sqrt(5), math.sqrt(2.5), math.sqrt(2.5), math.sqrt(1.25), math.sqrt(1.25), math.sqrt(1.25),
                1.0, 1.0, 1.0, 1.0]
HAND_CEIL_COPIES = [3, 2, 2, 2, 2, 2, 1, 1, 1, 1]  # sum 17: the epoch of the ceil mode
RATIOS = [0.75, 1.5, 1.0, 0.5, 2.0, 0.75, 1.33, 0.5, 1.0, 0.6]  # h / w, for the aspect-ratio grouping


def sampler(rounding="ceil", **kwargs):
    kwargs = {"batch_size": 1, "seed": 7, "group_by_aspect_ratio": False, **kwargs}
    return GroupedBatchSampler(RATIOS, repeat_factors=repeat_factors(IMAGES, THRESHOLD), repeat_rounding=rounding,
                               **kwargs)


def epoch(s, number, start_batch=0):
    s.set_epoch(number, start_batch=start_batch)
    return list(s)


def flat(batches):
    return list(itertools.chain(*batches))


def test_hand_computed_factors():
    assert repeat_factors(IMAGES, THRESHOLD) == pytest.approx(HAND_FACTORS)


def test_ceil_epoch_is_the_resampled_list_with_ceil_r_copies_of_each_image():
    s = sampler()
    assert s.epoch_size == 17 and len(s) == 17
    orders = set()
    for number in range(8):
        indices = flat(epoch(s, number))
        assert len(indices) == 17
        assert collections.Counter(indices) == collections.Counter(dict(enumerate(HAND_CEIL_COPIES)))
        orders.add(tuple(indices))
    assert len(orders) == 8  # shuffled anew every epoch
    assert flat(epoch(s, 3)) == flat(epoch(sampler(), 3))  # the same seed and epoch: the same list
    assert flat(epoch(s, 3)) != flat(epoch(sampler(seed=8), 3))
    ordered = flat(epoch(sampler(shuffle=False), 0))
    assert ordered == [i for i, copies in enumerate(HAND_CEIL_COPIES) for _ in range(copies)]


def test_ceil_mode_with_integer_factors_up_to_float_error():
    # 1 + 1e-12 and 2 + 4e-16 (a sqrt that should be 2) are whole numbers; 2.000001 is not.
    s = GroupedBatchSampler([1.0] * 3, 1, repeat_factors=[1 + 1e-12, 2 + 4e-16, 2.000001], repeat_rounding="ceil")
    assert s.epoch_size == 1 + 2 + 3


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ceil_ranks_split_the_epoch_list_padded_by_its_head(world_size):
    for number in range(3):
        full = sampler()
        full.set_epoch(number)
        epoch_list = full._epoch_indices()
        shard_size = -(-17 // world_size)
        padded = (epoch_list * 2)[: shard_size * world_size]
        shards = [flat(epoch(sampler(rank=rank, world_size=world_size), number)) for rank in range(world_size)]
        for rank, shard in enumerate(shards):
            assert len(shard) == shard_size and shard == padded[rank::world_size]
        assert collections.Counter(itertools.chain(*shards)) == collections.Counter(padded)


def test_ceil_len_is_exact_with_grouping_and_resume_skips_batches():
    for batch_size, world_size, drop_last in itertools.product((1, 2, 4), (1, 2, 3), (True, False)):
        for rank in range(world_size):
            s = sampler(batch_size=batch_size, group_by_aspect_ratio=True, rank=rank, world_size=world_size,
                        drop_last=drop_last)
            shard = math.ceil(17 / world_size)
            expected = shard // batch_size if drop_last else math.ceil(shard / batch_size)
            assert len(s) == expected and len(epoch(s, 1)) == expected
    s = sampler(batch_size=2, group_by_aspect_ratio=True)
    full = epoch(s, 5)
    assert epoch(s, 5, start_batch=3) == full[3:]
    assert list(s) == full


def stochastic_epoch_by_hand(factors, seed, epoch_number):
    """The documented stochastic recipe, written out: floor(r_i) + [u_i < frac(r_i)] copies with u drawn from
    a generator seeded seed + epoch, the copies permuted by that generator, cut or wrapped to round(sum r)."""
    factors = torch.tensor(factors, dtype=torch.float64)
    generator = torch.Generator()
    generator.manual_seed(seed + epoch_number)
    draws = torch.rand(len(factors), generator=generator, dtype=torch.float64)
    copies = [int(math.floor(r)) + int(u < r - math.floor(r)) for r, u in zip(factors.tolist(), draws.tolist())]
    listed = [i for i, c in enumerate(copies) for _ in range(c)]
    order = torch.randperm(len(listed), generator=generator).tolist()
    shuffled = [listed[j] for j in order]
    length = int(math.floor(sum(factors.tolist()) + 0.5))
    return [shuffled[k % len(shuffled)] for k in range(length)]


def test_stochastic_mode_is_the_default_and_follows_its_recipe():
    factors = repeat_factors(IMAGES, THRESHOLD)  # sum 12.75 -> 13 images an epoch
    default = GroupedBatchSampler(RATIOS, 1, seed=7, group_by_aspect_ratio=False, repeat_factors=factors)
    assert default.repeat_rounding == "stochastic" and default.epoch_size == 13
    explicit = sampler("stochastic")
    for number in range(6):
        expected = stochastic_epoch_by_hand(factors, 7, number)
        assert flat(epoch(default, number)) == expected == flat(epoch(explicit, number))


def test_bad_rounding_is_refused():
    with pytest.raises(ValueError, match="repeat_rounding must be one of"):
        GroupedBatchSampler([1.0], 1, repeat_factors=[1.5], repeat_rounding="round")


# ------------------------------------------------------------------------------ config and loader wiring
def write_dataset(tmp_path):
    """The hand-made set as a COCO file (tiny images) and a config file training on it."""
    images, annotations = [], []
    for image_id, cats in enumerate(IMAGES, start=1):
        height, width = (16, 12) if RATIOS[image_id - 1] >= 1 else (12, 16)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        for cat in cats:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [1, 1, 6, 6], "area": 36, "iscrowd": 0})
    (tmp_path / "images").mkdir()
    from PIL import Image
    for entry in images:
        Image.fromarray(np.zeros((entry["height"], entry["width"], 3), np.uint8)).save(
            tmp_path / "images" / entry["file_name"])
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3, 4)]}))
    config = tmp_path / "config.yaml"
    config.write_text(f"""
model: {{num_classes: 4}}
data:
  train: {{format: coco, ann_file: {ann_file}, img_dir: {tmp_path / 'images'}, repeat_threshold: {THRESHOLD}}}
  batch_size: 1
  num_workers: 0
  min_size: [16]
  max_size: 16
runtime: {{device: cpu}}
""")
    return config


def test_config_key_reaches_the_sampler(tmp_path):
    config = write_dataset(tmp_path)
    _, default = build_train_loader(load_config(config))
    assert default.repeat_rounding == "stochastic" and default.epoch_size == 13
    loader, ceil = build_train_loader(load_config(config, ["data.train.repeat_rounding=ceil"]))
    assert ceil.repeat_rounding == "ceil" and ceil.epoch_size == 17 and len(loader) == 17
    ceil.set_epoch(0)
    loaded = collections.Counter(int(target["image_id"]) - 1 for _, targets in loader for target in targets)
    assert loaded == collections.Counter(dict(enumerate(HAND_CEIL_COPIES)))


def test_config_refuses_an_unknown_rounding(tmp_path):
    config = write_dataset(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.train\.repeat_rounding.*'stochastic' \| 'ceil', got 'round'"):
        load_config(config, ["data.train.repeat_rounding=round"])
