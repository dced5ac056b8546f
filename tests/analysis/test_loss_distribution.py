"""RetinaNet Fig. 4: readings and cumulative curves on hand-made loss arrays, sample selection by hand."""

import numpy as np
import pytest
import torch

from detector.analysis.loss_distribution import (ClassificationSamples, StreamSubsample, cumulative_loss_curve,
                                                 focal_losses, hardest_loss_share, loss_distribution_readings,
                                                 split_logits)


def test_hardest_share_hand_arrays():
    losses = np.array([1, 1, 1, 1, 11, 1, 1, 1, 1, 1], dtype=float)  # total 20, order must not matter
    assert hardest_loss_share(losses, 0.2) == pytest.approx(12 / 20)  # the 2 hardest: 11 + 1
    assert hardest_loss_share(losses, 0.05) == pytest.approx(11 / 20)  # at least one sample
    assert hardest_loss_share(losses, 1.0) == pytest.approx(1.0)
    assert hardest_loss_share(losses, 0.0) == 0.0
    # 100 samples: 5 hard ones with loss 19 and 95 with loss 1 -> 95 / 190 from the hardest 5%
    many = np.concatenate([np.ones(95), np.full(5, 19.0)])
    assert hardest_loss_share(many, 0.05) == pytest.approx(0.5)
    assert hardest_loss_share(np.zeros(4), 0.5) == 0.0
    with pytest.raises(ValueError):
        hardest_loss_share(np.array([]), 0.2)


def test_cumulative_curve_hand_values():
    x, y = cumulative_loss_curve(np.array([3.0, 1.0]), num_points=5)
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1.0])
    # sorted ascending [1, 3]: (0, 0), (0.5, 0.25), (1, 1), linear in between
    np.testing.assert_allclose(y, [0, 0.125, 0.25, 0.625, 1.0])
    _, uniform = cumulative_loss_curve(np.ones(10), num_points=11)
    np.testing.assert_allclose(uniform, np.linspace(0, 1, 11))


def test_readings_agree_with_curve():
    # share of the hardest 20% = 1 - curve(0.8) when 0.8 n is an integer
    losses = np.random.default_rng(0).exponential(size=1000) ** 3
    x, y = cumulative_loss_curve(losses, num_points=11)
    assert hardest_loss_share(losses, 0.2) == pytest.approx(1 - y[8])


def test_focal_losses_equation():
    logits = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    p = 1 / (1 + np.exp(-logits.numpy()))
    np.testing.assert_allclose(focal_losses(logits, True, 2.0), -((1 - p) ** 2) * np.log(p), rtol=1e-10)
    np.testing.assert_allclose(focal_losses(logits, False, 0.5), -(p ** 0.5) * np.log(1 - p), rtol=1e-10)


def test_split_logits_by_hand():
    pred = torch.arange(8, dtype=torch.float32).view(1, 4, 2)  # anchors 0..3, classes 0..1
    assigned = torch.tensor([[0, -1, -2, 1]])  # anchor 0 -> gt 0, 1 background, 2 ignored, 3 -> gt 1
    gt_labels = torch.tensor([[1, 0]])
    pos, neg = split_logits(pred, assigned, gt_labels, "all_classes")
    assert pos.tolist() == [1.0, 6.0]  # anchor 0 class 1, anchor 3 class 0
    assert neg.tolist() == [2.0, 3.0]  # both classes of anchor 1 only
    _, neg_max = split_logits(pred, assigned, gt_labels, "max_class")
    assert neg_max.tolist() == [3.0]
    with pytest.raises(ValueError, match="negatives"):
        split_logits(pred, assigned, gt_labels, "windows")


def test_gamma_concentrates_negative_loss():
    # mostly easy negatives (p ~ 0.01) and a few hard ones: larger gamma gives the hardest 5% more of the loss
    logits = torch.cat([torch.full((950,), -4.6), torch.full((50,), 0.5)])
    samples = ClassificationSamples(torch.tensor([0.0, 1.0, 2.0, 3.0]), logits, 1, 1000)
    readings, curves = loss_distribution_readings(samples, [0, 2])
    assert readings[1].negative_share > readings[0].negative_share
    assert readings[1].negative_share > 0.95
    assert set(curves) == {0.0, 2.0}


def test_stream_subsample_is_uniform_without_replacement():
    sampler = StreamSubsample(capacity=2000, seed=0)
    for start in range(0, 20000, 3000):  # chunks of 3000, the last one shorter
        sampler.add(torch.arange(start, min(start + 3000, 20000), dtype=torch.float32))
    values = sampler.result()
    assert sampler.num_seen == 20000 and values.numel() == 2000
    assert values.unique().numel() == 2000 and values.min() >= 0 and values.max() < 20000
    # every tenth of the stream is represented about equally (binomial sd ~13 around 200)
    counts = torch.bincount((values // 2000).long(), minlength=10)
    assert counts.min() > 140 and counts.max() < 260
    everything = StreamSubsample(capacity=None)
    everything.add(torch.ones(5))
    everything.add(torch.zeros(3))
    assert everything.result().tolist() == [1.0] * 5 + [0.0] * 3
