"""The COCO-format quick starts: one fp32 CPU recipe shared by RetinaNet, ATSS and GFL, stated in the README.

The recipe itself (input size, batch, iterations) was chosen from timed runs; its speed is measured by hand on a
2-core CPU (README, Quick start), never in a test. These tests keep the configs and the README's words in step.
"""

from pathlib import Path

import pytest

from detector.config import load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTARTS = ("quickstart.yaml", "quickstart_atss.yaml", "quickstart_gfl.yaml")


def quickstart(name: str):
    return load_config(ROOT / "configs" / name)


@pytest.mark.parametrize("name", QUICKSTARTS)
def test_quickstart_trains_in_fp32_on_the_cpu(name):
    # fp32: the recipe must not need native bf16 (bf16 autocast is an opt-in on CPUs that have it).
    cfg = quickstart(name)
    assert cfg.runtime.amp == "off" and cfg.runtime.device == "cpu"
    assert cfg.data.synthetic.enabled and cfg.model.backbone.weights is None


def test_quickstarts_share_everything_but_the_detector():
    retinanet, *others = (quickstart(name) for name in QUICKSTARTS)
    for cfg in others:
        assert cfg.model.type != retinanet.model.type
        assert (cfg.data, cfg.schedule, cfg.runtime) == (retinanet.data, retinanet.schedule, retinanet.runtime)
        assert cfg.model.backbone == retinanet.model.backbone
        assert cfg.model.neck.out_channels == retinanet.model.neck.out_channels
        assert (cfg.model.head.num_convs, cfg.model.head.feat_channels, cfg.model.head.norm) == \
            (retinanet.model.head.num_convs, retinanet.model.head.feat_channels, retinanet.model.head.norm)


def test_readme_quick_start_states_the_configs_recipe():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    cfg = quickstart("quickstart.yaml")
    for words in (f"{cfg.schedule.iters} iterations", f"batch {cfg.data.batch_size}", f"{cfg.data.min_size[0]} px",
                  "fp32", "bf16"):
        assert words in section, f"README's Quick start does not say {words!r}"
