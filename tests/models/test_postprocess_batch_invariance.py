"""Post-processing does not depend on the batch: an image's raw outputs predicted alone, or inside a larger padded
canvas beside another image, give bit-identical detections once each image is clipped to its own size.

The outputs are made by hand, per level and location, for the RetinaNet, ATSS (centerness) and GFL heads of the
quick-start configs: image A (40 x 56 after the resize) alone in its 64 x 64 canvas, and the same values in the
top-left cells of a 96 x 128 canvas whose other cells hold what a network would see there (padding, scored below
the threshold) and a second, random image B. Anchors sit at fixed strides, so cell (y, x) of a level is the same
anchor in both canvases.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms

from detector.config import load_config
from detector.models import DenseOutputs, build_model
from detector.models.postprocess import grouped_nms

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"retinanet": "configs/quickstart.yaml", "atss": "configs/quickstart_atss.yaml",
           "gfl": "configs/quickstart_gfl.yaml"}
STRIDES = (8, 16, 32, 64, 128)
SIZE_A, CANVAS_A = (40, 56), (64, 64)
SIZE_B, CANVAS_AB = (96, 120), (96, 128)


def build_head_model(name: str, *overrides: str):
    cfg = load_config(ROOT / CONFIGS[name], ["model.backbone.depth=18", "model.head.num_convs=0", *overrides])
    return build_model(cfg).eval()


def grid(canvas: tuple[int, int]) -> list[tuple[int, int]]:
    return [(math.ceil(canvas[0] / s), math.ceil(canvas[1] / s)) for s in STRIDES]


def random_maps(canvas, num_anchors, num_classes, reg_bins, generator) -> list[dict]:
    """Per level: logits (H, W, A, K), regression (H, W, A, 4[, bins]) and quality (H, W, A) of one image."""
    maps = []
    for height, width in grid(canvas):
        reg_shape = (height, width, num_anchors, 4) + ((reg_bins,) if reg_bins else ())
        regression = torch.randn(*reg_shape, generator=generator) * 0.5
        if reg_bins:  # GFL side distributions peaked on the first bins: boxes of 1-3 strides per side
            regression = regression * 4 - torch.arange(reg_bins) * 0.7
        maps.append({"logits": torch.randn(height, width, num_anchors, num_classes, generator=generator) * 2 - 2.5,
                     "regression": regression,
                     "quality": torch.randn(height, width, num_anchors, generator=generator)})
    return maps


def embed(small: list[dict], canvas) -> list[dict]:
    """The small canvas's maps in the top-left cells of a larger canvas; the other cells are padding, whose
    scores stay far below any threshold."""
    maps = []
    for level, (height, width) in zip(small, grid(canvas)):
        big = {key: torch.zeros((height, width) + value.shape[2:]) for key, value in level.items()}
        big["logits"].fill_(-30.0)
        h, w = level["logits"].shape[:2]
        for key, value in level.items():
            big[key][:h, :w] = value
        maps.append(big)
    return maps


def dense_outputs(model, images_maps: list[list[dict]], canvas, gfl: bool) -> DenseOutputs:
    """Flatten per-level maps of a batch of images into the head's (B, N, ...) layout, location-major."""
    def cat(key):
        return torch.cat([torch.stack([maps[level][key] for maps in images_maps]).flatten(1, 3)
                          for level in range(len(STRIDES))], dim=1)

    features = [torch.zeros(1, 1, h, w) for h, w in grid(canvas)]
    anchors, counts = model.anchor_generator(features, canvas)
    logits, regression = cat("logits"), cat("regression")
    quality = None if gfl or model.head.quality_logits is None else cat("quality")
    return DenseOutputs(logits, regression, quality, anchors, counts, canvas)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_alone_and_batched_in_a_larger_canvas_give_identical_detections(name):
    model = build_head_model(name, "model.test.score_thr=0.05", "model.test.topk_per_level=300",
                             "model.test.max_dets=60")
    head, gfl = model.head, name == "gfl"
    generator = torch.Generator().manual_seed(7)
    num_anchors = model.anchor_generator.num_anchors_per_location
    bins = head.reg_max + 1 if gfl else 0
    maps_a = random_maps(CANVAS_A, num_anchors, head.num_classes, bins, generator)
    maps_b = random_maps(CANVAS_AB, num_anchors, head.num_classes, bins, generator)
    if name == "atss":
        assert head.quality_logits is not None  # the centerness branch takes part in the scores
    alone = head.predict(dense_outputs(model, [maps_a], CANVAS_A, gfl), [SIZE_A])[0]
    batched = head.predict(dense_outputs(model, [embed(maps_a, CANVAS_AB), maps_b], CANVAS_AB, gfl),
                           [SIZE_A, SIZE_B])
    assert len(alone["boxes"]) == 60 and len(batched[1]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(alone[key], batched[0][key]), key
    assert float(alone["boxes"][:, 2].max()) <= SIZE_A[1] and float(alone["boxes"][:, 3].max()) <= SIZE_A[0]
    assert float(alone["boxes"][:, 2].max()) == SIZE_A[1]  # some boxes did reach past the image: clipped


def test_canvas_clipping_kept_two_copies_that_per_image_clipping_merges():
    """Two boxes of one class in image A (56 px wide): [20, 10, 100, 30] and [20, 10, 56, 30]. Clipped to A's own
    width both are [20, 10, 56, 30] (IoU 1): NMS keeps one. Clipped to the 128 px batch canvas, as before, the
    first stays 80 px wide and their IoU is 36 / 80 = 0.45 < 0.5: both were kept."""
    model = build_head_model("retinanet", "model.test.score_thr=0.05", "model.test.nms_iou=0.5")
    head = model.head
    targets = torch.tensor([[20.0, 10.0, 100.0, 30.0], [20.0, 10.0, 56.0, 30.0]])
    results = {}
    for canvas, sizes in ((CANVAS_A, [SIZE_A]), (CANVAS_AB, [SIZE_A, SIZE_B])):
        features = [torch.zeros(1, 1, h, w) for h, w in grid(canvas)]
        anchors, counts = model.anchor_generator(features, canvas)
        num_images, num_anchors = len(sizes), len(anchors)
        logits = torch.full((num_images, num_anchors, head.num_classes), -30.0)
        regression = torch.zeros(num_images, num_anchors, 4)
        chosen = torch.tensor([3, 5])  # two P3 anchors (location 0, anchors 3 and 5)
        logits[0, chosen, 2] = torch.tensor([3.0, 2.0])  # class 2, scores 0.95 and 0.88
        regression[0, chosen] = head.box_coder.encode(targets, anchors[chosen])
        outputs = DenseOutputs(logits, regression, None, anchors, counts, canvas)
        results[canvas] = (head.predict(outputs, sizes)[0], head.predict(outputs)[0])  # own size / canvas
    (alone, alone_canvas), (batched, batched_canvas) = results[CANVAS_A], results[CANVAS_AB]
    torch.testing.assert_close(alone["boxes"], torch.tensor([[20.0, 10.0, 56.0, 30.0]]), atol=1e-4, rtol=0)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(alone[key], batched[key]), key
    assert len(batched_canvas["boxes"]) == 2  # the old rule: the batch partner's canvas kept a duplicate
    torch.testing.assert_close(batched_canvas["boxes"], targets, atol=1e-4, rtol=0)
    assert len(alone_canvas["boxes"]) == 1  # and alone, clipped to its 64 px canvas: IoU 36 / 44 = 0.82, merged


def test_image_sizes_are_checked():
    model = build_head_model("retinanet")
    features = [torch.zeros(1, 1, h, w) for h, w in grid(CANVAS_A)]
    anchors, counts = model.anchor_generator(features, CANVAS_A)
    outputs = DenseOutputs(torch.zeros(1, len(anchors), 6), torch.zeros(1, len(anchors), 4), None, anchors, counts,
                           CANVAS_A)
    with pytest.raises(ValueError, match="one .h, w. pair per image"):
        model.head.predict(outputs, [SIZE_A, SIZE_A])
    with pytest.raises(ValueError, match="do not fit the padded input"):
        model.head.predict(outputs, [(65, 10)])


def test_nms_decisions_do_not_depend_on_the_other_groups():
    """Boxes [0, 0, 10, 10] and [3.33, 0, 13.33, 10] have IoU 6.67 / 13.33 = 0.5004 > 0.5: NMS keeps one. In a
    batch whose groups (image x class ids, here 1200 and 1201 as with LVIS's 1203 classes) and largest box (1000
    px) make torchvision's batched_nms shift them by 1201 * 1001 in float32, 3.33 rounds to 3.375 (the float32
    step there is 1/8) and the IoU to 0.4953: it keeps both. grouped_nms shifts in float64, exactly."""
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.33, 0.0, 13.33, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    other = torch.tensor([[900.0, 900.0, 1000.0, 1000.0]])
    batch_boxes, batch_scores = torch.cat([other, pair]), torch.cat([torch.tensor([0.95]), scores])
    groups = torch.tensor([1200, 1201, 1201])
    assert grouped_nms(pair, scores, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert grouped_nms(batch_boxes, batch_scores, groups, 0.5).tolist() == [0, 1]  # the pair's first box only
    assert batched_nms(batch_boxes, batch_scores, groups, 0.5).tolist() == [0, 1, 2]  # float32: both kept
