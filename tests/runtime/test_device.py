"""runtime.device resolution: a CUDA device the machine does not have is a clear error naming the key."""

from pathlib import Path

import pytest
import torch

from detector.config import ConfigError, load_config
from detector.runtime.device import DeviceUnavailableError, resolve_device

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_names_the_key_and_the_way_out(no_cuda, name):
    with pytest.raises(DeviceUnavailableError) as err:
        resolve_device(name)
    assert str(err.value) == (f"runtime.device is '{name}' but CUDA is not available on this machine "
                              "(torch.cuda.is_available() is False); set runtime.device=cpu or auto")
    assert isinstance(err.value, ValueError)  # what the tools report as bad input, one line, no traceback


def test_auto_and_cpu_need_no_gpu(no_cuda):
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_device_index_beyond_the_visible_devices(two_gpus):
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:2': it names CUDA device 2, but 2 devices are visible"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceUnavailableError, match=r"'cuda': process 2 on this node uses CUDA device 2"):
        resolve_device("cuda", local_rank=2)


@pytest.mark.parametrize("name", ["cuda:x", "cudа", "gpu", "cuda:-1", "cuda:0:1"])
def test_malformed_device_names_are_config_errors(name):
    with pytest.raises(ConfigError, match=r"'runtime.device'.*must be auto, cpu, cuda or cuda:N"):
        load_config(CONFIG, [f"runtime.device={name}"])
