"""``model.num_classes: auto`` and the synthetic generator switch, resolved when a config is loaded."""

import json
import logging
from pathlib import Path

import pytest
import yaml

from detector.config import ConfigError, load_config, save_config
from detector.config_schema import ModelConfig
from detector.models import build_model
from detector.predict.checkpoints import build_checkpoint_meta

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"          # synthetic generator on, 6 classes
COCO_CONFIG = CONFIGS / "retinanet" / "retinanet_r50_fpn_1x_coco.yaml"   # COCO paths, 80 classes


def write_annotations(path: Path, num_categories: int, lvis: bool = False) -> Path:
    categories = [{"id": 10 + i, "name": f"thing{i}"} for i in range(num_categories)]
    if lvis:
        for cat in categories:
            cat["frequency"] = "f"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return path


def own_data(tmp_path: Path, num_categories: int = 3) -> list[str]:
    """Overrides pointing both splits at hand-made files outside the synthetic root."""
    train = write_annotations(tmp_path / "ann" / "train.json", num_categories)
    val = write_annotations(tmp_path / "ann" / "val.json", num_categories)
    return [f"data.train.ann_file={train}", f"data.train.img_dir={tmp_path}", f"data.val.ann_file={val}",
            f"data.val.img_dir={tmp_path}"]


def test_auto_counts_the_categories_of_the_training_file(tmp_path):
    cfg = load_config(COCO_CONFIG, ["model.num_classes=auto", *own_data(tmp_path, num_categories=3)])
    assert cfg.model.num_classes == 3


def test_auto_reads_an_lvis_file_too(tmp_path):
    train = write_annotations(tmp_path / "lvis_train.json", 7, lvis=True)
    cfg = load_config(CONFIGS / "efl" / "efl_r50_fpn_2x_lvis_rfs.yaml",
                      ["model.num_classes=auto", f"data.train.ann_file={train}"])
    assert cfg.model.num_classes == 7


def test_an_explicit_number_is_kept_without_reading_the_file(tmp_path):
    cfg = load_config(COCO_CONFIG, [f"data.train.ann_file={tmp_path / 'not_there.json'}"])
    assert cfg.model.num_classes == 80


def test_auto_with_the_synthetic_generator_takes_its_class_count():
    cfg = load_config(QUICKSTART, ["model.num_classes=auto", "data.synthetic.num_classes=4"])
    assert cfg.model.num_classes == 4 and cfg.data.synthetic.enabled


def test_auto_with_a_missing_file_names_it_and_what_to_set(tmp_path):
    missing = tmp_path / "nowhere" / "train.json"
    with pytest.raises(ConfigError) as info:
        load_config(COCO_CONFIG, ["model.num_classes=auto", f"data.train.ann_file={missing}"])
    message = str(info.value)
    assert f"but {missing} does not exist" in message and "model.num_classes to the number of classes" in message
    assert "\n" not in message


def test_auto_with_no_categories_names_the_file(tmp_path):
    train = write_annotations(tmp_path / "train.json", 0)
    with pytest.raises(ConfigError, match=f"{train}: model.num_classes: auto found no categories"):
        load_config(COCO_CONFIG, ["model.num_classes=auto", f"data.train.ann_file={train}"])


def test_auto_in_a_yaml_file_and_a_wrong_word_is_refused(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f"_base_: {COCO_CONFIG}\nmodel:\n  num_classes: auto\n")
    assert load_config(config, own_data(tmp_path, 5)).model.num_classes == 5
    with pytest.raises(ConfigError) as info:
        load_config(config, ["model.num_classes=automatic"])
    assert "config key 'model.num_classes' (set in --opts model.num_classes=automatic) must be int | 'auto', got " \
           "'automatic'" in str(info.value)
    with pytest.raises(ConfigError, match="model.num_classes must be >= 1, got 0"):
        load_config(config, ["model.num_classes=0"])


def test_the_resolved_count_is_what_the_work_dir_config_and_checkpoint_meta_hold(tmp_path):
    cfg = load_config(COCO_CONFIG, ["model.num_classes=auto", *own_data(tmp_path, 3)])
    save_config(cfg, tmp_path / "work" / "config.yaml")
    written = yaml.safe_load((tmp_path / "work" / "config.yaml").read_text())
    assert written["model"]["num_classes"] == 3
    assert load_config(tmp_path / "work" / "config.yaml") == cfg  # the saved file no longer depends on the data
    meta = build_checkpoint_meta(cfg, ["thing0", "thing1", "thing2"], [10, 11, 12])
    assert meta["config"]["model"]["num_classes"] == 3


# ------------------------------------------------------------------------------ the synthetic generator switch
def test_own_paths_for_both_splits_turn_the_generator_off(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detector.config_resolve"):
        cfg = load_config(QUICKSTART, ["model.num_classes=auto", *own_data(tmp_path, 3)])
    assert not cfg.data.synthetic.enabled and cfg.model.num_classes == 3
    assert "the synthetic generator is off (data.synthetic.enabled: false)" in caplog.text
    # an explicit count that differs from the generator's 6 is no longer held against it
    assert load_config(QUICKSTART, ["model.num_classes=3", *own_data(tmp_path, 3)]).model.num_classes == 3


def test_a_config_file_based_on_the_quick_start_with_own_paths(tmp_path):
    train = write_annotations(tmp_path / "data" / "train.json", 2)
    val = write_annotations(tmp_path / "data" / "val.json", 2)
    config = tmp_path / "mine.yaml"
    config.write_text(f"_base_: {QUICKSTART}\nmodel:\n  num_classes: auto\ndata:\n"
                      f"  train: {{ann_file: {train}, img_dir: {tmp_path}}}\n"
                      f"  val: {{ann_file: {val}, img_dir: {tmp_path}}}\n")
    cfg = load_config(config)
    assert (cfg.data.synthetic.enabled, cfg.model.num_classes) == (False, 2)


def test_the_unchanged_quick_start_keeps_the_generator():
    cfg = load_config(QUICKSTART)
    assert cfg.data.synthetic.enabled and cfg.data.train.ann_file.startswith(cfg.data.synthetic.root)
    moved = load_config(QUICKSTART, ["data.synthetic.root=elsewhere/syn",
                                     "data.train.ann_file=elsewhere/syn/annotations/instances_train.json",
                                     "data.val.ann_file=elsewhere/syn/annotations/instances_val.json"])
    assert moved.data.synthetic.enabled  # the generator's files, under its (moved) root


@pytest.mark.parametrize("num_classes", ["auto", "3"])
def test_one_own_split_with_another_class_count_says_what_to_set(tmp_path, num_classes):
    # Only the training file is the user's: the generator stays on for val, and the class counts disagree.
    train = write_annotations(tmp_path / "train.json", 3)
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, [f"model.num_classes={num_classes}", f"data.train.ann_file={train}"])
    message = str(info.value)
    assert message.startswith("data.synthetic.num_classes (6) must equal model.num_classes (3); to train on your "
                              "own data set data.synthetic.enabled: false")
    assert "\n" not in message


def test_an_unresolved_auto_is_refused_by_the_model_builder():
    with pytest.raises(ValueError, match="model.num_classes is 'auto': load the config with"):
        build_model(ModelConfig(num_classes="auto"))
