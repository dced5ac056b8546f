"""Config values that used to load and then train or evaluate wrongly, and how files are read as YAML:
non-finite numbers, test-time settings out of range, duplicate keys, YAML 1.2 floats (1e-3), image
normalisation, files that are not UTF-8 YAML text."""

from pathlib import Path

import pytest
import yaml

from detector.config import ConfigError, config_from_dict, load_config, save_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message, f"not one line:\n{message}"
    return message


# ------------------------------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("override, key", [
    ("schedule.lr=.nan", "schedule.lr"),
    ("schedule.clip_grad_norm=.inf", "schedule.clip_grad_norm"),        # Optional[float]
    ("model.loss_cls.beta=-.inf", "model.loss_cls.beta"),               # Optional[float], no range check
    ("model.box_coder.clamp=.inf", "model.box_coder.clamp"),            # no range check at all
    ("model.anchors.ratios=[0.5, .NaN, 2.0]", "model.anchors.ratios[1]"),
    ("model.anchors.sizes_per_level=[[32], [64], [128], [256], [.inf]]", "model.anchors.sizes_per_level[4][0]"),
    ("data.mean=[0.4, 0.4, .nan]", "data.mean[2]"),
    ("data.train.repeat_threshold=.nan", "data.train.repeat_threshold"),
])
def test_non_finite_numbers_are_refused_in_every_section(override, key):
    message = error_of(CONFIG, [override])
    assert f"config key '{key}'" in message
    assert f"set in --opts {override}" in message
    assert "must be a finite number" in message


def test_non_finite_number_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(f"_base_: {CONFIG}\nmodel:\n  anchors:\n    ratios: [.inf, 1.0]\n")
    message = error_of(path)
    assert "'model.anchors.ratios[0]'" in message and f"set in {path}" in message and "got inf" in message


def test_non_finite_number_in_a_plain_mapping_is_refused():
    with pytest.raises(ConfigError, match=r"'model\.head\.prior_prob'.*finite number, got nan"):
        config_from_dict({"model": {"head": {"prior_prob": float("nan")}}})


# ------------------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize("key, bad, allowed", [
    ("nms_iou", 1.5, "in [0, 1]"), ("nms_iou", -0.1, "in [0, 1]"),
    ("score_thr", -0.01, "in [0, 1]"), ("score_thr", 1.01, "in [0, 1]"),
    ("topk_per_level", 0, ">= 1"), ("topk_per_level", -5, ">= 1"),
    ("max_dets", 0, ">= 1"),
])
def test_test_time_settings_out_of_range_name_key_and_range(key, bad, allowed):
    message = error_of(CONFIG, [f"model.test.{key}={bad}"])
    assert f"'model.test.{key}'" in message and f"must be {allowed}, got {bad}" in message


def test_test_time_settings_at_their_bounds_load():
    cfg = load_config(CONFIG, ["model.test.nms_iou=1.0", "model.test.score_thr=0", "model.test.topk_per_level=1",
                               "model.test.max_dets=1"])
    assert (cfg.model.test.nms_iou, cfg.model.test.score_thr, cfg.model.test.topk_per_level,
            cfg.model.test.max_dets) == (1.0, 0.0, 1, 1)
    assert load_config(CONFIG, ["model.test.nms_iou=0", "model.test.score_thr=1"]).model.test.nms_iou == 0.0


@pytest.mark.parametrize("override, key, expected", [
    ("data.mean=[0.5, 0.5]", "data.mean", "needs one value per RGB channel (3 values), got [0.5, 0.5]"),
    ("data.std=[0.2, 0.2, 0.2, 0.2]", "data.std", "needs one value per RGB channel (3 values)"),
    ("data.std=[]", "data.std", "got []"),
    ("data.std=[0.2, 0, 0.2]", "data.std", "must be > 0 for every channel"),
    ("data.std=[0.2, -0.1, 0.2]", "data.std", "must be > 0 for every channel"),
    ("data.flip_prob=1.5", "data.flip_prob", "must be in [0, 1], got 1.5"),
])
def test_image_normalisation_and_flip_probability(override, key, expected):
    message = error_of(CONFIG, [override])
    assert f"'{key}'" in message and expected in message


# ------------------------------------------------------------------------------------------ duplicate keys
def test_duplicate_key_names_dotted_key_file_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(f"_base_: {CONFIG}\nschedule:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    message = error_of(path)
    assert message.startswith(f"{path}, line 5: duplicate key 'schedule.lr' (first set at line 3)")


def test_duplicate_section_and_duplicate_in_a_base_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  head:\n    num_convs: 1\n  head:\n    feat_channels: 32\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\n")
    message = error_of(child)
    assert str(base) in message and "line 4: duplicate key 'model.head' (first set at line 2)" in message
    base.write_text("data:\n  min_size: [{a: 1, a: 2}]\n")
    assert "duplicate key 'data.min_size[0].a'" in error_of(child)


def test_equal_keys_written_differently_are_duplicates(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text("runtime:\n  seed: 1\n  'seed': 2\n")
    assert "line 3: duplicate key 'runtime.seed'" in error_of(path)


def test_merge_keys_still_override_what_they_merge(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(f"_base_: {CONFIG}\nschedule: &sched\n  lr: 0.1\n  momentum: 0.8\n"
                    "runtime:\n  seed: 3\nevaluation:\n  <<: {tensorboard_images: 2, tensorboard_pr_curves: false}\n"
                    "  tensorboard_images: 5\n")
    cfg = load_config(path)
    assert cfg.evaluation.tensorboard_images == 5 and cfg.evaluation.tensorboard_pr_curves is False


def test_duplicate_key_in_an_override_value():
    message = error_of(CONFIG, ["data.min_size={a: 1, a: 2}"])
    assert "override 'data.min_size={a: 1, a: 2}'" in message and "duplicate key 'a'" in message


# ------------------------------------------------------------------------------------------ YAML 1.2 floats
def test_exponent_floats_without_a_dot_in_a_file_and_in_overrides(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text(f"_base_: {CONFIG}\nschedule:\n  lr: 1e-3\n  weight_decay: 5E-5\n  warmup_factor: 1.0e3\n"
                    "model:\n  anchors:\n    ratios: [5e-1, 1e0, 2e+0]\n")
    with pytest.raises(ConfigError, match=r"warmup_factor in \(0, 1\]"):  # 1.0e3 = 1000: a float now, too big
        load_config(path)
    path.write_text(path.read_text().replace("warmup_factor: 1.0e3", "warmup_factor: 1e-3"))
    cfg = load_config(path)
    assert cfg.schedule.lr == 0.001 and cfg.schedule.weight_decay == 5e-5 and cfg.schedule.warmup_factor == 0.001
    assert cfg.model.anchors.ratios == [0.5, 1.0, 2.0]
    cfg = load_config(CONFIG, ["schedule.lr=2e-2", "schedule.clip_grad_norm=1E1", "model.anchors.scales=[1e0]"])
    assert cfg.schedule.lr == 0.02 and cfg.schedule.clip_grad_norm == 10.0 and cfg.model.anchors.scales == [1.0]


def test_other_yaml_typing_is_unchanged():
    cfg = load_config(CONFIG, ["schedule.max_iters=10", "runtime.deterministic=on", "model.backbone.weights=1e3x",
                               "data.min_size=[0100]"])
    assert cfg.schedule.max_iters == 10 and isinstance(cfg.schedule.max_iters, int)
    assert cfg.runtime.deterministic is True           # YAML 1.1 booleans are kept
    assert cfg.model.backbone.weights == "1e3x"
    assert cfg.data.min_size == [64]                   # YAML 1.1 octal, as PyYAML reads it
    with pytest.raises(ConfigError, match=r"'schedule.max_iters'.*must be int \| null, got 1000.0"):
        load_config(CONFIG, ["schedule.max_iters=1e3"])  # a float, not an int


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(CONFIG, ["schedule.lr=1e-5", "schedule.weight_decay=1e-12"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


# ------------------------------------------------------------------------------------------ not YAML text
@pytest.mark.parametrize("content, expected", [
    (bytes(range(256)), "not UTF-8 text: invalid start byte at byte 128"),
    ("model:\n  num_classes: 6  # caf\xe9\n".encode("latin-1"), "not UTF-8 text: invalid continuation byte"),
    (b"PK\x03\x04\x00\x00\x08\x00", "character #x0003 at position 2 is not allowed in YAML (a binary file?)"),
    (b"model:\n  head: [1, 2\nschedule: 3\n", "line 3, column 9: expected ',' or ']'"),
])
def test_files_that_are_not_yaml_text_name_the_file(tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    message = error_of(path)
    assert str(path) in message and expected in message


def test_the_loader_is_the_config_loaders_only():
    assert yaml.safe_load("a: 1e-3")["a"] == "1e-3"  # PyYAML itself is left alone
    assert yaml.safe_load("a: 1\na: 2") == {"a": 2}


def test_aliases_are_checked_once_and_may_be_recursive():
    from detector.config_yaml import DuplicateKeyError, load_yaml

    data = load_yaml("a: &x [1, *x]\nb: &m {k: 1}\nc: *m\n")
    assert data["a"][1] is data["a"] and data["c"] == {"k": 1}
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml("a: &m\n  k: 1\n  k: 2\nb: *m\n")
    assert (info.value.key, info.value.line, info.value.first_line) == ("a.k", 3, 2)
