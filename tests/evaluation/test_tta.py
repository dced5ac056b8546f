"""Test-time augmentation: views, un-flip and rescale arithmetic against hand-computed boxes, the merge, batching
by view shape, the single identity view being the model itself, and the evaluation.tta config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from detector.config import ConfigError, load_config
from detector.evaluation.tta import TestTimeAugmentation as TTAModel
from detector.evaluation.tta import _View, build_tta, unflip_boxes
from detector.models.build import build_model

ROOT = Path(__file__).resolve().parents[2]
CORNER = (2.0, 4.0, 10.0, 12.0)  # the fixed box the detector below reports in every view's own pixels


class BrightRegionDetector(nn.Module):
    """A detector whose outputs are known: in every image, the box around its pixels brighter than 0.5 in
    channel 0 (score 0.9, class 0), and the fixed box CORNER in the input's pixels (score 0.6, class 1). Records
    the shape of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.batch_shapes: list[tuple[int, ...]] = []

    def forward(self, images, image_sizes=None):
        self.batch_shapes.append(tuple(images.shape))
        bright = images[:, 0] > 0.5  # (B, H, W)
        cols, rows = bright.any(1).float(), bright.any(2).float()  # (B, W), (B, H)
        x1, y1 = cols.argmax(1), rows.argmax(1)
        x2, y2 = cols.shape[1] - cols.flip(1).argmax(1), rows.shape[1] - rows.flip(1).argmax(1)
        bright_boxes = torch.stack([x1, y1, x2, y2], 1).float()  # (B, 4)
        corner = torch.tensor([CORNER])
        return [{"boxes": torch.cat([box[None], corner]), "scores": torch.tensor([0.9, 0.6]),
                 "labels": torch.tensor([0, 1])} for box in bright_boxes]


def tta(model, scales, flips=(False, True), max_size=1000):
    return TTAModel(model, scales=scales, flips=flips, max_size=max_size, size_divisor=8, nms_iou=0.5,
                    max_dets=100).eval()


def image_with_square(height, width, top, bottom, left, right):
    image = torch.zeros(3, height, width)
    image[:, top:bottom, left:right] = 1.0
    return image


def as_rows(detections):
    """(box, score, label) rows sorted, to compare regardless of the order of equal scores."""
    return sorted((tuple(b.tolist()), round(float(s), 6), int(lab))
                  for b, s, lab in zip(detections["boxes"], detections["scores"], detections["labels"]))


def test_unflip_boxes_by_hand():
    boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0], [0.0, 0.0, 40.0, 20.0]])
    assert torch.equal(unflip_boxes(boxes, 40), torch.tensor([[30.0, 4.0, 38.0, 12.0], [0.0, 0.0, 40.0, 20.0]]))


def test_flip_merge_on_a_symmetric_image_gives_the_mirrored_and_merged_boxes():
    # image 0: a square centred left-right (columns 10..30 of 40); image 1: one off-centre (columns 4..14)
    images = torch.stack([image_with_square(20, 40, 5, 15, 10, 30), image_with_square(20, 40, 2, 8, 4, 14)])
    model = BrightRegionDetector()
    merged = tta(model, scales=[20])(images, image_sizes=[(20, 40), (20, 40)])
    # one forward pass: both images' two views, padded to (24, 40)
    assert model.batch_shapes == [(4, 3, 24, 40)]
    # the square is found at the same place in both views once un-flipped: one box after the merge; the corner
    # box comes back as is from the plain view and mirrored, 40 - (10, 2) = (30, 38), from the flipped one
    assert as_rows(merged[0]) == [((2.0, 4.0, 10.0, 12.0), 0.6, 1), ((10.0, 5.0, 30.0, 15.0), 0.9, 0),
                                  ((30.0, 4.0, 38.0, 12.0), 0.6, 1)]
    assert as_rows(merged[1]) == [((2.0, 4.0, 10.0, 12.0), 0.6, 1), ((4.0, 2.0, 14.0, 8.0), 0.9, 0),
                                  ((30.0, 4.0, 38.0, 12.0), 0.6, 1)]


def test_scales_are_rescaled_to_the_image_by_hand():
    image = image_with_square(20, 40, 5, 15, 10, 30)[None]
    model = BrightRegionDetector()
    merged = tta(model, scales=[20, 40])(image, image_sizes=[(20, 40)])
    # scale 40 doubles the image to 40 x 80; bilinear upsampling puts the square's edges between pixels of values
    # 0.25 and 0.75, so it spans columns 20..60 and rows 10..30 there, (10, 5, 30, 15) once halved: merged.
    # The corner box (2, 4, 10, 12) of the 40 x 80 views is (1, 2, 5, 6) in the image, and mirrored in width 80,
    # (70, 4, 78, 12), it is (35, 2, 39, 6).
    assert sorted(model.batch_shapes) == [(2, 3, 24, 40), (2, 3, 40, 80)]
    assert as_rows(merged[0]) == [((1.0, 2.0, 5.0, 6.0), 0.6, 1), ((2.0, 4.0, 10.0, 12.0), 0.6, 1),
                                  ((10.0, 5.0, 30.0, 15.0), 0.9, 0), ((30.0, 4.0, 38.0, 12.0), 0.6, 1),
                                  ((35.0, 2.0, 39.0, 6.0), 0.6, 1)]


def test_view_sizes_follow_the_max_size_rule_and_boxes_map_back_by_hand():
    augment = tta(BrightRegionDetector(), scales=[10, 40], max_size=60)
    views = augment.make_views(torch.zeros(1, 3, 20, 40), [(20, 40)])
    # shorter side 10 -> (10, 20); shorter side 40 would make the longer 80 > 60, so the longer is 60: (30, 60)
    assert [(view.size, view.flip) for view in views] == [((10, 20), False), ((10, 20), True), ((30, 60), False),
                                                          ((30, 60), True)]
    output = {"boxes": torch.tensor([[6.0, 3.0, 30.0, 27.0]]), "scores": torch.tensor([0.5]),
              "labels": torch.tensor([0])}
    plain = augment.to_image_frame(output, _View(0, (30, 60), False, torch.zeros(0)), (20, 40))
    mirrored = augment.to_image_frame(output, _View(0, (30, 60), True, torch.zeros(0)), (20, 40))
    # x * 40 / 60, y * 20 / 30; mirrored first: (60 - 30, 3, 60 - 6, 27) = (30, 3, 54, 27)
    assert torch.allclose(plain["boxes"], torch.tensor([[4.0, 2.0, 20.0, 18.0]]))
    assert torch.allclose(mirrored["boxes"], torch.tensor([[20.0, 2.0, 36.0, 18.0]]))


def test_an_image_gets_the_same_merged_detections_alone_and_batched_with_another_size():
    small = image_with_square(12, 40, 2, 10, 6, 20)
    images = torch.zeros(2, 3, 24, 40)
    images[0, :, :20] = image_with_square(20, 40, 5, 15, 10, 30)
    images[1, :, :12] = small
    model = BrightRegionDetector()
    batched = tta(model, scales=[20, 30])(images, image_sizes=[(20, 40), (12, 40)])
    alone = tta(BrightRegionDetector(), scales=[20, 30])(small[None], image_sizes=[(12, 40)])
    assert as_rows(batched[1]) == as_rows(alone[0])
    # views of different padded shapes never share a forward pass
    assert all(shape[0] == 2 for shape in model.batch_shapes) and len(model.batch_shapes) == 4


TINY = ["model.backbone.weights=null", "model.backbone.depth=18", "model.head.num_convs=1",
        "model.head.feat_channels=64", "model.neck.out_channels=32", "model.test.score_thr=0.001",
        "data.test_min_size=64", "data.test_max_size=96"]


def test_one_plain_view_at_the_test_size_is_the_model_itself():
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*TINY, "evaluation.tta.flips=[false]"])
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 64, 96)
    images[1, :, :, 80:] = 0
    sizes = [(64, 96), (64, 80)]  # as the test resize makes them: shorter side 64 (data.test_min_size)
    with torch.inference_mode():
        plain = model(images, image_sizes=sizes)
        augmented = build_tta(model, cfg.evaluation.tta, cfg).eval()(images, image_sizes=sizes)
    assert sum(len(d["scores"]) for d in plain) > 20
    for expected, got in zip(plain, augmented):
        assert torch.equal(expected["boxes"], got["boxes"]) and torch.equal(expected["scores"], got["scores"])
        assert torch.equal(expected["labels"], got["labels"])


def test_tta_is_off_by_default_and_in_every_shipped_config():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", TINY)
    model = build_model(cfg)
    assert cfg.evaluation.tta is None and build_tta(model, cfg.evaluation.tta, cfg) is model
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if not path.name.startswith("_"):
            assert load_config(path).evaluation.tta is None, path


def test_config_defaults_and_resolution():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*TINY, "evaluation.tta={}"])
    assert cfg.evaluation.tta.flips == [False, True] and cfg.evaluation.tta.scales is None
    wrapped = build_tta(build_model(cfg), cfg.evaluation.tta, cfg)
    assert (wrapped.scales, wrapped.flips, wrapped.max_size) == ([64], [False, True], 96)
    assert (wrapped.nms_iou, wrapped.max_dets) == (cfg.model.test.nms_iou, cfg.model.test.max_dets)


@pytest.mark.parametrize("override, message", [
    ("evaluation.tta.scales=[0, 800]", "'evaluation.tta.scales'"),
    ("evaluation.tta.scales=[800, 800]", "distinct positive sizes"),
    ("evaluation.tta.scales=[]", "'evaluation.tta.scales'"),
    ("evaluation.tta.scales=[640.5]", "'evaluation.tta.scales' (set in --opts"),
    ("evaluation.tta.flips=[0, 1]", "'evaluation.tta.flips[0]' (set in --opts evaluation.tta.flips=[0, 1]) must be "
                                    "bool"),
    ("evaluation.tta.flips=[true, true]", "'evaluation.tta.flips'"),
    ("evaluation.tta.flips=[]", "'evaluation.tta.flips'"),
    ("evaluation.tta.max_size=0", "'evaluation.tta.max_size'"),
    ("evaluation.tta.scale=[800]", "did you mean 'evaluation.tta.scales'"),
    ("evaluation.tta=true", "'evaluation.tta'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "quickstart.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)
