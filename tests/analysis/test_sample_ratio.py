"""EFL Fig. 2: per-category positive / negative counts on a hand layout; feature sizes vs the network."""

import numpy as np
import torch

from detector.analysis.sample_ratio import (SampleCounts, count_pos_neg_per_class, count_samples, feature_sizes,
                                            plot_sample_ratio)
from detector.assigners import MaxIoUAssigner
from detector.config import load_config
from detector.models import build_model
from detector.models.anchors import AnchorGenerator


def test_count_by_hand_codes():
    assigned = torch.tensor([[0, 1, -1, -2, 0], [-1, -1, 0, -2, -2]])  # two images, 5 anchors
    gt_labels = torch.tensor([[2, 0], [1, 0]])  # image 0: gt0 class 2, gt1 class 0; image 1: gt0 class 1
    pos, neg = count_pos_neg_per_class(assigned, gt_labels, num_classes=4)
    assert pos.tolist() == [1, 1, 2, 0]
    # 7 non-ignored anchors; every anchor that is not a positive of j is a negative of j
    assert neg.tolist() == [6, 6, 5, 7]


def test_count_samples_hand_layout():
    # One level, stride 8, one 8x8 anchor per location on a 16x16 input: anchors centred on (0,0), (8,0),
    # (0,8), (8,8). Class 1 sits exactly on anchor 3 (IoU 1); a class-0 box covers 45% of anchor 2 (IoU 0.45,
    # between 0.4 and 0.5: ignored); anchors 0 and 1 are background.
    generator = AnchorGenerator([8], [8.0], [1.0], [1.0])
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0], [0.0, 4.0, 4.0, 11.2]]),
                "labels": torch.tensor([1, 0]), "ignore_boxes": torch.zeros(0, 4)}]
    counts = count_samples(generator, MaxIoUAssigner(allow_low_quality_matches=False), [((16, 16), targets)],
                           num_classes=3)
    assert counts.positives.tolist() == [0, 1, 0]
    assert counts.negatives.tolist() == [3, 2, 3]
    assert counts.num_images == 1
    np.testing.assert_allclose(counts.ratio, [0, 0.5, 0])


def test_feature_sizes_match_the_network():
    cfg = load_config("configs/quickstart.yaml", ["model.head.num_convs=1", "model.head.feat_channels=32",
                                                  "model.neck.out_channels=32"])
    model = build_model(cfg).eval()
    for size in [(64, 96), (70, 100)]:  # 70 x 100 is no multiple of any stride: sizes round up
        with torch.no_grad():
            features = model.neck(model.backbone(torch.zeros(1, 3, *size)))
        assert [tuple(f.shape[-2:]) for f in features] == feature_sizes(size, model.anchor_generator.strides)


def test_plot_with_frequency_groups(tmp_path):
    counts = SampleCounts(np.array([10, 0, 3]), np.array([1000, 1000, 997]), 2)
    out = plot_sample_ratio(counts, np.array([5, 1, 9]), tmp_path / "ratio.png", frequency=["f", "r", "c"])
    assert out.stat().st_size > 5000
