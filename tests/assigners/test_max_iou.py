import pytest
import torch
from torchvision.ops import box_iou

from detector.assigners import BACKGROUND, IGNORE, PaddedTargets, MaxIoUAssigner


def strips(*intervals):
    """Boxes spanning y in [0, 10]; their IoU is the 1-D IoU of the x intervals, easy to compute by hand."""
    return torch.tensor([[x1, 0.0, x2, 10.0] for x1, x2 in intervals])


def reference_assign(anchors, gt_boxes, pos_thr=0.5, neg_thr=0.4, low_quality=True):
    """The rules written out one ground truth and one anchor at a time (slow, for comparison)."""
    num_anchors = anchors.shape[0]
    codes = torch.full((num_anchors,), BACKGROUND, dtype=torch.long)
    if gt_boxes.shape[0] == 0:
        return codes
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    for a in range(num_anchors):
        best_gt = int(iou[:, a].argmax())
        if iou[best_gt, a] >= pos_thr:
            codes[a] = best_gt
        elif iou[best_gt, a] >= neg_thr:
            codes[a] = IGNORE
    if low_quality:
        chosen_by = {}
        for g in range(gt_boxes.shape[0]):
            best = iou[g].max()
            if best > 0:
                for a in torch.nonzero(iou[g] == best).flatten().tolist():
                    chosen_by.setdefault(a, []).append(g)
        for a, gts in chosen_by.items():
            codes[a] = max(gts, key=lambda g: (float(iou[g, a]), -g))
    return codes


def test_thresholds_positive_ignored_background():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1.0
        [0.0, 0.0, 10.0, 6.0],  # 0.6
        [0.0, 0.0, 10.0, 5.0],  # 0.5 exactly: positive (>=)
        [0.0, 0.0, 10.0, 4.5],  # 0.45: ignored
        [0.0, 0.0, 10.0, 4.0],  # 0.4 exactly: ignored (background is < 0.4)
        [0.0, 0.0, 10.0, 3.0],  # 0.3: background
        [50.0, 50.0, 60.0, 60.0],  # 0: background
    ])
    codes = MaxIoUAssigner().assign(anchors, gt)
    assert codes.dtype == torch.long
    assert codes.tolist() == [0, 0, 0, IGNORE, IGNORE, BACKGROUND, BACKGROUND]


def test_positive_goes_to_the_highest_iou_gt():
    gt = strips((0, 10), (4, 14))
    anchors = strips((1, 11), (5, 14))  # a0: 9/11 vs 7/11; a1: 5/10 vs 9/10
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, 1]


def test_low_quality_match_keeps_best_anchors_with_ties():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 3.0],  # IoU 0.3: the gt's best ...
        [0.0, 7.0, 10.0, 10.0],  # ... tied exactly
        [0.0, 0.0, 10.0, 2.0],  # 0.2
        [30.0, 30.0, 40.0, 40.0],  # 0
    ])
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, 0, BACKGROUND, BACKGROUND]
    plain = MaxIoUAssigner(allow_low_quality_matches=False).assign(anchors, gt)
    assert plain.tolist() == [BACKGROUND] * 4


def test_low_quality_ties_on_a_regular_grid():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0],
                            [10.0, 10.0, 20.0, 20.0], [20.0, 20.0, 30.0, 30.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 15.0]])  # IoU 25 / 175 with each of the four grid cells
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, 0, 0, 0, BACKGROUND]


def test_gt_overlapping_no_anchor_creates_no_positive():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 2.0], [30.0, 30.0, 40.0, 40.0]])
    lonely = torch.tensor([[100.0, 100.0, 110.0, 110.0]])
    assert MaxIoUAssigner().assign(anchors, lonely).tolist() == [BACKGROUND] * 3
    both = torch.tensor([[100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 10.0]])
    assert MaxIoUAssigner().assign(anchors, both).tolist() == [1, BACKGROUND, BACKGROUND]
    degenerate = torch.tensor([[5.0, 1.0, 5.0, 1.0]])  # zero area: IoU 0 everywhere
    assert MaxIoUAssigner().assign(anchors, degenerate).tolist() == [BACKGROUND] * 3


def test_low_quality_anchor_goes_to_the_gt_that_chose_it():
    # a0 = [7, 15]: IoU 0.2 with gt0 (its best anchor) and 5/13 with gt1, whose own best is a1 (0.8).
    gt = strips((0, 10), (10, 20))
    anchors = strips((7, 15), (12, 20))
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, 1]
    # a0 = [5, 15] is positive for gt1 = [6, 16] (IoU 9/11) but is the only best match of gt0 (1/3 vs 1/4):
    # gt0 keeps it, gt1 still has a1 (IoU 1).
    gt = strips((0, 10), (6, 16))
    anchors = strips((5, 15), (6, 16))
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, 1]
    # One anchor chosen by two gts: the one with the higher IoU wins (0.3 > 0.25).
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 3.0], [50.0, 50.0, 60.0, 60.0]])
    assert MaxIoUAssigner().assign(anchors, gt).tolist() == [0, BACKGROUND]


def test_no_ground_truth_is_all_background():
    anchors = strips((0, 10), (5, 15))
    assigner = MaxIoUAssigner()
    assert assigner.assign(anchors, torch.zeros(0, 4)).tolist() == [BACKGROUND, BACKGROUND]
    codes = assigner.assign_batched(anchors, [len(anchors)],
                                    PaddedTargets.from_boxes(torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool)))
    assert codes.shape == (3, 2) and (codes == BACKGROUND).all()
    padded = strips((0, 10), (5, 15)).expand(2, 2, 4)
    codes = assigner.assign_batched(anchors, [len(anchors)],
                                    PaddedTargets.from_boxes(padded, torch.zeros(2, 2, dtype=torch.bool)))
    assert (codes == BACKGROUND).all()


def test_crowd_region_ignores_background_but_not_positives():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    crowd = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # positive, inside the crowd: stays positive
        [20.0, 20.0, 30.0, 30.0],  # background, IoF 1: ignored
        [35.0, 35.0, 45.0, 45.0],  # background, IoF 0.25: stays background
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45: ignored anyway
        [60.0, 60.0, 70.0, 70.0],  # far: background
    ])
    codes = MaxIoUAssigner().assign(anchors, gt, ignore_boxes=crowd)
    assert codes.tolist() == [0, IGNORE, BACKGROUND, IGNORE, BACKGROUND]
    # With no ground truth the crowd region still applies; an invalid crowd slot does nothing.
    no_gt = PaddedTargets.from_boxes(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), crowd.expand(2, 1, 4),
                                     torch.tensor([[True], [False]]))
    codes = MaxIoUAssigner().assign_batched(anchors, [len(anchors)], no_gt)
    assert codes.tolist() == [[IGNORE, IGNORE, BACKGROUND, IGNORE, BACKGROUND], [BACKGROUND] * 5]
    assert MaxIoUAssigner().assign(anchors, gt, ignore_boxes=torch.zeros(0, 4)).tolist()[1] == BACKGROUND


def grid_anchors(size, stride, extent):
    centres = torch.arange(stride / 2, extent, stride)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], dim=-1)
    return torch.cat([centres - size / 2, centres + size / 2], dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_per_image_and_reference_on_padded_batches(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat([grid_anchors(16.0, 8.0, 128.0), grid_anchors(32.0, 16.0, 128.0),
                         grid_anchors(45.0, 16.0, 128.0)])  # regular grids: exact ties happen
    counts = [0, 1, 5, 9]
    max_count = max(counts)
    gt_boxes = torch.zeros(len(counts), max_count, 4)
    gt_valid = torch.zeros(len(counts), max_count, dtype=torch.bool)
    per_image = []
    for b, count in enumerate(counts):
        xy = torch.rand(count, 2, generator=g) * 100
        wh = torch.rand(count, 2, generator=g) * 60 + 2
        boxes = torch.cat([xy, xy + wh], dim=-1)
        if count:
            boxes[0] = torch.tensor([8.0, 8.0, 24.0, 24.0])  # exactly a grid anchor
        per_image.append(boxes)
        gt_boxes[b, :count] = boxes
        gt_valid[b, :count] = True
        # Padding slots hold real-looking boxes that sit exactly on anchors: matching them would show.
        gt_boxes[b, count:] = anchors[torch.randint(len(anchors), (max_count - count,), generator=g)]
    assigner = MaxIoUAssigner()
    codes = assigner.assign_batched(anchors, [len(anchors)], PaddedTargets.from_boxes(gt_boxes, gt_valid))
    assert codes.shape == (len(counts), len(anchors))
    for b, boxes in enumerate(per_image):
        single = assigner.assign(anchors, boxes)
        assert torch.equal(codes[b], single)
        assert torch.equal(single, reference_assign(anchors, boxes))
        assert codes[b].max() < len(boxes)  # never a padding slot
        if len(boxes):
            assert (codes[b] >= 0).any()


def test_bad_arguments():
    with pytest.raises(ValueError):
        MaxIoUAssigner(pos_iou_thr=0.3, neg_iou_thr=0.4)
    assigner = MaxIoUAssigner()
    with pytest.raises(ValueError):
        assigner.assign_batched(torch.zeros(3, 4), [3],
                                PaddedTargets.from_boxes(torch.zeros(2, 4), torch.ones(2, dtype=torch.bool)))
    with pytest.raises(ValueError):
        assigner.assign_batched(torch.zeros(3, 4), [3],
                                PaddedTargets.from_boxes(torch.zeros(1, 2, 4), torch.ones(1, 3, dtype=torch.bool)))
