import math

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou

from detector.boxes import (
    DeltaBoxCoder,
    DistancePointCoder,
    box_area,
    box_iof_batched,
    box_iou_batched,
    box_iou_paired,
    cxcywh_to_xyxy,
    generalized_box_iou_paired,
    xyxy_to_cxcywh,
)


def random_boxes(*shape, generator=None, max_xy=400.0, min_wh=1.0, max_wh=150.0):
    xy = torch.rand(*shape, 2, generator=generator) * max_xy
    wh = torch.rand(*shape, 2, generator=generator) * (max_wh - min_wh) + min_wh
    return torch.cat([xy, xy + wh], dim=-1)


def test_box_iou_batched_hand_cases():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]]])  # (1, 2, 4)
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # identical to gt 0
        [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
        [20.0, 20.0, 30.0, 30.0],  # disjoint
        [10.0, 0.0, 20.0, 10.0],  # touches gt 0 at an edge, right half of gt 1
    ])
    iou = box_iou_batched(gt, anchors)
    expected = torch.tensor([[[1.0, 50 / 150, 0.0, 0.0], [0.5, 0.5, 0.0, 0.5]]])
    assert iou.shape == (1, 2, 4)
    torch.testing.assert_close(iou, expected)


def test_box_iou_batched_matches_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    gt = random_boxes(3, 7, generator=g)
    anchors = random_boxes(50, generator=g)
    iou = box_iou_batched(gt, anchors)
    for b in range(3):
        torch.testing.assert_close(iou[b], box_iou(gt[b], anchors))
    per_image_anchors = random_boxes(3, 20, generator=g)
    iou = box_iou_batched(gt, per_image_anchors)
    assert iou.shape == (3, 7, 20)
    for b in range(3):
        torch.testing.assert_close(iou[b], box_iou(gt[b], per_image_anchors[b]))


def test_box_iou_batched_degenerate_and_empty():
    gt = torch.tensor([[[5.0, 5.0, 5.0, 5.0], [3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0]]])
    anchors = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 2.0, 8.0]])
    iou = box_iou_batched(gt, anchors)
    assert torch.isfinite(iou).all()
    torch.testing.assert_close(iou[0, :2], torch.zeros(2, 3))
    torch.testing.assert_close(iou[0, 2], torch.tensor([0.0, 0.16, 0.0]))
    assert box_iou_batched(torch.zeros(2, 0, 4), anchors).shape == (2, 0, 3)
    assert box_iou_batched(gt, torch.zeros(0, 4)).shape == (1, 3, 0)


def test_box_iou_batched_half_input_computes_in_fp32():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=torch.float16)
    anchors = torch.tensor([[5.0, 0.0, 15.0, 10.0]], dtype=torch.float16)
    iou = box_iou_batched(gt, anchors)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[[1 / 3]]]))


def test_box_iof_batched():
    regions = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    anchors = torch.tensor([[2.0, 2.0, 4.0, 4.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                            [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(box_iof_batched(regions, anchors), torch.tensor([[[1.0, 0.5, 0.0, 0.0]]]))


def test_paired_iou_and_giou_match_torchvision_diagonal():
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(30, generator=g), random_boxes(30, generator=g)
    torch.testing.assert_close(box_iou_paired(a, b, eps=0.0), box_iou(a, b).diagonal())
    torch.testing.assert_close(generalized_box_iou_paired(a, b, eps=0.0), generalized_box_iou(a, b).diagonal())


def test_area_and_format_conversions():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 10.0], [3.0, 3.0, 1.0, 8.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([32.0, 0.0]))
    cxcywh = xyxy_to_cxcywh(boxes[:1])
    torch.testing.assert_close(cxcywh, torch.tensor([[3.0, 6.0, 4.0, 8.0]]))
    torch.testing.assert_close(cxcywh_to_xyxy(cxcywh), boxes[:1])
    batched = random_boxes(2, 3, 5)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(batched)), batched)


def test_delta_coder_known_deltas():
    coder = DeltaBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    anchor = torch.tensor([0.0, 0.0, 10.0, 20.0])  # centre (5, 10), size (10, 20)
    gt = torch.tensor([2.0, 4.0, 22.0, 24.0])  # centre (12, 14), size (20, 20)
    expected = torch.tensor([10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 5 * math.log(1.0)])
    torch.testing.assert_close(coder.encode(gt, anchor), expected)
    torch.testing.assert_close(coder.decode(expected, anchor), gt)


def test_delta_coder_round_trip_broadcasts():
    g = torch.Generator().manual_seed(2)
    coder = DeltaBoxCoder()
    anchors = random_boxes(100, generator=g, min_wh=16.0)  # (A, 4); size ratios stay below the clamp
    gt = random_boxes(3, 100, generator=g)  # (B, A, 4)
    deltas = coder.encode(gt, anchors)
    assert deltas.shape == (3, 100, 4)
    torch.testing.assert_close(coder.decode(deltas, anchors), gt, rtol=1e-5, atol=1e-3)


def test_delta_coder_clamps_before_exp():
    coder = DeltaBoxCoder(clamp=math.log(4.0))
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    boxes = coder.decode(torch.tensor([0.0, 0.0, 100.0, -1.0]), anchor)
    assert torch.isfinite(boxes).all()
    width, height = boxes[2] - boxes[0], boxes[3] - boxes[1]
    torch.testing.assert_close(width, torch.tensor(40.0))  # exp(log 4) * 10
    torch.testing.assert_close(height, torch.tensor(10.0 * math.exp(-1.0)))  # no clamp below
    default = DeltaBoxCoder().decode(torch.tensor([0.0, 0.0, 1e4, 1e4]), anchor)
    torch.testing.assert_close(default[2] - default[0], torch.tensor(1000.0 / 16 * 10))


def test_delta_coder_half_precision_and_gradients():
    coder = DeltaBoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float16)
    deltas = torch.zeros(1, 4, dtype=torch.float16)
    assert coder.decode(deltas, anchors).dtype == torch.float32
    deltas64 = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    anchors64 = random_boxes(4).double()
    assert torch.autograd.gradcheck(lambda d: coder.decode(d, anchors64), (deltas64,))


def test_distance_point_coder():
    coder = DistancePointCoder()
    points = torch.tensor([[5.0, 5.0], [0.0, 0.0]])
    gt = torch.tensor([[0.0, 2.0, 10.0, 12.0], [1.0, 1.0, 4.0, 4.0]])
    distances = coder.encode(points, gt)
    torch.testing.assert_close(distances, torch.tensor([[5.0, 3.0, 5.0, 7.0], [-1.0, -1.0, 4.0, 4.0]]))
    torch.testing.assert_close(coder.decode(points, distances), gt)
    clamped = coder.encode(points, gt, max_distance=4.5)
    torch.testing.assert_close(clamped, torch.tensor([[4.5, 3.0, 4.5, 4.5], [0.0, 0.0, 4.0, 4.0]]))


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(2, 3)])
def test_box_iou_batched_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        box_iou_batched(bad, torch.zeros(3, 4))
