import pytest
import torch
from torchvision.ops import generalized_box_iou, generalized_box_iou_loss

from detector.losses import giou_loss, l1_loss, smooth_l1_loss


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 50 + 1
    return torch.cat([xy, xy + wh], dim=-1)


def test_l1_loss_equation_and_reductions():
    pred = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    target = torch.tensor([[0.0, 1.0, 2.0, -0.25]])
    expected = torch.tensor([[0.5, 2.0, 0.0, 0.25]])
    torch.testing.assert_close(l1_loss(pred, target), expected)
    torch.testing.assert_close(l1_loss(pred, target, "sum"), expected.sum())
    torch.testing.assert_close(l1_loss(pred, target, "mean"), expected.mean())


def test_smooth_l1_loss_equation():
    beta = 0.11
    diff = torch.tensor([0.0, 0.05, -0.1, 0.11, -0.5, 3.0])
    pred, target = diff + 1.0, torch.ones_like(diff)
    expected = torch.where(diff.abs() < beta, 0.5 * diff**2 / beta, diff.abs() - 0.5 * beta)
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=beta), expected)
    torch.testing.assert_close(smooth_l1_loss(pred, target), expected)  # beta defaults to 0.11
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.0), diff.abs())
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=1.0, reduction="sum"),
                               torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).sum())


def test_smooth_l1_gradient_with_beta_zero_is_finite():
    pred = torch.zeros(3, 4, requires_grad=True)
    smooth_l1_loss(pred, torch.zeros(3, 4), beta=0.0, reduction="sum").backward()
    assert torch.isfinite(pred.grad).all()


def test_giou_identical_boxes_is_zero():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 7.0, 20.0]])
    torch.testing.assert_close(giou_loss(boxes, boxes.clone()), torch.zeros(2), atol=1e-6, rtol=0)


def test_giou_hand_cases():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[20.0, 0.0, 30.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    # Disjoint: IoU 0, union 200, enclosing box 30 x 10 = 300: GIoU = 0 - 100/300, loss = 1 + 1/3.
    # Half overlap: IoU 50/150, enclosing 15 x 10 = 150 = union: loss = 1 - 1/3.
    expected = torch.tensor([1.0 + 1.0 / 3.0, 1.0 - 1.0 / 3.0])
    torch.testing.assert_close(giou_loss(pred, gt), expected)
    torch.testing.assert_close(giou_loss(pred, gt, reduction="mean"), expected.mean())


def test_giou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    pred, gt = random_boxes(40, g), random_boxes(40, g)
    torch.testing.assert_close(giou_loss(pred, gt, eps=0.0), 1.0 - generalized_box_iou(pred, gt).diagonal())
    pred_ours, pred_ref = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours = giou_loss(pred_ours, gt, reduction="sum")
    ref = generalized_box_iou_loss(pred_ref, gt, reduction="sum")
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(pred_ours.grad, pred_ref.grad)


def test_giou_batched_shapes_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    pred = random_boxes(6, g).double().view(2, 3, 4).requires_grad_()
    gt = random_boxes(6, g).double().view(2, 3, 4)
    assert giou_loss(pred, gt).shape == (2, 3)
    assert torch.autograd.gradcheck(lambda p: giou_loss(p, gt), (pred,))


def test_empty_inputs_give_zero_and_half_inputs_fp32():
    empty = torch.zeros(0, 4, requires_grad=True)
    for loss_fn in (l1_loss, smooth_l1_loss, giou_loss):
        value = loss_fn(empty, torch.zeros(0, 4), reduction="mean")
        value.backward()
        assert value.item() == 0.0
    half = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float16)
    assert giou_loss(half, half).dtype == torch.float32
    assert l1_loss(half, half).dtype == torch.float32


def test_invalid_arguments():
    a = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="average"):
        l1_loss(a, a, reduction="average")
    with pytest.raises(ValueError, match="shape"):
        giou_loss(a, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(a, a, beta=-1.0)
