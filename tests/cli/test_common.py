"""detector.cli.common: exit codes and `error:` lines of known errors, which process reports them, the fixed and the
user's overrides, and a checkpoint of another model named with its config."""

import pytest
import torch

from detector.cli.common import (EXIT_BAD_CONFIG, EXIT_BAD_INPUT, load_tool_config, load_trained_model, report_error,
                                 run_tool, tool_parser)
from detector.config import ConfigError
from detector.data.detection_dataset import BadImageError
from detector.models import build_model
from detector.runtime.checkpoint import CheckpointError, save_checkpoint

CONFIG = "configs/quickstart.yaml"
TINY = ["model.backbone.depth=18", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.num_convs=1"]


def raising(error):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error, code", [
    (ConfigError("config key 'model.x' (set in a.yaml) must be int"), EXIT_BAD_CONFIG),
    (FileNotFoundError("annotation file not found: a.json"), EXIT_BAD_INPUT),
    (ValueError("a.json: annotation id 3 has a bbox of 3 numbers"), EXIT_BAD_INPUT),
    (CheckpointError("checkpoint file not found: a.pt"), EXIT_BAD_INPUT),
    (BadImageError("cannot decode image a.png (image id 3)"), EXIT_BAD_INPUT),
])
def test_known_errors_give_one_line_and_their_exit_code(capsys, error, code):
    assert run_tool(raising(error)) == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_success_and_unknown_errors():
    assert run_tool(lambda: None) == 0
    assert run_tool(lambda: 130) == 130
    with pytest.raises(RuntimeError):  # not a known bad input: a bug keeps its traceback
        run_tool(raising(RuntimeError("bug")))
    with pytest.raises(ValueError):  # a tool may narrow the known errors
        run_tool(raising(ValueError("x")), bad_input=(FileNotFoundError,))


def test_only_the_main_process_reports_shared_errors_and_each_process_its_own_images(capsys):
    report_error(ValueError("same on every rank"), rank=1)
    assert capsys.readouterr().err == ""
    report_error(BadImageError("cannot decode image b.png (image id 5)"), rank=3)
    assert capsys.readouterr().err == "error (rank 3): cannot decode image b.png (image id 5)\n"
    assert run_tool(raising(ValueError("x")), rank=lambda: 2) == EXIT_BAD_INPUT  # rank read when reporting
    assert capsys.readouterr().err == ""


def test_fixed_overrides_come_first_so_the_user_can_still_set_them():
    cfg = load_tool_config(CONFIG, ["model.num_classes=6"], fixed=["model.backbone.weights=null",
                                                                   "model.num_classes=3"])
    assert cfg.model.backbone.weights is None and cfg.model.num_classes == 6
    with pytest.raises(ConfigError, match="model.head.num_conv"):
        load_tool_config(CONFIG, ["model.head.num_conv=1"])


def test_checkpoint_of_another_model_names_checkpoint_config_and_keys(tmp_path):
    path = tmp_path / "other.pt"
    other = load_tool_config(CONFIG, TINY + ["model.num_classes=3", "data.synthetic.num_classes=3"])
    save_checkpoint(path, {"model": build_model(other).state_dict()})
    cfg = load_tool_config(CONFIG, TINY)
    with pytest.raises(CheckpointError) as info:
        load_trained_model(cfg, str(path), CONFIG)
    message = str(info.value)
    assert f"checkpoint {path}" in message and f"another config than {CONFIG}" in message
    assert "head.cls_logits.weight: [27, 32, 3, 3] -> [54, 32, 3, 3]" in message
    torch.manual_seed(0)
    same = build_model(cfg)
    save_checkpoint(tmp_path / "same.pt", {"model": same.state_dict()})
    loaded = load_trained_model(cfg, str(tmp_path / "same.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), same.state_dict().values()))


def test_parser_keeps_the_docstring_layout():
    parser = tool_parser("Line one.\n\n    python tools/x.py CONFIG\n")
    assert "    python tools/x.py CONFIG" in parser.format_help()


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_a_command_leaves_no_process_group_alive_whatever_its_exit(tool, tmp_path, monkeypatch, capsys):
    # A rank that exits with its gloo group alive, while a peer still works, can abort at interpreter shutdown.
    import importlib
    import socket

    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        module = importlib.import_module(f"detector.cli.{tool}")
        assert module.main([str(tmp_path / "missing.yaml"), *(["x.pt"] if tool == "eval" else [])]) == EXIT_BAD_CONFIG
        assert "missing.yaml" in capsys.readouterr().err
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
