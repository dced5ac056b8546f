import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detector.losses import focal_loss, reduce_loss


def naive_focal(x, y, alpha, gamma):
    """Lin et al. 2017 written out literally in float64 (soft targets: p_t = p y + (1 - p)(1 - y))."""
    x, y = x.double(), y.double()
    p = 1.0 / (1.0 + torch.exp(-x))
    p_t = p * y + (1 - p) * (1 - y)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    alpha_t = alpha * y + (1 - alpha) * (1 - y) if alpha >= 0 else torch.ones_like(y)
    return alpha_t * (1 - p_t) ** gamma * ce


def one_hot_targets(shape, generator, positive_rate=0.2):
    return (torch.rand(shape, generator=generator) < positive_rate).float()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 0.5), (-1.0, 2.0), (0.25, 1.0),
                                         (0.9, 3.0), (1.0, 2.0), (0.0, 1.5)])
def test_matches_written_equation(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g) * 4
    y = one_hot_targets((64, 10), g)
    expected = naive_focal(x, y, alpha, gamma)
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma).double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma, "sum").double(), expected.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma, "mean").double(), expected.mean(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 0.5), (0.25, 3.0)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_values_and_gradients_match_torchvision(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g) * 3
    y = one_hot_targets((200, 8), g)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = focal_loss(ours_x, y, alpha, gamma, reduction)
    ref = sigmoid_focal_loss(ref_x, y, alpha, gamma, reduction)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn_like(ref, generator=g) if reduction == "none" else torch.tensor(1.7)
    ours.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


def test_soft_targets_follow_the_same_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 6, generator=g) * 3
    y = torch.rand(50, 6, generator=g)
    x_ours = x.clone().requires_grad_()
    x_ref = x.clone().double().requires_grad_()
    focal_loss(x_ours, y, 0.25, 2.0, "sum").backward()
    naive_focal(x_ref, y, 0.25, 2.0).sum().backward()
    torch.testing.assert_close(focal_loss(x, y, 0.25, 2.0).double(), naive_focal(x, y, 0.25, 2.0),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_ours.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_hand_written_backward_passes_gradcheck(gamma, soft):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.rand(6, 5, generator=g, dtype=torch.float64) if soft else one_hot_targets((6, 5), g).double()
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda t: focal_loss(t, y, 0.25, gamma, reduction), (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.2, 2.0])
def test_finite_loss_and_gradient_at_extreme_logits(gamma):
    x = torch.tensor([[100.0, -100.0, 100.0, -100.0, 30.0, -30.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    loss = focal_loss(x, y, 0.25, gamma)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # Confident and right: no loss; confident and wrong: alpha_t * |x| (BCE ~ |x|, modulator ~ 1).
    torch.testing.assert_close(loss[0, :2], torch.zeros(2))
    torch.testing.assert_close(loss[0, 2:4], torch.tensor([0.75 * 100.0, 0.25 * 100.0]))
    torch.testing.assert_close(x.grad[0, 2:4], torch.tensor([0.75, -0.25]))


def test_half_precision_logits_give_fp32_loss_and_matching_gradient_dtype():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(20, 4, generator=g) * 2).half().requires_grad_()
    y = one_hot_targets((20, 4), g)
    loss = focal_loss(x, y, reduction="sum")
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float16
    torch.testing.assert_close(loss, sigmoid_focal_loss(x.detach().float(), y, reduction="sum"))


def test_targets_with_gradient_use_the_composed_path():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=g, requires_grad=True)
    y = torch.rand(10, 3, generator=g, requires_grad=True)
    focal_loss(x, y, reduction="sum").backward()
    assert y.grad is not None and x.grad is not None
    x_ref = x.detach().clone().requires_grad_()
    focal_loss(x_ref, y.detach(), reduction="sum").backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_no_grad_and_empty_inputs():
    with torch.no_grad():
        x = torch.randn(5, 3, requires_grad=True)
        y = torch.zeros(5, 3)
        torch.testing.assert_close(focal_loss(x, y), sigmoid_focal_loss(x, y))
    empty = torch.zeros(0, 80, requires_grad=True)
    loss = focal_loss(empty, torch.zeros(0, 80), reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 80)
    assert focal_loss(empty, torch.zeros(0, 80), reduction="sum").item() == 0.0


def test_invalid_arguments():
    x, y = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="batchmean"):
        focal_loss(x, y, reduction="batchmean")
    with pytest.raises(ValueError, match="batchmean"):
        focal_loss(x.requires_grad_(), y, reduction="batchmean")
    with pytest.raises(ValueError, match="shape"):
        focal_loss(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(x, y, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(x, y, alpha=1.5)
    with pytest.raises(ValueError, match="avg"):
        reduce_loss(x, "avg")
