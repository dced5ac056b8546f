"""Detector: every input kind, conversions, original-pixel boxes against a hand computation, score thresholds,
result formats, and the same detections whatever the batching."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from detector import Detector
from detector.data.image_io import ImageReadError, decode_image_file


def assert_same_detections(expected, got, box_tol: float = 1e-3, score_tol: float = 1e-5):
    """Same count and labels; boxes within ``box_tol`` px and scores within ``score_tol`` (the CPU's convolution
    kernels change results by ~1e-6 with the batch size)."""
    assert len(expected) == len(got) > 0
    assert torch.equal(expected.labels, got.labels)
    torch.testing.assert_close(got.scores, expected.scores, atol=score_tol, rtol=0)
    torch.testing.assert_close(got.boxes, expected.boxes, atol=box_tol, rtol=0)
    assert got.class_names == expected.class_names and got.category_ids == expected.category_ids


@pytest.fixture(scope="module")
def scene(trained) -> np.ndarray:
    """A 48 x 64 RGB crop of a synthetic val image (its longer side is the test size: no resize)."""
    files = sorted((trained.root / "syn" / "val").glob("*.png"))
    image = np.asarray(Image.open(files[0]).convert("RGB").resize((64, 64), Image.BILINEAR))
    return image[8:56].copy()  # (48, 64, 3)


def test_every_input_kind_gives_the_same_detections(det, scene, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    chw = torch.from_numpy(scene).permute(2, 0, 1)
    inputs = [str(path), path, Image.open(path), scene, chw, chw.float() / 255]
    results = det.predict(inputs)
    assert [r.image_size for r in results] == [(48, 64)] * len(inputs)
    assert results[0].source == str(path) and "ndarray" in results[3].source
    for result in results[1:]:
        assert_same_detections(results[0], result)
    assert_same_detections(results[0], det.predict(chw)[0])  # one input: still a list
    assert_same_detections(results[0], det.predict(torch.stack([chw, chw]))[1])  # a 4-D tensor is a batch


def test_gray_rgba_palette_16_bit_and_exif_are_converted(det, scene, tmp_path):
    gray = scene.mean(axis=2).round().astype(np.uint8)  # (48, 64)
    rgba = np.dstack([scene, np.full(scene.shape[:2], 90, np.uint8)])
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    palette = Image.fromarray(scene).convert("P")
    palette.save(tmp_path / "palette.png")
    sixteen = gray.astype(np.uint16) * 256 + np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "gray16.png")  # v >> 8 == gray
    exif_image = Image.fromarray(scene)
    exif = exif_image.getexif()
    exif[0x0112] = 6  # orientation 6: viewers turn the stored pixels 90 degrees clockwise
    exif_image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    stored = decode_image_file(tmp_path / "rotated.jpg", exif_orientation=False)  # (3, 48, 64) as stored
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    cases = [(tmp_path / "gray.png", gray3), (tmp_path / "rgba.png", scene),
             (tmp_path / "palette.png", np.asarray(palette.convert("RGB"))), (tmp_path / "gray16.png", gray3),
             (tmp_path / "rotated.jpg", torch.rot90(stored, k=-1, dims=(1, 2)))]
    results = det.predict([path for path, _ in cases] + [expected for _, expected in cases])
    for index in range(len(cases)):
        assert_same_detections(results[len(cases) + index], results[index])
    assert results[4].image_size == (64, 48)  # upright: the stored 48 x 64 pixels turned


def test_boxes_map_back_to_the_original_pixels_as_computed_by_hand(det, trained):
    """A 50 x 100 (h x w) image: shorter side 64 would make the longer 128 > 64, so the scale is 64 / 100 and the
    network sees 32 x 64 (already a multiple of 32); boxes scale back by 100 / 64 in x and 50 / 32 in y."""
    files = sorted((trained.root / "syn" / "val").glob("*.png"))
    image = torch.from_numpy(np.array(Image.open(files[1]).convert("RGB").resize((100, 50)))).permute(2, 0, 1)
    resized = F.resize(image, [32, 64], antialias=True)  # the resize the test pipeline makes, (3, 32, 64)
    mean = torch.tensor(det.config.data.mean).view(3, 1, 1)
    std = torch.tensor(det.config.data.std).view(3, 1, 1)
    network_input = ((resized.float() / 255 - mean) / std)[None]  # (1, 3, 32, 64): no padding needed
    with torch.inference_mode():
        output = det.model(network_input, image_sizes=[(32, 64)])[0]
    expected = output["boxes"] * torch.tensor([100 / 64, 50 / 32, 100 / 64, 50 / 32])
    expected = torch.minimum(expected.clamp(min=0), torch.tensor([100.0, 50.0, 100.0, 50.0]))
    result = det.predict(image)[0]
    assert result.image_size == (50, 100) and len(result) == len(expected) > 0
    torch.testing.assert_close(result.boxes, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.scores, output["scores"], atol=1e-6, rtol=0)
    assert float(result.boxes[:, 2].max()) <= 100 and float(result.boxes[:, 3].max()) <= 50


def test_an_image_alone_batched_with_larger_ones_and_at_any_batch_size(trained_head):
    """A 25 x 64 network input (padded to 32 x 64) predicted alone, between two 64 x 64 images at batch size 3,
    and at batch size 1: the same detections, because each image is padded to its own shape. Padded to 64 x 64
    with its partners, as a plain batch would, the same image scores differently (GroupNorm over the padding).
    For the RetinaNet, ATSS and GFL quick starts."""
    det = Detector.from_checkpoint(trained_head.checkpoint, device="cpu")
    files = sorted((trained_head.root / "syn" / "val").glob("*.png"))
    small = np.asarray(Image.open(files[2]).convert("RGB").resize((128, 50)))  # resized to (25, 64)
    large = [np.asarray(Image.open(f).convert("RGB").resize((64, 64))) for f in files[3:5]]
    alone = det.predict(small)[0]
    assert_same_detections(alone, det.predict([large[0], small, large[1]], batch_size=3)[1])
    assert_same_detections(alone, det.predict([large[0], small, large[1]], batch_size=1)[1])
    assert_same_detections(alone, det.predict([small, large[0], small], batch_size=2)[2])
    prepared = [det.prepare(image) for image in (large[0], small)]
    padded = torch.zeros(2, 3, 64, 64)
    for row, item in enumerate(prepared):
        padded[row, :, :item.image.shape[1], :item.image.shape[2]] = item.image
    with torch.inference_mode():
        canvas = det.model(padded, image_sizes=[item.img_size for item in prepared])[1]
    assert prepared[1].img_size == (25, 64)
    assert not torch.allclose(canvas["scores"][:10], alone.scores[:10], atol=1e-4)


def test_score_threshold(det, scene, caplog):
    everything = det.predict(scene)[0]
    assert float(everything.scores.min()) >= det.score_thr == pytest.approx(0.02)
    high = det.predict(scene, score_thr=0.2)[0]
    keep = everything.scores >= 0.2
    assert 0 < len(high) < len(everything) and torch.equal(high.scores, everything.scores[keep])
    with caplog.at_level(logging.WARNING, logger="detector.predict"):
        low = det.predict(scene, score_thr=0.001)[0]
    assert len(low) == len(everything) and "below the model's own threshold" in caplog.text


def test_to_dict_and_to_coco(det, scene):
    result = det.predict(scene, score_thr=0.1)[0]
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert np.allclose(as_dict["boxes"], result.boxes.numpy()) and as_dict["image_size"] == [48, 64]
    assert as_dict["class_names"] == [det.class_names[i] for i in result.labels.tolist()]
    coco = result.to_coco(image_id=7)
    assert len(coco) == len(result)
    for entry, box, score, category_id in zip(coco, result.boxes.tolist(), result.scores.tolist(),
                                              result.category_ids):
        x1, y1, x2, y2 = box
        assert entry["image_id"] == 7 and entry["category_id"] == category_id
        assert entry["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01) and entry["score"] == score


def test_unreadable_inputs_are_named(det, scene, tmp_path):
    with pytest.raises(ImageReadError, match=r"input 1: cannot read image .*missing\.png"):
        det.predict([scene, tmp_path / "missing.png"])
    with pytest.raises(ImageReadError, match=r"input 0: .*values in \[0, 1\].*divide by 255"):
        det.predict(torch.from_numpy(scene).permute(2, 0, 1).float())
    with pytest.raises(ImageReadError, match="uint8"):
        det.predict(scene.astype(np.float32))
