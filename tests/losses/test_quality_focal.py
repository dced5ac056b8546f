import pytest
import torch

from detector.losses import focal_loss, quality_focal_loss


def naive_qfl(x, y, beta):
    """Li et al. 2020 (GFL), QFL written out literally in float64."""
    x, y = x.double(), y.double()
    sigma = 1.0 / (1.0 + torch.exp(-x))
    return -(y - sigma).abs() ** beta * ((1 - y) * torch.log(1 - sigma) + y * torch.log(sigma))


def soft_targets(shape, generator, rate=0.3):
    """IoU-like scores at a fraction of the entries, 0 elsewhere (GFL's target layout)."""
    mask = torch.rand(shape, generator=generator) < rate
    return torch.rand(shape, generator=generator) * mask


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_matches_written_equation(beta):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g) * 3
    y = soft_targets((64, 10), g)
    expected = naive_qfl(x, y, beta)
    torch.testing.assert_close(quality_focal_loss(x, y, beta).double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(quality_focal_loss(x, y, beta, "sum").double(), expected.sum(), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(quality_focal_loss(x, y, beta, "mean").double(), expected.mean(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("beta", [1.5, 2.0, 3.0])
def test_gradient_matches_autograd_of_the_equation(beta):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 10, generator=g) * 3
    y = soft_targets((64, 10), g)
    ours_x, ref_x = x.clone().requires_grad_(), x.double().requires_grad_()
    upstream = torch.randn(64, 10, generator=g)
    quality_focal_loss(ours_x, y, beta).backward(upstream)
    naive_qfl(ref_x, y, beta).backward(upstream.double())
    torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0, 2.5])
def test_hand_written_backward_passes_gradcheck(beta):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = soft_targets((6, 5), g, rate=0.6).double()
    # beta <= 1 has a kink at sigma = y; random x never lands on it.
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda t: quality_focal_loss(t, y, beta, reduction), (x,))


@pytest.mark.parametrize("beta", [0.5, 2.0, 3.0])
def test_hard_targets_equal_focal_loss_without_alpha(beta):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 8, generator=g) * 3
    y = (torch.rand(200, 8, generator=g) < 0.2).float()
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = quality_focal_loss(ours_x, y, beta, "sum")
    ref = focal_loss(ref_x, y, alpha=-1, gamma=beta, reduction="sum")
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(quality_focal_loss(x, y, beta), focal_loss(x, y, alpha=-1, gamma=beta))
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


def test_finite_at_extreme_logits_and_hand_values():
    x = torch.tensor([[100.0, -100.0, 100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.5, 0.5]])
    loss = quality_focal_loss(x, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss[0, :2], torch.zeros(2))
    # Wrong and saturated: |y - sigma|^2 = 1 and BCE = 100; soft y = 0.5: 0.25 * BCE(+-100, 0.5) = 0.25 * 50.
    torch.testing.assert_close(loss[0, 2:], torch.tensor([100.0, 100.0, 12.5, 12.5]))
    torch.testing.assert_close(x.grad[0], torch.tensor([0.0, 0.0, 1.0, -1.0, 0.125, -0.125]))


def test_minimum_at_sigma_equal_to_target():
    # At sigma = y both the factor and its derivative vanish: zero gradient there, the loss is minimal there.
    y = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = torch.logit(y).requires_grad_()
    loss = quality_focal_loss(x, y)
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(x.grad, torch.zeros(3, dtype=torch.float64))
    for delta in (-0.3, 0.3):
        assert (quality_focal_loss(x.detach() + delta, y) > 0).all()


def test_dtypes_no_grad_targets_with_grad_and_errors():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(10, 3, generator=g) * 2).half().requires_grad_()
    y = soft_targets((10, 3), g)
    loss = quality_focal_loss(x, y, reduction="sum")
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float16
    with torch.no_grad():
        torch.testing.assert_close(quality_focal_loss(x, y), quality_focal_loss(x.float(), y))
    x32, x_ref = x.detach().float().requires_grad_(), x.detach().float().requires_grad_()
    y_grad = y.clone().requires_grad_()
    quality_focal_loss(x32, y_grad, reduction="mean").backward()
    quality_focal_loss(x_ref, y, reduction="mean").backward()
    assert y_grad.grad is not None
    torch.testing.assert_close(x32.grad, x_ref.grad)
    empty = torch.zeros(0, 80, requires_grad=True)
    loss = quality_focal_loss(empty, torch.zeros(0, 80), reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 80)
    with pytest.raises(ValueError, match="beta"):
        quality_focal_loss(x, y, beta=-1.0)
    with pytest.raises(ValueError, match="shape"):
        quality_focal_loss(x, y[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        quality_focal_loss(x, y, reduction="batchmean")
