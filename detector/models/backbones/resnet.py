"""ResNet-18/34/50/101 backbones from torchvision, returning C3, C4, C5 (strides 8, 16, 32).

Pretrained weights load by torchvision name (``ResNet50_Weights.IMAGENET1K_V1``) or from a local file.
With frozen BatchNorm (the detection default) each BN is an affine map y = x * a + b with constant a, b, so
``fold_frozen_batchnorm`` merges it into the preceding convolution: conv(x, W) * a + b = conv(x, W * a) + b.
The folded convolution still trains W (the product W * a is recomputed each call, on the small weight
tensor), but saves two passes over every activation in the forward and backward: torchvision's
FrozenBatchNorm2d runs them as separate element-wise ops.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

logger = logging.getLogger("detector.models")

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
            50: torchvision.models.resnet50, 101: torchvision.models.resnet101}


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm in ("bn", "syncbn"):  # syncbn: converted by the trainer once the process group exists
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"unknown backbone norm {norm!r}; choose frozen_bn, bn, syncbn or gn")


def _resnet_weight_enum(weights: str, depth: int | None):
    """The torchvision weight enum entry a name such as ``ResNet50_Weights.IMAGENET1K_V1`` names."""
    try:
        enum = torchvision.models.get_weight(weights)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"model.backbone.weights: unknown torchvision weight name {weights!r} (e.g. "
                         f"'ResNet{depth}_Weights.IMAGENET1K_V1')") from err
    if depth is not None and type(enum).__name__ != f"ResNet{depth}_Weights":
        raise ValueError(f"model.backbone.weights: {weights!r} are not ResNet-{depth} weights "
                         f"(model.backbone.depth is {depth}; e.g. 'ResNet{depth}_Weights.IMAGENET1K_V1')")
    return enum


def _fetch_named_weights(enum, weights: str) -> dict:
    """torchvision's own loader: its cache ($TORCH_HOME/hub/checkpoints) or a download."""
    try:
        return enum.get_state_dict(progress=False)
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), a truncated download
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
        raise ValueError(f"model.backbone.weights: could not load {weights} ({type(err).__name__}: {err}). "
                         f"torchvision reads it from {cache}, downloading {enum.url} when missing: put the file "
                         "there, or set model.backbone.weights to a local file") from err


def load_backbone_weights(resnet: nn.Module, weights: str, depth: int | None = None) -> None:
    """Load ImageNet weights into a torchvision ResNet from a torchvision weight name or a local file.

    A local file holds a ResNet state dict (e.g. ``torchvision.models.resnet50(...).state_dict()`` saved with
    torch.save), possibly under a ``state_dict`` / ``model`` entry or with a ``module.`` prefix; the
    classifier (``fc.*``) is ignored. Any other mismatch is an error naming the keys."""
    if os.path.exists(weights):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"model.backbone.weights: {weights} is not a loadable state dict "
                             f"({type(err).__name__})") from err
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise ValueError(f"model.backbone.weights: {weights} holds a {type(state).__name__}, not a state dict")
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
    elif "_Weights." in weights:
        state = _fetch_named_weights(_resnet_weight_enum(weights, depth), weights)
    else:
        raise FileNotFoundError(f"model.backbone.weights: {weights!r} is neither a file nor a torchvision "
                                "weight name such as 'ResNet50_Weights.IMAGENET1K_V1'")
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")
           and not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {list(v.shape)} vs {list(own[k].shape)}" for k, v in state.items()
              if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"model.backbone.weights {weights!r} do not match the ResNet: missing keys {missing[:20]}, "
                         f"unexpected keys {unexpected[:20]}, shape mismatches {shapes[:10]}")
    resnet.load_state_dict(state, strict=False)
    logger.info("loaded backbone weights from %s", weights)


class ConvFrozenBN(nn.Module):
    """A convolution followed by frozen BatchNorm, computed as one biased convolution."""

    def __init__(self, conv: nn.Conv2d, bn: FrozenBatchNorm2d):
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        scale = self.bn.weight * (self.bn.running_var + self.bn.eps).rsqrt()  # (C,)
        shift = self.bn.bias - self.bn.running_mean * scale
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        return F.conv2d(x, weight, shift, self.conv.stride, self.conv.padding, self.conv.dilation,
                        self.conv.groups)


def fold_frozen_batchnorm(resnet: nn.Module) -> None:
    """Replace each (conv, FrozenBatchNorm2d) pair of a torchvision ResNet by a ConvFrozenBN, in place."""
    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        if isinstance(bn, FrozenBatchNorm2d):
            setattr(owner, conv_name, ConvFrozenBN(conv, bn))
            setattr(owner, bn_name, nn.Identity())

    fold(resnet, "conv1", "bn1")
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            for i in (1, 2, 3):
                if hasattr(block, f"conv{i}"):
                    fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")


class ResNetBackbone(nn.Module):
    """torchvision ResNet without the classifier; forward returns [C3, C4, C5]."""

    def __init__(self, depth: int = 50, weights: str | None = None, norm: str = "frozen_bn",
                 frozen_stages: int = 2, fold_frozen_bn: bool = True):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        resnet = _RESNETS[depth](weights=None, norm_layer=_norm_layer(norm))
        if weights:
            load_backbone_weights(resnet, weights, depth)
        if norm == "frozen_bn" and fold_frozen_bn:
            fold_frozen_batchnorm(resnet)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]  # C3, C4, C5
        self.frozen_stages = frozen_stages
        for stage in self._stages()[:frozen_stages]:
            for param in stage.parameters():
                param.requires_grad_(False)

    def _stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        for stage in self._stages()[:self.frozen_stages]:  # frozen stages keep their BN statistics
            stage.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(images))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
