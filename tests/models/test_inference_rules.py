"""Score threshold, ranking and final score of the dense heads' inference, on hand-made logits.

The official rules (sfzhang15/ATSS atss_core/modeling/rpn/atss/inference.py; United-Perception
up/tasks/det/models/postprocess/retina_post_process.py and roi_predictor.py):
- ATSS: keep (anchor, class) pairs with sigmoid(cls) > 0.05, rank them by cls x centerness, top 1000 per level,
  final score sqrt(cls x centerness);
- EFL improved baseline: score sigmoid(cls) x sigmoid(IoU), no threshold, top min(6000, the level's anchors).
focaldet's former rule (still ``score_thr_on: combined``) thresholds sqrt(cls x quality) itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from detector.assigners import MaxIoUAssigner
from detector.boxes import DeltaBoxCoder
from detector.config import load_config
from detector.losses import FocalLoss, GIoULoss
from detector.models.heads.anchor_head import AnchorHead
from detector.models.heads.common import TowerSpec
from detector.models.outputs import DenseOutputs
from detector.models.postprocess import InferenceParams, fuse_quality, select_candidates


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def head(**inference) -> AnchorHead:
    return AnchorHead(num_classes=1, num_anchors=1, num_levels=1, tower=TowerSpec(in_channels=8, num_convs=0),
                      assigner=MaxIoUAssigner(), box_coder=DeltaBoxCoder(), cls_loss=FocalLoss(),
                      box_loss=GIoULoss(), quality_branch="centerness", inference=InferenceParams(**inference))


def outputs(pairs: list[tuple[float, float]]) -> DenseOutputs:
    """One image, one level, one class: anchor i is a 10 px box at x = 20 i (none overlap, so NMS keeps all)
    with class probability and quality ``pairs[i]``, and zero deltas (each box is its anchor)."""
    count = len(pairs)
    anchors = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(count)])
    cls = torch.tensor([[[logit(p)] for p, _ in pairs]])  # (1, N, 1)
    quality = torch.tensor([[logit(q) for _, q in pairs]])  # (1, N)
    return DenseOutputs(cls, torch.zeros(1, count, 4), quality, anchors, [count], (20, 20 * count))


def kept(detections: dict) -> dict[int, float]:
    """Anchor index (from the box's x1) -> final score."""
    return {int(box[0]) // 20: float(score) for box, score in zip(detections["boxes"], detections["scores"])}


# cls 0.04 with centerness 0.9: sqrt(0.036) = 0.190 passes 0.05, but the class probability does not;
# cls 0.5 with centerness 0.001: the class passes, sqrt(0.0005) = 0.0224 does not.
HAND_CASES = [(0.04, 0.9), (0.5, 0.001)]


def test_combined_threshold_keeps_low_class_with_high_centerness():
    [detections] = head(score_thr=0.05, score_thr_on="combined").predict(outputs(HAND_CASES))
    assert kept(detections) == pytest.approx({0: math.sqrt(0.04 * 0.9)})


def test_class_threshold_is_the_official_atss_rule():
    [detections] = head(score_thr=0.05, score_thr_on="class").predict(outputs(HAND_CASES))
    assert kept(detections) == pytest.approx({1: math.sqrt(0.5 * 0.001)})


@pytest.mark.parametrize("fusion, expected", [("sqrt", math.sqrt(0.3 * 0.9)), ("product", 0.3 * 0.9)])
def test_ranking_by_combined_score_and_final_score_value(fusion, expected):
    """Both pass the class threshold; with room for one candidate per level the combined score decides:
    (0.3, 0.9) -> 0.27 beats (0.6, 0.1) -> 0.06 although its class probability is lower."""
    model = head(score_thr=0.05, score_thr_on="class", quality_fusion=fusion, topk_per_level=1)
    [detections] = model.predict(outputs([(0.6, 0.1), (0.3, 0.9)]))
    assert kept(detections) == pytest.approx({1: expected})
    [both] = head(score_thr=0.05, score_thr_on="class", quality_fusion=fusion).predict(
        outputs([(0.6, 0.1), (0.3, 0.9)]))
    assert both["scores"].tolist() == pytest.approx([expected, 0.06 if fusion == "product" else math.sqrt(0.06)])


def test_threshold_and_topk_are_batched_per_image():
    """Two images in one call: each keeps its own candidates, as each alone would."""
    a, b = outputs([(0.04, 0.9), (0.5, 0.001), (0.7, 0.5)]), outputs([(0.9, 0.9), (0.01, 0.99), (0.06, 0.2)])
    pair = a._replace(pred_logits=torch.cat([a.pred_logits, b.pred_logits]),
                      pred_quality=torch.cat([a.pred_quality, b.pred_quality]),
                      pred_regression=torch.cat([a.pred_regression, b.pred_regression]))
    model = head(score_thr=0.05, score_thr_on="class", topk_per_level=2)
    together = model.predict(pair)
    assert [kept(d) for d in together] == [kept(model.predict(a)[0]), kept(model.predict(b)[0])]
    assert kept(together[0]) == pytest.approx({1: math.sqrt(0.0005), 2: math.sqrt(0.35)})
    assert kept(together[1]) == pytest.approx({0: 0.9, 2: math.sqrt(0.012)})


def test_select_candidates_threshold_input_and_cap_by_anchors():
    # one image, levels of 2 and 1 anchors, 3 classes
    scores = torch.tensor([[[0.9, 0.8, 0.1], [0.7, 0.2, 0.6], [0.5, 0.4, 0.3]]])
    class_probs = torch.tensor([[[0.9, 0.01, 0.9], [0.9, 0.9, 0.01], [0.9, 0.9, 0.9]]])
    params = InferenceParams(score_thr=0.05, topk_per_level=4)
    plain = select_candidates(scores, [2, 1], params)
    assert plain.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    gated = select_candidates(scores, [2, 1], params, threshold_scores=class_probs)
    # level 0 drops (0, class 1) and (1, class 2), whose class probability is 0.01
    assert list(zip(gated.anchor_idx.tolist(), gated.labels.tolist())) == [(0, 0), (1, 0), (1, 1), (0, 2), (2, 0),
                                                                        (2, 1), (2, 2)]
    capped = select_candidates(scores, [2, 1], InferenceParams(score_thr=0.05, topk_per_level=4,
                                                               topk_capped_at_anchors=True))
    assert capped.scores.tolist() == pytest.approx([0.9, 0.8, 0.5])  # at most 2, then 1 candidate per level


def test_fuse_quality():
    probs, quality = torch.tensor([[[0.5, 0.2]]]), torch.tensor([[0.08]])
    assert fuse_quality(probs, None, "sqrt") is probs
    assert fuse_quality(probs, quality, "sqrt").flatten().tolist() == pytest.approx([0.2, math.sqrt(0.016)])
    assert fuse_quality(probs, quality, "product").flatten().tolist() == pytest.approx([0.04, 0.016])


@pytest.mark.parametrize("name, rule", [
    ("atss/atss_r50_fpn_1x_coco.yaml", ("class", "sqrt", False, 0.05, 1000)),
    ("quickstart_atss.yaml", ("class", "sqrt", False, 0.05, 1000)),
    ("efl/efl_r50_fpn_2x_lvis_rfs.yaml", ("combined", "product", True, 0.0, 6000)),
    ("efl/fl_r101_fpn_2x_lvis_rfs.yaml", ("combined", "product", True, 0.0, 6000)),
    ("retinanet/retinanet_r50_fpn_1x_coco.yaml", ("combined", "sqrt", False, 0.05, 1000)),
    ("gfl/gfl_r50_fpn_1x_coco.yaml", ("combined", "sqrt", False, 0.05, 1000)),
])
def test_configs_follow_their_official_inference(name, rule):
    test = load_config(f"configs/{name}").model.test
    assert (test.score_thr_on, test.quality_fusion, test.topk_capped_at_anchors, test.score_thr,
            test.topk_per_level) == rule


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="score_thr_on"):
        InferenceParams(score_thr_on="quality")
    with pytest.raises(ValueError, match="quality_fusion"):
        InferenceParams(quality_fusion="mean")
