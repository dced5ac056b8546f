import math
import statistics

import pytest
import torch
from torchvision.ops import box_iou

from detector.assigners import BACKGROUND, IGNORE, PaddedTargets, ATSSAssigner


def reference_assign(anchors, counts, gt_boxes, topk=9, ignore_boxes=None, ignore_iof_thr=0.5):
    """ATSS (Algorithm 1) one ground truth, one level and one anchor at a time, in plain Python (slow).

    Distance ties go to the lower anchor index; std is the sample one (n - 1), as the official code's
    torch ``.std()``; a positive's centre is more than 0.01 px inside every gt side; an anchor claimed by
    several gts goes to the highest IoU, then the lowest gt index.
    """
    anchor_list = anchors.tolist()
    centres = [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in anchor_list]
    codes = [BACKGROUND] * len(anchor_list)
    claims = {}
    if gt_boxes.shape[0] and anchor_list:
        iou = box_iou(gt_boxes, anchors).tolist()
        for g, (gx1, gy1, gx2, gy2) in enumerate(gt_boxes.tolist()):
            gcx, gcy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
            candidates, start = [], 0
            for count in counts:
                level = range(start, start + count)
                by_distance = sorted(level, key=lambda a: ((centres[a][0] - gcx) ** 2 + (centres[a][1] - gcy) ** 2, a))
                candidates += by_distance[:min(topk, count)]
                start += count
            values = [iou[g][a] for a in candidates]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            for a in candidates:
                cx, cy = centres[a]
                if iou[g][a] >= mean + std and min(cx - gx1, cy - gy1, gx2 - cx, gy2 - cy) > 0.01:
                    claims.setdefault(a, []).append(g)
        for a, gts in claims.items():
            codes[a] = max(gts, key=lambda g: (iou[g][a], -g))
    if ignore_boxes is not None:
        for a, (x1, y1, x2, y2) in enumerate(anchor_list):
            for cx1, cy1, cx2, cy2 in ignore_boxes.tolist():
                inter = max(0.0, min(x2, cx2) - max(x1, cx1)) * max(0.0, min(y2, cy2) - max(y1, cy1))
                if codes[a] == BACKGROUND and inter / ((x2 - x1) * (y2 - y1)) > ignore_iof_thr:
                    codes[a] = IGNORE
    return torch.tensor(codes, dtype=torch.long)


def grid(size, stride, extent, per_location=1, size_step=0.0):
    """Square anchors on a stride grid, cell-centred, location-major (``per_location`` sizes per cell)."""
    centres = torch.arange(stride / 2, extent, stride)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], dim=-1).repeat_interleave(per_location, dim=0)
    sizes = (size + size_step * torch.arange(per_location, dtype=torch.float32)).repeat(len(centres) // per_location)
    return torch.cat([centres - sizes[:, None] / 2, centres + sizes[:, None] / 2], dim=-1)


def pyramid(extent=64, strides=(8, 16, 32), octave=4.0, per_location=1, size_step=0.0):
    """All levels' anchors (A, 4) and the counts per level. The default: 64 + 16 + 4 anchors of sizes
    32, 64, 128, centres 4 + 8i, 8 + 16i and 16 + 32i; index of a level-1 anchor = 8 * row + column."""
    levels = [grid(octave * s, s, extent, per_location, size_step * s) for s in strides]
    return torch.cat(levels), [len(level) for level in levels]


def positives(codes):
    return {a: int(codes[a]) for a in torch.nonzero(codes >= 0).flatten().tolist()}


def test_contract():
    assigner = ATSSAssigner()
    assert assigner.topk == 9 and assigner.ignore_iof_thr == 0.5
    anchors, counts = pyramid()
    codes = assigner.assign(anchors, counts, torch.tensor([[16.0, 16.0, 48.0, 48.0]]))
    assert codes.dtype == torch.long and codes.shape == (len(anchors),)


def test_centre_between_anchors():
    # gt centre (32, 32) is a level-1 cell corner: four anchors tie at distance sqrt(32), each with
    # IoU 28^2 / (2 * 32^2 - 28^2) = 784 / 1264. The other candidates: 5 of the 8 level-1 anchors at
    # distance sqrt(160) (IoU 28 * 20 / (2048 - 560)), 4 level-2 anchors containing the gt (1024 / 4096),
    # 5 level-2 anchors at distance sqrt(640) (32 * 24 / (5120 - 768)) and all 4 level-3 anchors (1024 / 16384).
    anchors, counts = pyramid()
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    values = [784 / 1264] * 4 + [560 / 1488] * 5 + [0.25] * 4 + [768 / 4352] * 5 + [1024 / 16384] * 4
    threshold = statistics.mean(values) + statistics.stdev(values)
    assert 560 / 1488 < threshold < 784 / 1264
    codes = ATSSAssigner().assign(anchors, counts, gt)
    assert positives(codes) == {27: 0, 28: 0, 35: 0, 36: 0}  # the four anchors around the corner
    assert (codes[codes < 0] == BACKGROUND).all()
    assert torch.equal(codes, reference_assign(anchors, counts, gt))


def test_tiny_box_gets_the_anchor_whose_centre_is_inside():
    # A 2 x 2 box centred on the level-1 anchor at (28, 28) (index 27): every candidate contains it, so the
    # IoUs are 4 / 1024 (9 level-1 candidates), 4 / 4096 (9 level-2) and 4 / 16384 (all 4 level-3 anchors).
    anchors, counts = pyramid()
    values = [4 / 1024] * 9 + [4 / 4096] * 9 + [4 / 16384] * 4
    assert statistics.mean(values) + statistics.stdev(values) < 4 / 1024
    codes = ATSSAssigner().assign(anchors, counts, torch.tensor([[27.0, 27.0, 29.0, 29.0]]))
    assert positives(codes) == {27: 0}  # all nine level-1 candidates pass the IoU test; one centre is inside
    # Shifted so that no anchor centre lies inside it, the same box gets no positive (the centre rule).
    codes = ATSSAssigner().assign(anchors, counts, torch.tensor([[29.0, 29.0, 31.0, 31.0]]))
    assert positives(codes) == {}


def test_competing_gts_go_to_the_highest_iou():
    anchors, counts = pyramid()
    # gt0 alone: anchors 27, 28, 35, 36 (IoU 784 / 1264 = 0.620 each). gt1 = anchor 27 exactly: alone it
    # takes 19, 26, 27, 28, 35. Anchor 27: IoU 1 with gt1 beats 0.620. Anchors 28 = [20, 12, 52, 44] and
    # 35 = [12, 20, 44, 52]: IoU 24 * 32 / (2048 - 768) = 0.6 with gt1 loses to 0.620 with gt0.
    gt0, gt1 = [16.0, 16.0, 48.0, 48.0], [12.0, 12.0, 44.0, 44.0]
    assert positives(ATSSAssigner().assign(anchors, counts, torch.tensor([gt0]))) == {27: 0, 28: 0, 35: 0, 36: 0}
    alone = ATSSAssigner().assign(anchors, counts, torch.tensor([gt1]))
    assert positives(alone) == {a: 0 for a in (19, 26, 27, 28, 35)}
    both = ATSSAssigner().assign(anchors, counts, torch.tensor([gt0, gt1]))
    assert positives(both) == {19: 1, 26: 1, 27: 1, 28: 0, 35: 0, 36: 0}
    swapped = ATSSAssigner().assign(anchors, counts, torch.tensor([gt1, gt0]))  # the IoU decides, not the order
    assert positives(swapped) == {19: 0, 26: 0, 27: 0, 28: 1, 35: 1, 36: 1}
    # Exactly equal IoUs: the lower gt index wins.
    twins = ATSSAssigner().assign(anchors, counts, torch.tensor([gt0, gt0]))
    assert positives(twins) == {27: 0, 28: 0, 35: 0, 36: 0}


def test_threshold_uses_the_sample_std():
    # Three levels of one anchor each (fewer than k = 9: each contributes all it has). IoUs 0.6, 0.4, 0:
    # mean + sample std = 0.639 rejects the 0.6 anchor (the population std, 0.583, would accept it).
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 4.0], [20.0, 20.0, 30.0, 30.0]])
    values = box_iou(gt, anchors)[0].tolist()
    mean = statistics.mean(values)
    assert mean + statistics.pstdev(values) < values[0] < mean + statistics.stdev(values)
    assert ATSSAssigner().assign(anchors, [1, 1, 1], gt).tolist() == [BACKGROUND] * 3
    # IoUs 0.9, 0.4, 0: threshold 0.884, the first anchor is positive.
    anchors[0, 3] = 9.0
    assert ATSSAssigner().assign(anchors, [1, 1, 1], gt).tolist() == [0, BACKGROUND, BACKGROUND]
    # Equal IoUs: std 0 and the threshold equals their IoU; >= keeps them all (centres inside).
    row = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 10.0, 10.0] for i in range(6)])  # centres x = 5, 15, ...
    codes = ATSSAssigner(topk=2).assign(row, [6], torch.tensor([[10.0, 0.0, 30.0, 10.0]]))
    assert codes.tolist() == [BACKGROUND, 0, 0, BACKGROUND, BACKGROUND, BACKGROUND]  # IoU 0.5, 0.5
    # A single candidate in all: std taken as 0, the anchor passes its own IoU.
    assert ATSSAssigner().assign(anchors[:1], [1], gt).tolist() == [0]


def test_level_with_fewer_anchors_than_k_and_empty_levels():
    anchors, counts = pyramid(extent=64, strides=(8, 16, 32, 64))  # the last level has 1 anchor, the third 4
    assert counts == [64, 16, 4, 1]
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0], [2.0, 40.0, 30.0, 62.0]])
    codes = ATSSAssigner().assign(anchors, counts, gt)
    assert torch.equal(codes, reference_assign(anchors, counts, gt))
    assert positives(codes).keys() >= {27, 28, 35, 36}
    # An empty level in the list changes nothing; topk above every level's size takes all anchors.
    with_empty = ATSSAssigner().assign(anchors, [64, 0, 16, 4, 1], gt)
    assert torch.equal(with_empty, codes)
    everything = ATSSAssigner(topk=100).assign(anchors, counts, gt)
    assert torch.equal(everything, reference_assign(anchors, counts, gt, topk=100))


def test_no_ground_truth_is_all_background():
    anchors, counts = pyramid()
    assigner = ATSSAssigner()
    assert (assigner.assign(anchors, counts, torch.zeros(0, 4)) == BACKGROUND).all()
    codes = assigner.assign_batched(anchors, counts,
                                    PaddedTargets.from_boxes(torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool)))
    assert codes.shape == (3, len(anchors)) and (codes == BACKGROUND).all()
    padded = torch.tensor([[16.0, 16.0, 48.0, 48.0], [12.0, 12.0, 44.0, 44.0]]).expand(2, 2, 4)
    codes = assigner.assign_batched(anchors, counts,
                                    PaddedTargets.from_boxes(padded, torch.zeros(2, 2, dtype=torch.bool)))
    assert (codes == BACKGROUND).all()


def test_padding_slots_never_match_and_indices_stay_the_slots():
    anchors, counts = pyramid()
    gt0, gt1, gt2 = [16.0, 16.0, 48.0, 48.0], [12.0, 12.0, 44.0, 44.0], [2.0, 2.0, 20.0, 30.0]
    # Image 0: slot 1 is invalid yet holds the box that would win anchor 27 (IoU 1); image 1: empty.
    boxes = torch.tensor([[gt0, gt1, gt2], [gt1, gt1, gt1]])
    valid = torch.tensor([[True, False, True], [False, False, False]])
    codes = ATSSAssigner().assign_batched(anchors, counts, PaddedTargets.from_boxes(boxes, valid))
    single = ATSSAssigner().assign(anchors, counts, torch.tensor([gt0, gt2]))
    expected = torch.where(single == 1, 2, single)  # per-image index 1 is slot 2
    assert torch.equal(codes[0], expected) and (codes[0] != 1).all() and codes[0][27] == 0
    assert (codes[1] == BACKGROUND).all()


def test_crowd_region_ignores_background_but_not_positives():
    anchors, counts = pyramid()
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    crowd = torch.tensor([[0.0, 32.0, 64.0, 64.0]])  # the lower half, overlapping the gt's positives 35, 36
    codes = ATSSAssigner().assign(anchors, counts, gt, ignore_boxes=crowd)
    assert positives(codes) == {27: 0, 28: 0, 35: 0, 36: 0}
    # Level-1 anchors (index 8 * row + column): (28, 44) = [12, 28, 44, 60] has IoF 28 / 32 > 0.5, ignored;
    # (20, 36) = [4, 20, 36, 52]: 20 / 32 > 0.5, ignored; (28, 20) = [12, 4, 44, 36]: 4 / 32, background.
    assert codes[5 * 8 + 3] == IGNORE and codes[4 * 8 + 2] == IGNORE and codes[2 * 8 + 3] == BACKGROUND
    assert torch.equal(codes, reference_assign(anchors, counts, gt, ignore_boxes=crowd))
    # Without ground truths the region still applies; an invalid crowd slot does nothing.
    no_gt = PaddedTargets.from_boxes(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), crowd.expand(2, 1, 4),
                                     torch.tensor([[True], [False]]))
    codes = ATSSAssigner().assign_batched(anchors, counts, no_gt)
    assert torch.equal(codes[0], reference_assign(anchors, counts, torch.zeros(0, 4), ignore_boxes=crowd))
    assert (codes[0] == IGNORE).any() and (codes[1] == BACKGROUND).all()
    empty_crowd = ATSSAssigner().assign(anchors, counts, gt, ignore_boxes=torch.zeros(0, 4))
    assert torch.equal(empty_crowd, ATSSAssigner().assign(anchors, counts, gt))


def random_boxes(count, extent, generator, min_size=1, max_size=60):
    """Integer boxes: centres and squared distances are exact in fp32, as in the reference's float64."""
    wh = torch.randint(min_size, max_size + 1, (count, 2), generator=generator)
    xy = (torch.rand(count, 2, generator=generator) * (extent - wh + 1)).floor()
    return torch.cat([xy, xy + wh], dim=-1).float()


@pytest.mark.parametrize("seed", range(4))
def test_random_padded_batches_equal_per_image_and_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    extent = 128
    anchors, counts = pyramid(extent=extent, strides=(8, 16, 32, 64, 128), octave=8.0)  # 256 + 64 + 16 + 4 + 1
    num_per_image = [0, 1, 6, 13]
    max_count = max(num_per_image)
    gt_boxes = torch.zeros(len(num_per_image), max_count, 4)
    gt_valid = torch.zeros(len(num_per_image), max_count, dtype=torch.bool)
    per_image = []
    for b, count in enumerate(num_per_image):
        boxes = random_boxes(count, extent, g, max_size=90)
        if count > 2:
            boxes[1] = boxes[0]  # exact duplicates: equal IoUs, the lower index wins
            boxes[2] = anchors[27]  # exactly an anchor
        per_image.append(boxes)
        gt_boxes[b, :count] = boxes
        gt_valid[b, :count] = True
        gt_boxes[b, count:] = random_boxes(max_count - count, extent, g)  # real-looking padding
    crowd = random_boxes(len(num_per_image), extent, g, min_size=20, max_size=60).unsqueeze(1)  # (B, 1, 4)
    assigner = ATSSAssigner()
    codes = assigner.assign_batched(anchors, counts, PaddedTargets.from_boxes(gt_boxes, gt_valid, crowd, None))
    assert codes.shape == (len(num_per_image), len(anchors))
    for b, boxes in enumerate(per_image):
        single = assigner.assign(anchors, counts, boxes, ignore_boxes=crowd[b])
        assert torch.equal(codes[b], single)
        assert torch.equal(single, reference_assign(anchors, counts, boxes, ignore_boxes=crowd[b]))
        assert codes[b].max() < max(len(boxes), 1)
        if len(boxes):
            assert (codes[b] >= 0).any()


@pytest.mark.parametrize("seed", range(3))
def test_two_anchors_per_location_with_top18(seed):
    # The EFL improved baseline: 2 anchors per location (sizes 6 and 8 strides), ATSS top 18. The two anchors
    # of a location share a centre, so distances tie in pairs and candidates come location by location.
    g = torch.Generator().manual_seed(100 + seed)
    extent = 128
    anchors, counts = pyramid(extent=extent, strides=(8, 16, 32, 64), octave=6.0, per_location=2, size_step=2.0)
    assert counts == [512, 128, 32, 8] and torch.equal(anchors[1, :2] - anchors[0, :2], torch.tensor([-8.0, -8.0]))
    boxes = random_boxes(8, extent, g, min_size=4, max_size=100)
    boxes[0] = anchors[2 * 27 + 1]  # exactly the larger anchor at level-1 location 27
    codes = ATSSAssigner(topk=18).assign(anchors, counts, boxes)
    assert torch.equal(codes, reference_assign(anchors, counts, boxes, topk=18))
    assert codes[2 * 27 + 1] == 0
    padded = PaddedTargets.from_boxes(boxes.expand(2, -1, -1), torch.tensor([[True] * 8, [True] * 4 + [False] * 4]))
    batched = ATSSAssigner(topk=18).assign_batched(anchors, counts, padded)
    assert torch.equal(batched[0], codes)
    assert torch.equal(batched[1], reference_assign(anchors, counts, boxes[:4], topk=18))


def test_inputs_with_grad_and_other_dtypes():
    anchors, counts = pyramid()
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0], [2.0, 40.0, 30.0, 62.0]], requires_grad=True)
    codes = ATSSAssigner().assign(anchors, counts, gt)
    assert not codes.requires_grad
    expected = reference_assign(anchors, counts, gt.detach())
    assert torch.equal(codes, expected)
    assert torch.equal(ATSSAssigner().assign(anchors.double(), counts, gt.detach().double()), expected)
    assert torch.equal(ATSSAssigner().assign(anchors.half(), counts, gt.detach().half()), expected)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ATSSAssigner(topk=0)
    assigner = ATSSAssigner()
    anchors, counts = pyramid()
    with pytest.raises(ValueError):  # counts do not add up to A
        assigner.assign(anchors, counts[:-1], torch.zeros(1, 4))
    with pytest.raises(ValueError):
        assigner.assign_batched(anchors, counts,
                                PaddedTargets.from_boxes(torch.zeros(2, 4), torch.ones(2, dtype=torch.bool)))
    with pytest.raises(ValueError):
        assigner.assign_batched(anchors, counts,
                                PaddedTargets.from_boxes(torch.zeros(1, 2, 4), torch.ones(1, 3, dtype=torch.bool)))
    with pytest.raises(ValueError):
        assigner.assign_batched(anchors, counts, PaddedTargets.from_boxes(
            torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool), torch.zeros(3, 1, 4), None))
