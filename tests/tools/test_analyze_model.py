"""tools/analyze_model.py: parameter counts against torchvision's models and hand sums, FLOPs against
FlopCounterMode on torchvision's RetinaNet and against the convolution formula."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import RetinaNet_ResNet50_FPN_V2_Weights, RetinaNet_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNet, retinanet_resnet50_fpn_v2
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detector.config import load_config
from detector.models import build_model
from detector.models.analysis import analyze, count_flops, padded_size, parameter_stats

ROOT = Path(__file__).resolve().parents[2]
NO_WEIGHTS = ["model.backbone.weights=null"]
# torchvision's RetinaNet v1 in config terms: P6 from P5, 91 classes, its integer anchor sizes and grid rule
TORCHVISION_V1 = ["model.num_classes=91", "model.neck.p6_from=p5", "model.anchors.strides_from_input=true",
                  "model.anchors.sizes_per_level=[[32,40,50],[64,80,101],[128,161,203],[256,322,406],[512,645,812]]"]


def our_model(config: str, opts=()):
    return build_model(load_config(ROOT / config, NO_WEIGHTS + list(opts)))


def torchvision_v1(min_size: int, max_size: int) -> nn.Module:
    """retinanet_resnet50_fpn as its builder makes it for trained weights: frozen BN, 3 trainable stages."""
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, 91, min_size=min_size, max_size=max_size).eval()


def count(model: nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def test_retinanet_like_torchvision_v1_has_its_parameter_count_and_flops():
    tv_model = torchvision_v1(128, 160)  # 128 x 160 images: no resize, no padding
    assert count(tv_model) == (RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["num_params"], 33_792_599)
    ours = our_model("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml", TORCHVISION_V1)
    total = parameter_stats(ours, 0)[0]
    assert (total.params, total.trainable) == (34_014_999, 33_792_599)

    images = torch.rand(1, 3, 128, 160)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tv_model(list(images))
    rows, flops = analyze(ours, (128, 160), max_depth=1)
    assert flops == counter.get_total_flops() > 9e9
    assert sum(row.flops for row in rows[1:]) == flops  # backbone + neck + head (+ anchors: 0)


def test_retinanet_like_torchvision_v2_differs_by_its_trainable_batchnorm_only():
    """v2 trains BatchNorm (affine parameters); focaldet freezes it (buffers): the rest is equal."""
    tv_model = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)
    assert count(tv_model)[0] == RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1.meta["num_params"]
    bn_affine = sum(p.numel() for m in tv_model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    ours = our_model("configs/retinanet/retinanet_r50_fpn_1x_coco.yaml",
                     TORCHVISION_V1[:1] + TORCHVISION_V1[2:] + ["model.head.norm=gn", "model.loss_box.type=giou"])
    assert parameter_stats(ours, 0)[0].params == count(tv_model)[0] - bn_affine == 38_145_815


def r50_conv_params() -> tuple[int, int]:
    """ResNet-50 convolution weights (frozen BN has no parameters), all and outside the stem + layer1."""
    resnet = torchvision.models.resnet50(weights=None)
    convs = {n: p.numel() for n, p in resnet.named_parameters() if n.endswith("weight") and p.dim() == 4}
    frozen = sum(v for n, v in convs.items() if n.startswith(("conv1.", "layer1.")))
    return sum(convs.values()), sum(convs.values()) - frozen


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


@pytest.mark.parametrize("config", ["configs/atss/atss_r50_fpn_1x_coco.yaml", "configs/gfl/gfl_r50_fpn_1x_coco.yaml"])
def test_atss_and_gfl_counts_equal_a_hand_sum(config):
    backbone, backbone_trainable = r50_conv_params()
    neck = sum(conv(c, 256, 1) for c in (512, 1024, 2048)) + 3 * conv(256, 256, 3) + 2 * conv(256, 256, 3)  # P6 on P5
    towers = 2 * 4 * (conv(256, 256, 3, bias=False) + 2 * 256)  # conv + GroupNorm affine
    if "atss" in config:  # 1 anchor: 80 class logits, 4 deltas, 1 centerness; a scale per level
        outputs = conv(256, 80, 3) + conv(256, 4, 3) + conv(256, 1, 3) + 5
    else:  # 80 class logits, 4 x (16 + 1) distribution bins; a scale per level
        outputs = conv(256, 80, 3) + conv(256, 4 * 17, 3) + 5
    rows = {row.path: row for row in parameter_stats(our_model(config), 1)}
    assert (rows["backbone"].params, rows["backbone"].trainable) == (backbone, backbone_trainable)
    assert rows["neck"].params == neck
    assert rows["head"].params == towers + outputs
    assert rows[""].params == backbone + neck + towers + outputs
    assert rows[""].trainable == backbone_trainable + neck + towers + outputs


def test_flops_follow_the_convolution_formula():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 4, 1, stride=2)))
    total, per_module = count_flops(model, torch.rand(1, 3, 10, 10))
    first, second = 2 * 3 * 9 * 8 * 10 * 10, 2 * 8 * 1 * 4 * 5 * 5  # 2 * C_in * k^2 * C_out * H_out * W_out
    assert (total, per_module["0"], per_module["2"]) == (first + second, first, second)
    assert padded_size(800, 1333, 32) == (800, 1344) and padded_size(96, 96, 32) == (96, 96)


def test_cli_prints_the_table_and_totals(capsys):
    spec = importlib.util.spec_from_file_location("tool_analyze_model", ROOT / "tools" / "analyze_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["configs/quickstart.yaml", "--input-size", "64", "90", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    model = our_model("configs/quickstart.yaml")
    rows, flops = analyze(model, (64, 96), 2)
    assert f"| (total) | {rows[0].params:,} | {rows[0].trainable:,} | {flops / 1e9:.2f} |" in out
    assert "|   backbone.layer4 |" in out and "|   head.cls_tower |" in out
    assert f"{flops / 1e9:.2f} GFLOPs for one 64x96 input (64x90 padded to a multiple of 32" in out
    assert tool.main(["configs/quickstart.yaml", "--opts", "model.nope=1"]) == 2
