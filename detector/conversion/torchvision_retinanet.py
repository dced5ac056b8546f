"""Import torchvision's COCO-trained RetinaNet (``retinanet_resnet50_fpn`` v1 and ``_v2``) into focaldet.

The two torchvision models and the focaldet config that computes the same function:

=====================  ==============================================  =====================================
                       v1 (RetinaNet_ResNet50_FPN_Weights)             v2 (RetinaNet_ResNet50_FPN_V2_Weights)
=====================  ==============================================  =====================================
backbone               ResNet-50, FrozenBatchNorm2d (eps 0 for the     ResNet-50, BatchNorm2d (eps 1e-5),
                       published weights: torchvision's overwrite_eps)  frozen here (eval statistics)
FPN                    C3-C5, P6 = conv3x3/2(P5), P7 = conv(relu(P6))  P6 = conv3x3/2(C5)  (neck.p6_from c5)
                       (neck.p6_from p5)
head towers            4 x (conv3x3 + bias, ReLU)                      4 x (conv3x3 no bias, GN(32), ReLU)
box loss (training)    L1 on deltas                                    GIoU on decoded boxes
=====================  ==============================================  =====================================

Both: 91 class outputs indexed by COCO category id (0 = background and the 10 unused ids never trained),
anchors of sizes (x, int(x 2^(1/3)), int(x 2^(2/3))) for x = 32..512 and ratios (0.5, 1, 2), ratio-major,
grid step input size // feature size (``anchors.strides_from_input``), BoxCoder weights (1, 1, 1, 1), score
threshold 0.05, top 1000 per level, NMS 0.5, ImageNet mean / std normalisation.

Classes: by default the converter keeps the 80 outputs of the COCO 2017 categories, in increasing id order,
so focaldet label i is category ``COCO_CATEGORY_IDS[i]``: exactly the contiguous labels focaldet's COCO
dataset gives (categories sorted by id), and the model evaluates and fine-tunes with the stock COCO data
configs. ``class_ids=None`` keeps all 91 outputs (label = category id) for a one-to-one comparison.

Frozen BatchNorm: focaldet's FrozenBatchNorm2d adds eps = 1e-5 to the variance; a torchvision state dict
trained with another eps e is stored with running_var + e - 1e-5, so (running_var + eps) and every output
stay the same.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torchvision
from torch import Tensor

from detector.config import save_config
from detector.config_schema import (AnchorConfig, BackboneConfig, BoxLossConfig, Config, HeadConfig, ModelConfig,
                                    NeckConfig, TestConfig)
from detector.models import build_model
from detector.predict.checkpoints import build_checkpoint_meta
from detector.runtime.checkpoint import save_checkpoint

# COCO 2017 detection category ids (1..90 without the 10 ids unused since the 2014 release).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
TORCHVISION_NUM_CLASSES = 91
# torchvision's _default_anchorgen(): sizes rounded down to integers
TORCHVISION_ANCHOR_SIZES = [[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in (32, 64, 128, 256, 512)]
FOCALDET_BN_EPS = 1e-5  # torchvision.ops.FrozenBatchNorm2d's default, used by focaldet's backbone
# The eps torchvision's builders evaluate each version's published weights with.
DEFAULT_BN_EPS = {"v1": 0.0, "v2": 1e-5}
WEIGHT_ENUMS = {"RetinaNet_ResNet50_FPN_Weights": "v1", "RetinaNet_ResNet50_FPN_V2_Weights": "v2"}
VERSIONS = ("v1", "v2")


class ConversionError(ValueError):
    """The state dict is not one of torchvision's RetinaNet R50-FPN models (the message lists the keys)."""


def torchvision_model_config(version: str, num_classes: int = len(COCO_CATEGORY_IDS),
                             init_checkpoint: str | None = None) -> ModelConfig:
    """The focaldet model section equivalent to torchvision's ``retinanet_resnet50_fpn`` (v1) or ``_v2``."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    v2 = version == "v2"
    return ModelConfig(
        type="retinanet", num_classes=num_classes, init_checkpoint=init_checkpoint,
        backbone=BackboneConfig(depth=50, weights=None, norm="frozen_bn", frozen_stages=2),
        neck=NeckConfig(out_channels=256, p6_from="c5" if v2 else "p5", norm=None),
        anchors=AnchorConfig(sizes_per_level=[list(map(float, s)) for s in TORCHVISION_ANCHOR_SIZES],
                             ratios=[0.5, 1.0, 2.0], offset=0.0, strides_from_input=True),
        head=HeadConfig(num_convs=4, feat_channels=256, norm="gn" if v2 else None, prior_prob=0.01),
        loss_box=BoxLossConfig(type="giou" if v2 else "l1"),
        # torchvision keeps 300 detections; COCO AP counts the best 100 of them, which these are.
        test=TestConfig(score_thr=0.05, topk_per_level=1000, nms_iou=0.5, max_dets=100))


def torchvision_config(version: str, num_classes: int = len(COCO_CATEGORY_IDS),
                       init_checkpoint: str | None = None) -> Config:
    """A whole config: the model above with focaldet's COCO defaults (data paths, 1x schedule, runtime)."""
    return dataclasses.replace(Config(), model=torchvision_model_config(version, num_classes, init_checkpoint))


# ----------------------------------------------------------------------------------------- state dicts
def load_torchvision_weights(source: str) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, version or None) from a local file or a torchvision weight enum name such as
    ``RetinaNet_ResNet50_FPN_Weights.COCO_V1`` (loaded through torchvision, its cache or a download)."""
    if os.path.exists(source):
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:  # a foreign pickle, a truncated file
            raise ConversionError(f"{source}: not a loadable state dict ({type(err).__name__}: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from err
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision reference scripts
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ConversionError(f"{source}: expected a state dict (names -> tensors) of a torchvision RetinaNet")
        return state, None
    enum_name = source.split(".")[0]
    if enum_name not in WEIGHT_ENUMS:
        raise ConversionError(f"{source!r} is neither a file nor a torchvision RetinaNet weight name (one of "
                              f"{', '.join(n + '.COCO_V1' for n in WEIGHT_ENUMS)})")
    try:
        weights = torchvision.models.get_weight(source)
    except (ValueError, KeyError, AttributeError) as err:
        raise ConversionError(f"unknown torchvision weight name {source!r}") from err
    try:
        return weights.get_state_dict(progress=True), WEIGHT_ENUMS[enum_name]
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), a truncated download
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise ConversionError(f"could not load {source} ({type(err).__name__}: {err}); torchvision reads it from "
                              f"{cache}, downloading {weights.url} when missing: put the file there, or pass the "
                              "downloaded file instead of --weights") from err


def upgrade_legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of state dicts saved before torchvision's Conv2dNormActivation (the published v1 file):
    FPN ``inner_blocks.i.weight`` -> ``inner_blocks.i.0.weight``, head ``conv.{2i}.weight`` -> ``conv.i.0.weight``
    (what torchvision's own _load_from_state_dict hooks do)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", key)
        match = re.match(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$", key)
        if match:
            key = f"{match.group(1)}.{int(match.group(2)) // 2}.0.{match.group(3)}"
        out[key] = value
    return out


def detect_version(state: dict[str, Tensor]) -> str:
    """v2 has GroupNorm in the head and P6 on C5 (2048 input channels); v1 neither."""
    p6 = state.get("backbone.fpn.extra_blocks.p6.weight")
    if p6 is None:
        raise ConversionError("not a torchvision RetinaNet R50-FPN state dict: no backbone.fpn.extra_blocks.p6.weight "
                              f"(first keys: {', '.join(list(state)[:8])})")
    return "v2" if p6.shape[1] == 2048 else "v1"


def _key_map(version: str) -> dict[str, str]:
    """torchvision key -> focaldet key, for every entry of the v1 / v2 RetinaNet R50-FPN (91 classes)."""
    names: dict[str, str] = {}
    bn_fields = ("weight", "bias", "running_mean", "running_var")

    def conv_bn(tv_conv: str, tv_bn: str, ours: str) -> None:
        names[f"backbone.body.{tv_conv}.weight"] = f"backbone.{ours}.conv.weight"
        for field in bn_fields:
            names[f"backbone.body.{tv_bn}.{field}"] = f"backbone.{ours}.bn.{field}"

    conv_bn("conv1", "bn1", "stem.0")
    for layer, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):  # ResNet-50
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for i in (1, 2, 3):
                conv_bn(f"{prefix}.conv{i}", f"{prefix}.bn{i}", f"{prefix}.conv{i}")
            if block == 0:
                conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", f"{prefix}.downsample.0")
    for level in range(3):
        for field in ("weight", "bias"):
            names[f"backbone.fpn.inner_blocks.{level}.0.{field}"] = f"neck.lateral_convs.{level}.{field}"
            names[f"backbone.fpn.layer_blocks.{level}.0.{field}"] = f"neck.output_convs.{level}.{field}"
    for extra in ("p6", "p7"):
        for field in ("weight", "bias"):
            names[f"backbone.fpn.extra_blocks.{extra}.{field}"] = f"neck.{extra}.{field}"
    v2 = version == "v2"
    for tv_head, ours in (("classification_head", "cls_tower"), ("regression_head", "box_tower")):
        for i in range(4):
            tv, step = f"head.{tv_head}.conv.{i}", 3 if v2 else 2  # ours: conv [, gn], relu per block
            names[f"{tv}.0.weight"] = f"head.{ours}.{step * i}.weight"
            if v2:  # conv without bias, then GroupNorm
                names[f"{tv}.1.weight"] = f"head.{ours}.{step * i + 1}.weight"
                names[f"{tv}.1.bias"] = f"head.{ours}.{step * i + 1}.bias"
            else:
                names[f"{tv}.0.bias"] = f"head.{ours}.{step * i}.bias"
    for field in ("weight", "bias"):
        names[f"head.classification_head.cls_logits.{field}"] = f"head.cls_logits.{field}"
        names[f"head.regression_head.bbox_reg.{field}"] = f"head.box_deltas.{field}"
    return names


def _select_classes(tensor: Tensor, class_ids: list[int], num_classes: int) -> Tensor:
    """Keep the outputs of ``class_ids`` from a classifier laid out (A * K, ...) with channel a * K + k."""
    per_anchor = tensor.reshape(-1, num_classes, *tensor.shape[1:])  # (A, K, ...)
    return per_anchor[:, list(class_ids)].reshape(-1, *tensor.shape[1:]).clone()


def convert_state_dict(state: dict[str, Tensor], version: str | None = None,
                       class_ids: Sequence[int] | None = COCO_CATEGORY_IDS,
                       bn_eps: float | None = None) -> tuple[dict[str, Tensor], str]:
    """A torchvision RetinaNet R50-FPN state dict as focaldet model weights; returns (state dict, version).

    ``version`` (v1 / v2) is detected when None, and a given one must agree with the weights. ``class_ids``:
    the torchvision class outputs to keep, in focaldet label order (default the 80 COCO categories; None
    keeps all 91). ``bn_eps``: the eps of torchvision's BatchNorm layers (default: 0 for v1, 1e-5 for v2, what
    torchvision's builders use with the published weights).

    Raises ConversionError naming every unmatched key or shape when the state dict is anything else.
    """
    state = upgrade_legacy_keys({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    detected = detect_version(state)
    if version is not None and version != detected:
        raise ConversionError(f"the weights are torchvision's RetinaNet {detected} (P6 input channels "
                              f"{state['backbone.fpn.extra_blocks.p6.weight'].shape[1]}), not {version}")
    version = detected
    names = _key_map(version)
    unexpected = sorted(set(state) - set(names))
    missing = sorted(set(names) - set(state))
    if unexpected or missing:
        raise ConversionError(f"not a torchvision retinanet_resnet50_fpn{'_v2' if version == 'v2' else ''} state "
                              f"dict: unmatched keys {unexpected[:30]}{' ...' if len(unexpected) > 30 else ''}, "
                              f"missing keys {missing[:30]}{' ...' if len(missing) > 30 else ''}")
    num_classes = state["head.classification_head.cls_logits.bias"].numel() // 9
    if state["head.classification_head.cls_logits.bias"].numel() != 9 * num_classes:
        raise ConversionError("head.classification_head.cls_logits: expected 9 anchors x classes outputs, got "
                              f"{state['head.classification_head.cls_logits.bias'].numel()}")
    if class_ids is not None and (not class_ids or min(class_ids) < 0 or max(class_ids) >= num_classes):
        raise ConversionError(f"class ids must lie in [0, {num_classes}), got {class_ids}")
    eps = DEFAULT_BN_EPS[version] if bn_eps is None else float(bn_eps)
    out = {}
    for tv_key, our_key in names.items():
        value = state[tv_key].detach().to(torch.float32).clone()
        if our_key.startswith("backbone.") and our_key.endswith(".bn.running_var"):
            value = value + (eps - FOCALDET_BN_EPS)  # keeps running_var + eps unchanged
        elif tv_key.startswith("head.classification_head.cls_logits.") and class_ids is not None:
            value = _select_classes(value, class_ids, num_classes)
        out[our_key] = value
    return out, version


def check_against_model(model: torch.nn.Module, converted: dict[str, Tensor]) -> None:
    """Raise ConversionError unless ``converted`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [f"{k}: {list(v.shape)} vs model {list(expected[k].shape)}" for k, v in converted.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ConversionError(f"converted weights do not fit the focaldet model: missing {missing[:20]}, "
                              f"unexpected {unexpected[:20]}, shapes {shapes[:20]}")


def convert_torchvision(source: str, out: str | os.PathLike, version: str | None = None, all_classes: bool = False,
                        bn_eps: float | None = None) -> tuple[Path, Path, str]:
    """Convert torchvision weights (file or weight name) into a focaldet checkpoint ``out`` and write the
    matching config next to it (``out`` with a ``.yaml`` suffix). Returns (checkpoint, config, version).

    The checkpoint carries its config and torchvision's COCO class names and category ids (``meta``, see
    :mod:`detector.predict.checkpoints`), so ``Detector.from_checkpoint`` and ``tools/predict.py`` use it alone.
    The config's ``model.init_checkpoint`` names the checkpoint (absolute path), so ``tools/train.py CONFIG``
    fine-tunes from it and ``tools/eval.py CONFIG CHECKPOINT`` evaluates it on data.val (COCO val2017 by
    default). With ``all_classes`` the 91 torchvision outputs are kept (label = category id), a model that
    COCO's 80-category annotation files do not fit: for comparisons only.
    """
    state, named_version = load_torchvision_weights(source)
    if version is not None and named_version is not None and version != named_version:
        raise ConversionError(f"{source} is torchvision's RetinaNet {named_version}, not {version}")
    class_ids = None if all_classes else COCO_CATEGORY_IDS
    converted, version = convert_state_dict(state, version or named_version, class_ids=class_ids, bn_eps=bn_eps)
    num_classes = converted["head.cls_logits.bias"].numel() // 9
    out = Path(out)
    config_path = out.with_suffix(".yaml")
    cfg = torchvision_config(version, num_classes, init_checkpoint=str(out.resolve()))
    check_against_model(build_model(dataclasses.replace(cfg.model, init_checkpoint=None)), converted)
    category_ids = list(class_ids) if class_ids else list(range(num_classes))
    names = torchvision.models.detection.RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # by category id
    meta = build_checkpoint_meta(cfg, [names[i] for i in category_ids], category_ids)
    save_checkpoint(out, {"model": converted, "converted_from": str(source), "torchvision_version": version,
                          "label_to_category_id": category_ids, "meta": meta})
    save_config(cfg, config_path)
    return out, config_path, version
