"""torchvision RetinaNet (v1, v2) -> focaldet: same detections, and the written config + checkpoint evaluate.

torchvision's models are built with random weights whose BatchNorm statistics / affine, GroupNorm affine and
classifier biases are randomised, so every mapped tensor matters. Images are 96 x 160 and torchvision's
transform is set to that size, so neither side resizes; focaldet gets the same pixels normalised by hand.
96 is not a multiple of 64 or 128: P6 / P7 grids have torchvision's steps of 96 // 2 = 48 and 96 // 1 = 96.
"""

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.models.detection import (RetinaNet_ResNet50_FPN_Weights, retinanet_resnet50_fpn,
                                          retinanet_resnet50_fpn_v2)

from detector.config import load_config
from detector.conversion.torchvision_retinanet import (COCO_CATEGORY_IDS, ConversionError, convert_state_dict,
                                                       torchvision_model_config, upgrade_legacy_keys)
from detector.models import build_model
from detector.runtime.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 96, 160
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomised_torchvision(version: str) -> torch.nn.Module:
    builder = retinanet_resnet50_fpn if version == "v1" else retinanet_resnet50_fpn_v2
    torch.manual_seed(0 if version == "v1" else 1)
    model = builder(weights=None, weights_backbone=None, min_size=HEIGHT, max_size=WIDTH)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                if version == "v1":
                    module.eps = 0.0  # as torchvision evaluates its published v1 weights (overwrite_eps)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.head.classification_head.cls_logits.bias.uniform_(-4.0, 0.0)  # many scores above 0.05
        model.head.regression_head.bbox_reg.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_models():
    return {version: randomised_torchvision(version) for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(5)
    return (torch.rand(2, 3, HEIGHT, WIDTH) * 255).round() / 255  # exactly representable as 8-bit PNGs


def assert_same_detections(expected: dict, got: dict, box_tol: float = 1e-3):
    """One-to-one: the same number of detections, each with a partner of the same label, score (1e-5) and box
    (``box_tol``). Matched as sets: scores equal to ~1e-6 may come out in either order."""
    assert len(expected["boxes"]) == len(got["boxes"]) > 50
    close = ((expected["boxes"][:, None] - got["boxes"][None]).abs().amax(dim=2) < box_tol) \
        & ((expected["scores"][:, None] - got["scores"][None]).abs() < 1e-5) \
        & (expected["labels"][:, None] == got["labels"][None])  # (N, N)
    used = torch.zeros(len(got["boxes"]), dtype=torch.bool)
    for i in range(len(expected["boxes"])):
        partners = (close[i] & ~used).nonzero()
        assert len(partners), f"no match for detection {i}: {expected['boxes'][i].tolist()}, " \
            f"{float(expected['scores'][i])}, label {int(expected['labels'][i])}"
        used[partners[0, 0]] = True


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_model_gives_torchvision_detections(torchvision_models, images, version):
    tv_model = torchvision_models[version]
    converted, detected = convert_state_dict(tv_model.state_dict(), class_ids=None)  # all 91 outputs
    assert detected == version
    model = build_model(torchvision_model_config(version, num_classes=91)).eval()
    model.load_state_dict(converted)
    model.head.inference = dataclasses.replace(model.head.inference, max_dets=tv_model.detections_per_img)  # 300
    image = images[:1]  # one image here; the end-to-end test below runs a batch of two
    with torch.no_grad():
        expected = tv_model(list(image))
        got = model((image - MEAN) / STD)
    assert_same_detections(expected[0], got[0])


def test_weight_name_conversion_then_eval_tool_end_to_end(torchvision_models, images, tmp_path, monkeypatch):
    """--weights NAME through torchvision's cache, then tools/eval.py on a COCO-format val set of the images."""
    tv_model = copy.deepcopy(torchvision_models["v1"])
    unused = [i for i in range(91) if i not in COCO_CATEGORY_IDS]  # background and the 10 unused ids:
    with torch.no_grad():  # never above the threshold in a trained model; made so here
        logits = tv_model.head.classification_head.cls_logits
        logits.weight.view(9, 91, -1)[:, unused] = 0.0
        logits.bias.view(9, 91)[:, unused] = -10.0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(tv_model.state_dict(), cache / Path(RetinaNet_ResNet50_FPN_Weights.COCO_V1.url).name)

    out = tmp_path / "converted" / "retinanet_tv.pt"
    assert load_tool("convert_torchvision").main(
        ["--weights", "RetinaNet_ResNet50_FPN_Weights.COCO_V1", "--out", str(out)]) == 0
    config_path = out.with_suffix(".yaml")
    cfg = load_config(config_path)
    assert cfg.model.num_classes == 80 and cfg.model.neck.p6_from == "p5" and cfg.model.anchors.strides_from_input
    assert cfg.model.init_checkpoint == str(out.resolve()) and cfg.model.backbone.weights is None
    assert load_checkpoint(out)["label_to_category_id"] == list(COCO_CATEGORY_IDS)

    # a COCO-format val set: the 80 COCO categories, the two images
    (tmp_path / "val").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in COCO_CATEGORY_IDS]}
    for index, image in enumerate(images):
        Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "val" / f"{index}.png")
        coco["images"].append({"id": index + 1, "file_name": f"{index}.png", "height": HEIGHT, "width": WIDTH})
        coco["annotations"].append({"id": index + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                                    "bbox": [10, 10, 40, 30], "area": 1200})
    (tmp_path / "val.json").write_text(json.dumps(coco))
    results = tmp_path / "results.json"
    opts = [f"data.val.ann_file={tmp_path / 'val.json'}", f"data.val.img_dir={tmp_path / 'val'}",
            f"data.test_min_size={HEIGHT}", f"data.test_max_size={WIDTH}", "data.num_workers=0",
            "data.test_batch_size=2", "runtime.device=cpu"]
    assert load_tool("eval").main([str(config_path), str(out), "--out", str(results), "--no-progress",
                                   "--opts", *opts]) == 0

    detections = json.loads(results.read_text())
    with torch.no_grad():
        expected = tv_model(list(images))
    for image_id, e in enumerate(expected, start=1):
        mine = sorted((d for d in detections if d["image_id"] == image_id), key=lambda d: -d["score"])
        e = {key: value[:cfg.model.test.max_dets] for key, value in e.items()}  # the best 100 of 300
        boxes = torch.tensor([d["bbox"] for d in mine])
        got = {"boxes": torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1),
               "scores": torch.tensor([d["score"] for d in mine]),
               "labels": torch.tensor([d["category_id"] for d in mine])}
        # category ids = torchvision's labels; result files round boxes to 0.01 px (x2 = x + w: 0.01)
        assert_same_detections(e, got, box_tol=0.0101)


def test_refuses_foreign_or_mismatched_state_dicts(torchvision_models, tmp_path):
    state = torchvision_models["v2"].state_dict()
    with pytest.raises(ConversionError, match="not v1"):
        convert_state_dict(state, version="v1")
    extra = dict(state, **{"head.extra.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match=r"unmatched keys \['head.extra.weight'\]"):
        convert_state_dict(extra)
    partial = {k: v for k, v in state.items() if k != "backbone.body.layer3.2.bn2.running_var"}
    with pytest.raises(ConversionError, match=r"missing keys \['backbone.body.layer3.2.bn2.running_var'\]"):
        convert_state_dict(partial)
    with pytest.raises(ConversionError, match="extra_blocks.p6"):
        convert_state_dict({"conv1.weight": torch.zeros(64, 3, 7, 7)})
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    assert load_tool("convert_torchvision").main([str(foreign), "--out", str(tmp_path / "x.pt")]) == 1
    assert not (tmp_path / "x.pt").exists()
    assert load_tool("convert_torchvision").main(["--weights", "ResNet50_Weights.IMAGENET1K_V1",
                                                  "--out", str(tmp_path / "x.pt")]) == 1


def test_legacy_key_names_are_upgraded():
    """The published v1 file predates Conv2dNormActivation: head convs conv.0/2/4/6, FPN blocks without .0."""
    legacy = {"head.classification_head.conv.4.weight": 1, "head.regression_head.conv.6.bias": 2,
              "backbone.fpn.inner_blocks.2.weight": 3, "backbone.fpn.layer_blocks.0.bias": 4,
              "head.classification_head.conv.1.0.weight": 5, "backbone.fpn.inner_blocks.1.0.bias": 6}
    assert upgrade_legacy_keys(legacy) == {
        "head.classification_head.conv.2.0.weight": 1, "head.regression_head.conv.3.0.bias": 2,
        "backbone.fpn.inner_blocks.2.0.weight": 3, "backbone.fpn.layer_blocks.0.0.bias": 4,
        "head.classification_head.conv.1.0.weight": 5, "backbone.fpn.inner_blocks.1.0.bias": 6}


def test_coco_category_ids_match_torchvision_metadata():
    categories = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert list(COCO_CATEGORY_IDS) == [i for i, name in enumerate(categories) if name not in ("__background__", "N/A")]


def test_class_names_survive_conversion(torchvision_models, images, tmp_path):
    """The converted checkpoint carries torchvision's COCO names and category ids: Detector.from_checkpoint needs
    no config, and names each detection as torchvision's weights.meta["categories"] names its label."""
    from detector import Detector
    from detector.conversion.torchvision_retinanet import convert_torchvision

    tv_model = copy.deepcopy(torchvision_models["v1"])
    unused = [i for i in range(91) if i not in COCO_CATEGORY_IDS]  # never detected by the published weights
    with torch.no_grad():
        tv_model.head.classification_head.cls_logits.weight.view(9, 91, -1)[:, unused] = 0.0
        tv_model.head.classification_head.cls_logits.bias.view(9, 91)[:, unused] = -10.0
    source = tmp_path / "tv.pth"
    torch.save(tv_model.state_dict(), source)
    out, _, _ = convert_torchvision(str(source), tmp_path / "model.pt")
    meta = load_checkpoint(out)["meta"]
    categories = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert meta["category_ids"] == list(COCO_CATEGORY_IDS) and meta["model_type"] == "retinanet"
    assert meta["class_names"][:3] == ["person", "bicycle", "car"] and meta["class_names"][-1] == "toothbrush"
    assert meta["class_names"] == [categories[i] for i in COCO_CATEGORY_IDS]

    det = Detector.from_checkpoint(out, device="cpu", overrides=[f"data.test_min_size={HEIGHT}",
                                                                  f"data.test_max_size={WIDTH}"])
    with torch.no_grad():
        expected = tv_model(list(images))
    for e, got in zip(expected, det.predict(list(images))):
        e = {key: value[:100] for key, value in e.items()}  # the best 100 of torchvision's 300
        assert got.class_names == [categories[label] for label in e["labels"].tolist()]
        assert got.category_ids == e["labels"].tolist()  # torchvision's labels are COCO category ids
        assert_same_detections(e, {"boxes": got.boxes, "scores": got.scores,
                                   "labels": torch.tensor(got.category_ids)})
