"""model.backbone.weights: a local state dict file or a torchvision weight name (through torchvision's cache).

The backbone's C3-C5 must equal those of the torchvision ResNet whose weights were saved, with BatchNorm
statistics and affine randomised (frozen BN is folded into the convolutions on our side).
"""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
import torchvision.models._api as torchvision_weights_api
from torchvision.models import ResNet18_Weights

from detector.config import load_config
from detector.models import build_model
from detector.models.backbones.resnet import ResNetBackbone


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    resnet.eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c2 = resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images)))))
        c3 = resnet.layer2(c2)
        c4 = resnet.layer3(c3)
        features = [c3, c4, resnet.layer4(c4)]
    return resnet.state_dict(), images, features


def assert_same_features(backbone, reference):
    _, images, expected = reference
    with torch.no_grad():
        got = backbone.eval()(images)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-4, rtol=1e-4)


def test_local_file(reference, tmp_path):
    state, _, _ = reference
    torch.save(state, tmp_path / "resnet18.pth")  # with fc.* and num_batches_tracked, as torchvision saves it
    assert_same_features(ResNetBackbone(depth=18, weights=str(tmp_path / "resnet18.pth")), reference)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}}  # a training script's checkpoint
    torch.save(wrapped, tmp_path / "wrapped.pth")
    assert_same_features(ResNetBackbone(depth=18, weights=str(tmp_path / "wrapped.pth")), reference)
    # through the config key, as tools/train.py builds it
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/quickstart.yaml",
                      [f"model.backbone.weights={tmp_path / 'resnet18.pth'}"])
    assert_same_features(build_model(cfg).backbone, reference)


def test_torchvision_weight_name_through_its_cache(reference, tmp_path, monkeypatch):
    state, _, _ = reference
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / Path(ResNet18_Weights.IMAGENET1K_V1.url).name)  # what a download leaves there
    assert_same_features(ResNetBackbone(depth=18, weights="ResNet18_Weights.IMAGENET1K_V1"), reference)


def test_clear_errors(reference, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown torchvision weight name 'ResNet18_Weights.NOPE'"):
        ResNetBackbone(depth=18, weights="ResNet18_Weights.NOPE")
    with pytest.raises(ValueError, match="not ResNet-18 weights"):
        ResNetBackbone(depth=18, weights="ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(FileNotFoundError, match="neither a file nor a torchvision weight name"):
        ResNetBackbone(depth=18, weights=str(tmp_path / "missing.pth"))

    def offline(*args, **kwargs):
        raise URLError("no network")
    monkeypatch.setattr(torchvision_weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"could not load ResNet18_Weights.IMAGENET1K_V1 .*hub/checkpoints/resnet18"):
        ResNetBackbone(depth=18, weights="ResNet18_Weights.IMAGENET1K_V1")

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1.2.bn1.bias'"):
        ResNetBackbone(depth=18, weights=str(tmp_path / "resnet34.pth"))
