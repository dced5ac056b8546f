"""Drawing on hand-made images: box pixels exactly on the edges, thresholds, colours, denormalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from detector.visualization import (add_caption, class_color, denormalize, detections_by_image, draw_boxes,
                                    draw_gt_and_detections, hstack_panels, save_png, upscale)
from detector.visualization.draw import CAPTION_HEIGHT, LABEL_HEIGHT, PANEL_GAP


def black(height: int = 40, width: int = 50) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def pixels_of(image: torch.Tensor, color) -> np.ndarray:
    """(H, W) bool mask of the pixels that have exactly ``color``."""
    return (image.permute(1, 2, 0).numpy() == np.array(color, dtype=np.uint8)).all(axis=-1)


def outline_mask(height, width, x1, y1, x2, y2, thickness=1) -> np.ndarray:
    """Hand-made expectation: a rectangle outline with inclusive corners (x1, y1), (x2, y2), grown inwards."""
    mask = np.zeros((height, width), dtype=bool)
    for t in range(thickness):
        mask[y1 + t, x1 + t:x2 - t + 1] = True
        mask[y2 - t, x1 + t:x2 - t + 1] = True
        mask[y1 + t:y2 - t + 1, x1 + t] = True
        mask[y1 + t:y2 - t + 1, x2 - t] = True
    return mask


@pytest.mark.parametrize("thickness", [1, 2])
def test_box_pixels_exactly_on_the_edges_and_nowhere_else(thickness):
    image = black()
    drawn = draw_boxes(image, torch.tensor([[10.0, 5.0, 30.0, 25.0]]), torch.tensor([2]), width=thickness,
                       show_labels=False)
    expected = outline_mask(40, 50, 10, 5, 30, 25, thickness)
    assert np.array_equal(pixels_of(drawn, class_color(2)), expected)
    changed = (drawn != image).any(dim=0).numpy()
    assert np.array_equal(changed, expected)  # nothing else touched
    assert torch.equal(image, black())  # the input is not modified


def test_fractional_and_out_of_image_boxes_are_floored_and_clipped():
    drawn = draw_boxes(black(), torch.tensor([[10.7, 5.2, 80.0, 25.9]]), torch.tensor([0]), width=1,
                       show_labels=False)
    expected = outline_mask(40, 50, 10, 5, 49, 25)  # x2 = 80 clipped to the last column 49
    assert np.array_equal(pixels_of(drawn, class_color(0)), expected)


def test_labels_sit_on_a_box_coloured_patch_above_the_box_or_inside_at_the_top():
    boxes, labels = torch.tensor([[4.0, 16.0, 96.0, 36.0], [10.0, 2.0, 50.0, 30.0]]), torch.tensor([1, 2])
    for box, label in zip(boxes, labels):
        drawn = draw_boxes(black(40, 100), box[None], label[None], class_names=["cat", "dog", "bird"],
                           scores=torch.tensor([0.87]))
        plain = draw_boxes(black(40, 100), box[None], label[None], show_labels=False)
        ys, xs = np.nonzero((drawn != plain).any(dim=0).numpy())  # the label's pixels
        x1, y1 = int(box[0]), int(box[1])
        assert len(ys) > 20
        if y1 >= LABEL_HEIGHT:  # room above: the patch ends just above the box's top edge
            assert ys.min() == y1 - LABEL_HEIGHT and ys.max() == y1 - 1 and xs.min() == x1
        else:  # inside, within the 2-pixel edges
            assert ys.min() == y1 + 2 and ys.max() == y1 + 1 + LABEL_HEIGHT and xs.min() == x1 + 2
        patch = pixels_of(drawn, class_color(int(label)))[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert patch.mean() > 0.5  # mostly the box colour, with black text


def test_empty_and_degenerate_boxes_draw_nothing():
    assert torch.equal(draw_boxes(black(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)), black())
    assert torch.equal(draw_boxes(black(), torch.tensor([[10.0, 10.0, 10.4, 30.0]]), torch.tensor([0])), black())


def test_class_colors_are_distinct_and_stable():
    colors = [class_color(k) for k in range(80)]
    assert len(set(colors)) == 80
    assert class_color(3) == colors[3]
    with pytest.raises(ValueError):
        class_color(-1)


def test_denormalize_undoes_the_normalisation():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8)
    normalised = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(image))
    assert torch.equal(denormalize(normalised, mean, std), image)


def test_gt_and_detections_panels_and_score_threshold():
    image = black(40, 160)  # wide enough for one-line captions
    gt_boxes, gt_labels = torch.tensor([[2.0, 3.0, 20.0, 18.0]]), torch.tensor([0])
    pred_boxes = torch.tensor([[25.0, 20.0, 45.0, 35.0], [3.0, 22.0, 15.0, 36.0]])
    pred_scores, pred_labels = torch.tensor([0.9, 0.2]), torch.tensor([3, 4])
    out = draw_gt_and_detections(image, gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels,
                                 score_thr=0.5, title="image 7")
    assert out.shape == (3, CAPTION_HEIGHT + 40, 2 * 160 + PANEL_GAP)
    left = out[:, CAPTION_HEIGHT:, :160]
    right = out[:, CAPTION_HEIGHT:, 160 + PANEL_GAP:]
    assert pixels_of(left, class_color(0))[3, 2:21].all()  # gt top edge on the left
    assert pixels_of(left, class_color(0))[4:19, 2].all()  # and its left edge
    assert not pixels_of(right, class_color(0)).any()  # no gt on the right
    assert pixels_of(right, class_color(3))[20, 25:46].all()  # the 0.9 detection's top edge
    assert pixels_of(right, class_color(3))[35, 25:46].all()  # and its bottom edge
    assert not pixels_of(right, class_color(4)).any()  # the 0.2 detection is below the threshold
    assert not pixels_of(left, class_color(3)).any()
    big = draw_gt_and_detections(image, gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels,
                                 score_thr=0.5, scale=2)
    assert big.shape == (3, CAPTION_HEIGHT + 80, 2 * 320 + PANEL_GAP)
    assert pixels_of(big[:, CAPTION_HEIGHT:, :320], class_color(0))[6, 4:41].all()  # boxes scale too


def test_caption_wraps_and_panels_stack(tmp_path):
    image = black(10, 60)
    one = add_caption(image, "short")
    assert one.shape == (3, CAPTION_HEIGHT + 10, 60)
    many = add_caption(image, "a much longer caption that cannot fit on one line of sixty pixels")
    assert many.shape[1] >= 10 + 3 * CAPTION_HEIGHT and (many.shape[1] - 10) % CAPTION_HEIGHT == 0
    stacked = hstack_panels([black(10, 5), black(6, 7)], gap=2)
    assert stacked.shape == (3, 10, 14)
    assert (stacked[:, :, 5:7] == 255).all() and (stacked[:, 6:, 7:] == 255).all()
    path = save_png(one, tmp_path / "sub" / "x.png")
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(path)), one.permute(1, 2, 0).numpy())


def test_upscale_repeats_pixels():
    image = torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3)
    big = upscale(image, 2)
    assert big.shape == (1, 4, 6)
    assert big[0, 3, 5] == 5 and big[0, 0, 1] == 0 and big[0, 2, 2] == 4
    with pytest.raises(ValueError):
        upscale(image, 0)


def test_detections_by_image_from_lists_and_columns():
    results = [{"image_id": 5, "category_id": 20, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5},
               {"image_id": 9, "category_id": 10, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9},
               {"image_id": 5, "category_id": 10, "bbox": [5.0, 5.0, 1.0, 1.0], "score": 0.7}]
    grouped = detections_by_image(results, {10: 0, 20: 1})
    assert torch.equal(grouped[5]["boxes"], torch.tensor([[1.0, 2.0, 4.0, 6.0], [5.0, 5.0, 6.0, 6.0]]))
    assert grouped[5]["labels"].tolist() == [1, 0] and grouped[5]["scores"].tolist() == [0.5, pytest.approx(0.7)]
    columns = {key: np.array([r[key] for r in results]) for key in ("image_id", "category_id", "bbox", "score")}
    from_columns = detections_by_image(columns, {10: 0, 20: 1}, image_ids=[9])
    assert list(from_columns) == [9]
    assert torch.equal(from_columns[9]["boxes"], grouped[9]["boxes"])
