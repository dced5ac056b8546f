import math

import pytest
import torch

from detector.losses import distribution_focal_loss, integral_distribution

REG_MAX = 16


def naive_dfl(logits, targets):
    """Li et al. 2020 (GFL), DFL written out literally in float64, one row at a time."""
    out = []
    for row, y in zip(logits.double(), targets.double().tolist(), strict=True):
        s = torch.exp(row) / torch.exp(row).sum()
        i = min(math.floor(y), row.numel() - 2)
        out.append(-((i + 1 - y) * torch.log(s[i]) + (y - i) * torch.log(s[i + 1])))
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def two_bin_logits(targets, reg_max=REG_MAX, eps=1e-12):
    """Logits whose softmax puts y_{i+1} - y on bin i, y - y_i on bin i + 1 and ~eps elsewhere."""
    probs = torch.full((targets.numel(), reg_max + 1), eps, dtype=torch.float64)
    left = targets.double().floor().clamp(max=reg_max - 1).long()
    right_weight = targets.double() - left
    rows = torch.arange(targets.numel())
    probs[rows, left] += 1 - right_weight
    probs[rows, left + 1] += right_weight
    return probs.log()


def test_matches_written_equation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, REG_MAX + 1, generator=g) * 3
    targets = torch.rand(50, generator=g) * (REG_MAX - 0.1)
    targets[:5] = torch.tensor([0.0, 1.0, 7.0, 15.0, REG_MAX - 0.1])  # integer targets and GFL's clamp value
    expected = naive_dfl(logits, targets)
    loss = distribution_focal_loss(logits, targets)
    assert loss.shape == (50,)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distribution_focal_loss(logits, targets, "sum").double(), expected.sum(), rtol=1e-5,
                               atol=1e-4)
    torch.testing.assert_close(distribution_focal_loss(logits, targets, "mean").double(), expected.mean(),
                               rtol=1e-5, atol=1e-5)


def test_gradient_matches_autograd_of_the_equation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 5, generator=g, dtype=torch.float64) * 2
    targets = torch.rand(12, generator=g, dtype=torch.float64) * 4
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    distribution_focal_loss(ours, targets, "sum").backward()
    naive_dfl(ref, targets).sum().backward()
    torch.testing.assert_close(ours.grad, ref.grad)
    assert torch.autograd.gradcheck(lambda t: distribution_focal_loss(t, targets, "mean"), (ours.detach().clone()
                                                                                           .requires_grad_(),))


@pytest.mark.parametrize("y", [0.0, 0.3, 2.5, 7.0, 11.75, REG_MAX - 0.1])
def test_minimum_at_the_two_bin_split(y):
    targets = torch.tensor([y], dtype=torch.float64)
    logits = two_bin_logits(targets).requires_grad_()
    loss = distribution_focal_loss(logits, targets)
    loss.sum().backward()
    # The minimum is the entropy of the split, -(w_l log w_l + w_r log w_r) (0 for an integer target).
    w_right = y - math.floor(y)
    entropy = -sum(w * math.log(w) for w in (1 - w_right, w_right) if w > 0)
    torch.testing.assert_close(loss, torch.tensor([entropy], dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert logits.grad.abs().max() < 1e-9
    g = torch.Generator().manual_seed(int(y * 100))
    for _ in range(5):
        perturbed = logits.detach() + 0.05 * torch.randn(logits.shape, generator=g, dtype=torch.float64)
        perturbed_loss = distribution_focal_loss(perturbed, targets)
        # Cross-entropy against the split is never below the split's entropy (Gibbs' inequality) ...
        assert perturbed_loss >= entropy - 1e-12
        # ... and for a fractional target the split itself is the minimum (for an integer target the infimum
        # is approached only as the target bin's logit grows without bound).
        if w_right > 0:
            assert perturbed_loss > loss.detach() + 1e-6
    torch.testing.assert_close(integral_distribution(logits.detach()), targets, rtol=0, atol=1e-9)


def test_integer_targets_and_the_right_edge():
    logits = two_bin_logits(torch.tensor([3.0, 0.0]))
    # An integer target puts all its weight on bin y itself: the loss is -log S_y.
    expected = -torch.log_softmax(logits, -1)[[0, 1], [3, 0]]
    torch.testing.assert_close(distribution_focal_loss(logits, torch.tensor([3.0, 0.0], dtype=torch.float64)),
                               expected)
    # y = reg_max exactly is accepted (all mass on the last bin), not an out-of-range index.
    edge = torch.zeros(1, REG_MAX + 1)
    torch.testing.assert_close(distribution_focal_loss(edge, torch.tensor([float(REG_MAX)])),
                               torch.tensor([math.log(REG_MAX + 1)]))


def test_integral_distribution():
    uniform = torch.zeros(3, 4, REG_MAX + 1)
    torch.testing.assert_close(integral_distribution(uniform), torch.full((3, 4), REG_MAX / 2))
    peaked = torch.full((2, 5), -1e4)
    peaked[0, 1] = peaked[1, 4] = 0.0
    torch.testing.assert_close(integral_distribution(peaked), torch.tensor([1.0, 4.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = integral_distribution(torch.randn(7, REG_MAX + 1).bfloat16())
    assert out.dtype == torch.float32 and out.shape == (7,)


def test_leading_dims_dtypes_empty_and_errors():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 9, generator=g)
    targets = torch.rand(2, 3, 4, generator=g) * 7.9
    flat = distribution_focal_loss(logits.reshape(-1, 9), targets.reshape(-1))
    torch.testing.assert_close(distribution_focal_loss(logits, targets), flat.reshape(2, 3, 4))
    half = logits.half().requires_grad_()
    loss = distribution_focal_loss(half, targets, "sum")
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.float16
    empty = torch.zeros(0, 17, requires_grad=True)
    loss = distribution_focal_loss(empty, torch.zeros(0), "mean")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 17)
    assert distribution_focal_loss(empty, torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="targets of shape"):
        distribution_focal_loss(torch.zeros(4, 17), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="bins"):
        distribution_focal_loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        distribution_focal_loss(torch.zeros(4, 17), torch.zeros(4), "avg")
