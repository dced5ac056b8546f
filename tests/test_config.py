"""Config loading: _base_ inheritance, overrides, validation errors, and the shipped config files."""

from pathlib import Path

import pytest
import yaml

from detector.config import ConfigError, config_to_dict, load_config, save_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_inheritance_deep_merge_later_wins(tmp_path):
    write(tmp_path / "a.yaml", {"model": {"num_classes": 5, "head": {"num_convs": 2, "feat_channels": 64}}})
    write(tmp_path / "b.yaml", {"model": {"head": {"num_convs": 3}}, "schedule": {"lr": 0.02}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.yaml", {"_base_": ["../a.yaml", "../b.yaml"], "schedule": {"lr": 0.05}})
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert cfg.model.num_classes == 5
    assert cfg.model.head.num_convs == 3          # b overrides a
    assert cfg.model.head.feat_channels == 64     # kept from a (deep merge)
    assert cfg.schedule.lr == 0.05                # the file itself wins over its bases
    assert cfg.model.head.prior_prob == 0.01      # schema default


def test_single_string_base(tmp_path):
    write(tmp_path / "a.yaml", {"runtime": {"seed": 7}})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    assert load_config(tmp_path / "b.yaml").runtime.seed == 7


def test_overrides_are_yaml_typed(tmp_path):
    path = write(tmp_path / "a.yaml", {})
    cfg = load_config(path, ["schedule.max_iters=3", "data.min_size=[320,352]", "model.backbone.weights=null",
                             "schedule.lr=0.5", "runtime.channels_last=true", "schedule.clip_grad_norm=35"])
    assert cfg.schedule.max_iters == 3
    assert cfg.data.min_size == [320, 352]
    assert cfg.model.backbone.weights is None
    assert cfg.schedule.lr == 0.5 and isinstance(cfg.schedule.lr, float)
    assert cfg.runtime.channels_last is True
    assert cfg.schedule.clip_grad_norm == 35.0


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path / "a.yaml", {"model": {"head": {"feat_channel": 64}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "model.head.feat_channel" in message
    assert str(path) in message
    assert "model.head.feat_channels" in message


def test_unknown_override_key_names_the_override(tmp_path):
    path = write(tmp_path / "a.yaml", {})
    with pytest.raises(ConfigError, match=r"schedule\.max_iter'.*--opts schedule\.max_iter=5.*schedule\.max_iters"):
        load_config(path, ["schedule.max_iter=5"])


@pytest.mark.parametrize("override, fragment", [
    ("schedule.lr=abc", "schedule.lr"),
    ("model.backbone.depth=42", "model.backbone.depth"),
    ("runtime.amp=fp8", "runtime.amp"),
    ("data.batch_size=2.5", "data.batch_size"),
    ("model.head.prior_prob=1.5", "prior_prob"),
    ("model.assigner.neg_iou_thr=0.7", "neg_iou_thr"),
    ("schedule.steps=[11,8]", "schedule.steps"),
])
def test_wrong_type_or_range_is_refused(tmp_path, override, fragment):
    path = write(tmp_path / "a.yaml", {})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(path, [override])


def test_malformed_override_and_missing_file(tmp_path):
    path = write(tmp_path / "a.yaml", {})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["schedule.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    write(tmp_path / "b.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "b.yaml")


def test_circular_base_is_refused(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIG_DIR / "retinanet" / "retinanet_r50_fpn_1x_coco.yaml", ["schedule.max_iters=10"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_to_dict(again)["schedule"]["max_iters"] == 10


def test_contract_keys_exist():
    cfg = load_config(CONFIG_DIR / "retinanet" / "retinanet_r50_fpn_1x_coco.yaml")
    for key in ("schedule.max_iters", "data.val.ann_file", "data.val.img_dir", "data.train.ann_file",
                "data.train.img_dir", "data.val.format", "model.backbone.weights", "runtime.seed",
                "runtime.device"):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)


def test_paper_retinanet_setting():
    cfg = load_config(CONFIG_DIR / "retinanet" / "retinanet_r50_fpn_1x_coco.yaml")
    assert cfg.model.backbone.depth == 50 and cfg.model.neck.p6_from == "c5"
    assert cfg.data.min_size == [800] and cfg.data.batch_size == 16
    assert cfg.schedule.lr == 0.01 and cfg.schedule.epochs == 12 and cfg.schedule.steps == [8, 11]
    assert len(cfg.model.anchors.scales) * len(cfg.model.anchors.ratios) == 9
    assert (cfg.model.assigner.pos_iou_thr, cfg.model.assigner.neg_iou_thr) == (0.5, 0.4)
    assert (cfg.model.loss_cls.alpha, cfg.model.loss_cls.gamma) == (0.25, 2.0)


def test_every_shipped_config_loads():
    files = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)
    assert files, "no configs found"
    for path in files:
        load_config(path)
