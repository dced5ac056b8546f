import pytest
import torch

from detector.losses import focal_loss, focal_loss_star


def naive_focal_star(x, y, gamma, beta):
    """Lin et al. 2017, appendix A, written out literally in float64."""
    x, y = x.double(), y.double()
    x_t = x * (2 * y - 1)
    p_star_t = 1.0 / (1.0 + torch.exp(-(gamma * x_t + beta)))
    return -torch.log(p_star_t) / gamma


def one_hot(shape, generator, rate=0.2):
    return (torch.rand(shape, generator=generator) < rate).float()


@pytest.mark.parametrize("gamma,beta", [(2.0, 1.0), (1.0, 0.0), (4.0, 0.0), (0.5, -1.0), (3.0, 2.5)])
def test_matches_written_equation(gamma, beta):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g) * 3
    y = one_hot((64, 10), g)
    expected = naive_focal_star(x, y, gamma, beta)
    torch.testing.assert_close(focal_loss_star(x, y, gamma, beta).double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(focal_loss_star(x, y, gamma, beta, "sum").double(), expected.sum(), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(focal_loss_star(x, y, gamma, beta, "mean").double(), expected.mean(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradient_matches_autograd_of_the_equation(reduction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 7, generator=g) * 3
    y = one_hot((40, 7), g)
    ours_x, ref_x = x.clone().requires_grad_(), x.double().requires_grad_()
    ours = focal_loss_star(ours_x, y, 2.0, 1.0, reduction)
    ref = naive_focal_star(ref_x, y, 2.0, 1.0)
    ref = {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction]
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64) if reduction == "none" else torch.tensor(1.3)
    ours.backward(upstream.float())
    ref.backward(upstream.double())
    torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, rtol=1e-5, atol=1e-7)
    x64 = (x[:6, :5].double()).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: focal_loss_star(t, y[:6, :5].double(), 2.0, 1.0, reduction), (x64,))


def test_finite_loss_and_gradient_at_extreme_logits():
    x = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = focal_loss_star(x, y, 2.0, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # Right and confident: ~0 loss and gradient. Wrong and confident: (gamma |x| - beta) / gamma, slope -y'.
    torch.testing.assert_close(loss[0, :2], torch.zeros(2))
    torch.testing.assert_close(loss[0, 2:], torch.full((2,), (200.0 - 1.0) / 2.0))
    torch.testing.assert_close(x.grad[0], torch.tensor([0.0, 0.0, 1.0, -1.0]))


def test_paper_setting_behaves_like_focal_loss():
    # Both are decreasing in p_t, and both down-weight well-classified examples relative to CE.
    x = torch.linspace(-6, 6, 121)
    y = torch.ones_like(x)
    fl_star = focal_loss_star(x, y, 2.0, 1.0)
    fl = focal_loss(x, y, alpha=-1, gamma=2.0)
    assert (fl_star.diff() < 0).all() and (fl.diff() < 0).all()
    ce = focal_loss(x, y, alpha=-1, gamma=0.0)
    easy = x > 2  # p_t > 0.88
    assert (fl_star[easy] < 0.1 * ce[easy]).all() and (fl[easy] < 0.1 * ce[easy]).all()
    # Hard examples are still penalised like CE (within a constant factor).
    hard = x < -3
    assert ((fl_star[hard] / ce[hard]) > 0.5).all() and ((fl[hard] / ce[hard]) > 0.5).all()


def test_gamma_one_beta_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g) * 4
    y = one_hot((30, 4), g)
    torch.testing.assert_close(focal_loss_star(x, y, 1.0, 0.0), focal_loss(x, y, alpha=-1, gamma=0.0))


def test_dtypes_no_grad_targets_with_grad_and_errors():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(10, 3, generator=g) * 2).bfloat16().requires_grad_()
    y = one_hot((10, 3), g)
    loss = focal_loss_star(x, y, reduction="sum")
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(focal_loss_star(x, y), focal_loss_star(x.float(), y))
    y_grad = y.clone().requires_grad_()
    x32 = x.detach().float().requires_grad_()
    focal_loss_star(x32, y_grad, reduction="sum").backward()
    x_ref = x.detach().float().requires_grad_()
    focal_loss_star(x_ref, y, reduction="sum").backward()
    assert y_grad.grad is not None
    torch.testing.assert_close(x32.grad, x_ref.grad)
    empty = torch.zeros(0, 5, requires_grad=True)
    focal_loss_star(empty, torch.zeros(0, 5), reduction="mean").backward()
    assert empty.grad.shape == (0, 5)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss_star(x, y, gamma=0.0)
    with pytest.raises(ValueError, match="shape"):
        focal_loss_star(x, y[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        focal_loss_star(x, y, reduction="avg")
