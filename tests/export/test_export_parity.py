"""Exported graphs give the eager model's detections: for the RetinaNet, ATSS, GFL and EFL heads (tiny backbones), the
ONNX model run by onnxruntime and the TorchScript module against ``model(images, image_sizes=...)`` on the same
normalised, padded batches at three input sizes, with images of different sizes in one batch (each clipped to its
own size): the same count and labels, boxes within 1e-3 px, scores within 1e-4."""

from __future__ import annotations

import pytest
import torch

from detector.config import load_config
from detector.export import export_detector
from detector.models import build_model

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TINY = ["model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn",
        "model.backbone.frozen_stages=0", "model.neck.out_channels=64", "model.head.feat_channels=64",
        "model.head.num_convs=1", "model.num_classes=3", "model.test.score_thr=0.02", "model.test.max_dets=50",
        "model.test.topk_per_level=200"]
CONFIGS = {"retinanet": "configs/retinanet/retinanet_r50_fpn_1x_coco.yaml",
           "atss": "configs/atss/atss_r50_fpn_1x_coco.yaml",
           "gfl": "configs/gfl/gfl_r50_fpn_1x_coco.yaml",
           # the EFL baseline: IoU branch, p q fusion, top-k capped at the level's anchors (a rank mask in the graph)
           "efl": "configs/efl/efl_r50_fpn_2x_lvis_rfs.yaml"}
# (padded H, W) and the two images' own sizes inside it: square, wide, tall; the second image smaller
CASES = [((64, 64), [(64, 64), (50, 40)]), ((96, 160), [(96, 160), (70, 130)]), ((160, 96), [(150, 96), (160, 60)])]
METADATA = {"producer": "focaldet-test"}


def tiny_model(config: str, *extra: str):
    torch.manual_seed(0)
    model = build_model(load_config(config, TINY + list(extra))).eval()
    with torch.no_grad():  # spread the scores and boxes so that many boxes pass the threshold and NMS has work
        model.head.cls_logits.bias.normal_(-1.0, 1.0)
        for name in ("box_deltas", "box_bins", "quality_logits"):
            if getattr(model.head, name, None) is not None:
                getattr(model.head, name).bias.normal_(0.0, 1.0 if name == "box_deltas" else 3.0)
    return model


def batch(size, image_sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(image_sizes), 3, *size)
    for i, (h, w) in enumerate(image_sizes):  # padding stays zero, as the collator leaves it
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=generator) * 2
    return images, torch.tensor(image_sizes, dtype=torch.int64)


def assert_same_detections(expected: list[dict], boxes, scores, labels, num_detections):
    boxes, scores, labels, num_detections = (torch.as_tensor(v) for v in (boxes, scores, labels, num_detections))
    assert num_detections.tolist() == [len(e["scores"]) for e in expected]
    assert sum(num_detections.tolist()) > 10  # the comparison covers real detections
    for b, want in enumerate(expected):
        count = len(want["scores"])
        assert torch.equal(labels[b, :count], want["labels"])
        torch.testing.assert_close(boxes[b, :count], want["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(scores[b, :count], want["scores"], atol=1e-4, rtol=0)
        assert (labels[b, count:] == -1).all() and (scores[b, count:] == 0).all()  # empty slots


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    model = tiny_model(CONFIGS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    # traced with one image (the command's default): the batch axis is free all the same
    onnx_path = export_detector(model, folder / "model.onnx", "onnx", (96, 96), METADATA, dynamic=True)
    script_path = export_detector(model, folder / "model.ts", "torchscript", (96, 96), METADATA)
    return model, onnx_path, script_path


@pytest.mark.parametrize("case", range(len(CASES)))
def test_onnx_and_torchscript_match_the_eager_model(exported, case):
    model, onnx_path, script_path = exported
    size, image_sizes = CASES[case]
    images, sizes = batch(size, image_sizes, seed=case)
    with torch.no_grad():
        expected = model(images, image_sizes=image_sizes)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["boxes", "scores", "labels", "num_detections"]
    assert_same_detections(expected, *session.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy()}))
    scripted = torch.jit.load(str(script_path))
    with torch.no_grad():
        assert_same_detections(expected, *scripted(images, sizes))


def test_dynamic_onnx_takes_one_image_and_a_larger_batch(exported):
    model, onnx_path, _ = exported
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for image_sizes in ([(128, 64)], [(128, 64), (100, 64), (128, 30)]):
        images, sizes = batch((128, 64), image_sizes, seed=7)
        with torch.no_grad():
            expected = model(images, image_sizes=image_sizes)
        boxes, scores, labels, count = session.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy()})
        assert boxes.shape == (len(image_sizes), 50, 4)
        assert_same_detections(expected, boxes, scores, labels, count)


def test_static_onnx_has_fixed_shapes_and_empty_results(tmp_path):
    """Without --dynamic the input shape is fixed; a threshold no score passes gives zero detections, not an
    error (the graph's NMS branch for no boxes)."""
    model = tiny_model(CONFIGS["retinanet"], "model.test.score_thr=0.999")
    path = export_detector(model, tmp_path / "static.onnx", "onnx", (64, 96), METADATA)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == [1, 3, 64, 96]
    images, sizes = batch((64, 96), [(64, 96)], seed=3)
    boxes, scores, labels, count = session.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy()})
    assert count.tolist() == [0] and boxes.shape == (1, 50, 4) and (labels == -1).all()
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"images": batch((96, 96), [(96, 96)], 0)[0].numpy(), "image_sizes": sizes.numpy()})


def test_metadata_travels_with_both_formats(tmp_path):
    import json

    import onnx
    model = tiny_model(CONFIGS["gfl"])
    meta = {"class_names": json.dumps(["a", "b", "c"]), "mean": "[0.5, 0.5, 0.5]"}
    onnx_path = export_detector(model, tmp_path / "m.onnx", "onnx", (64, 64), meta)
    assert not model.training  # the exporter leaves the model as it found it, ready to predict
    assert {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props} == meta
    files = {"focaldet.json": ""}
    torch.jit.load(str(export_detector(model, tmp_path / "m.ts", "torchscript", (64, 64), meta)), _extra_files=files)
    assert json.loads(files["focaldet.json"]) == meta
