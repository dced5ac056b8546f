"""GFL Fig. 2: same-class best IoU and Pearson's r on hand cases."""

import math

import numpy as np
import pytest
import torch

from detector.analysis.score_iou import ScoreIoU, best_iou_same_class, pearson, plot_score_iou


def test_best_iou_same_class_by_hand():
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    gt_labels = torch.tensor([0, 1])
    pred_boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0],     # half of gt 0, same class: 0.5
                               [0.0, 0.0, 10.0, 10.0],    # exactly gt 0 but class 1: only gt 1 counts -> 0
                               [20.0, 20.0, 30.0, 30.0]])  # exactly gt 1, class 1: 1
    pred_labels = torch.tensor([0, 1, 1])
    iou = best_iou_same_class(pred_boxes, pred_labels, gt_boxes, gt_labels)
    assert iou.tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert best_iou_same_class(pred_boxes, pred_labels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) \
        .tolist() == [0.0, 0.0, 0.0]


def test_pearson():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    y = np.array([0.3, 0.2, 0.6, 0.7, 0.95])
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(5))) and math.isnan(pearson([1.0], [2.0]))


def test_correlation_above_filters_by_iou():
    # two confident false positives at low IoU; the three localised detections have score == IoU
    result = ScoreIoU(np.array([0.9, 0.1, 0.8, 0.6, 0.7]), np.array([0.1, 0.2, 0.8, 0.6, 0.7]), 1)
    r, count = result.correlation_above(0.5)
    assert count == 3 and r == pytest.approx(1.0)
    assert result.correlation == pytest.approx(np.corrcoef(result.scores, result.ious)[0, 1])
    assert result.correlation < 0.5


def test_plot_two_panels(tmp_path):
    rng = np.random.default_rng(0)
    a = ScoreIoU(rng.random(50), rng.random(50), 3)
    out = plot_score_iou([a, a], ["RetinaNet", "GFL"], tmp_path / "s.png", max_points=20)
    assert out.stat().st_size > 5000
