"""The papers' tables that scripts/reproduce.py reruns: their rows, row configs and published numbers.

Each row is one config file, configs/reproduce/<table>/<row>.yaml, inheriting (through ``_base_``) the
full-scale config of its detector; ``--mini`` merges the table's overlay (configs/reproduce/_base_/mini_*.yaml)
on top.
``varied`` names the config keys the table sweeps: two rows of a table differ in those keys and no others
(tests/scripts/test_reproduce.py checks it, full-scale and with the overlay).

Paper figures are box AP in percent. ``None`` means the figure is not confirmed from a primary source and is
printed as "unconfirmed", never as a number. Sources:
- RetinaNet: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), Table 1a, 1b, 1c: R50-FPN,
  600 px shorter side for training and testing, COCO minival. Table 1c's rows other than 1 scale x 1 ratio
  (30.3) and 3 x 3 (34.0) are left unconfirmed here.
- ATSS: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive Training
  Sample Selection" (CVPR 2020), Table 4 (k sweep; R50, 1x, 800 px, minival).
- GFL: Li et al., "Generalized Focal Loss" (NeurIPS 2020). Its ablation tables are not confirmed here; the
  default row (QFL + DFL, reg_max 16) is the official repository's GFL R50 1x result on minival, 40.2.
- EFL: Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection" (CVPR 2022): the official
  benchmark's R50 improved baseline on LVIS v1 val (24 epochs, RFS): 27.5 AP, 20.2 APr, 26.1 APc, 32.4 APf.
  Its focal-loss baseline row is unconfirmed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "reproduce"
MINI_DIR = CONFIG_DIR / "_base_"


@dataclass(frozen=True)
class Row:
    name: str        # config stem and work-dir name
    setting: str     # what the row changes, as the paper's table labels it
    paper: dict      # metric -> published value in percent, or None (unconfirmed)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    mini_overlay: str           # file name under configs/reproduce/_base_/
    varied: tuple               # dotted config keys the rows sweep
    rows: tuple
    metrics: tuple = ("AP",)    # reported in percent
    notes: tuple = field(default_factory=tuple)

    def config(self, row: Row) -> Path:
        return CONFIG_DIR / self.name / f"{row.name}.yaml"

    @property
    def mini_config(self) -> Path:
        return MINI_DIR / self.mini_overlay

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"table {self.name} has no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


def _ap(value):
    return {"AP": value}


_RETINANET_SOURCE = ("Lin et al. 2017 (RetinaNet), R50-FPN, 600 px, COCO minival; "
                     "paper values copied from the paper's Table 1")

RETINANET_1A = Table(
    name="retinanet_1a",
    title="RetinaNet Table 1a: alpha-balanced CE (gamma 0), alpha sweep",
    source=_RETINANET_SOURCE + "a",
    mini_overlay="mini_coco_retinanet.yaml",
    varied=("model.loss_cls.alpha",),
    rows=tuple(Row(f"alpha_{a}", f"gamma 0, alpha {a}", _ap(ap)) for a, ap in [
        ("0.10", 0.0), ("0.25", 10.8), ("0.50", 30.2), ("0.75", 31.1), ("0.90", 30.8), ("0.99", 28.7),
        ("0.999", 25.1)]),
)

RETINANET_1B = Table(
    name="retinanet_1b",
    title="RetinaNet Table 1b: focal loss, gamma sweep at its best alpha",
    source=_RETINANET_SOURCE + "b",
    mini_overlay="mini_coco_retinanet.yaml",
    varied=("model.loss_cls.alpha", "model.loss_cls.gamma"),
    rows=tuple(Row(f"gamma_{g}_alpha_{a}", f"gamma {g}, alpha {a}", _ap(ap)) for g, a, ap in [
        ("0", "0.75", 31.1), ("0.1", "0.75", 31.4), ("0.2", "0.75", 31.9), ("0.5", "0.50", 32.9),
        ("1", "0.25", 33.7), ("2", "0.25", 34.0), ("5", "0.25", 32.2)]),
)

RETINANET_1C = Table(
    name="retinanet_1c",
    title="RetinaNet Table 1c: anchors per location (scales x aspect ratios), FL gamma 2 alpha 0.25",
    source=_RETINANET_SOURCE + "c",
    mini_overlay="mini_coco_retinanet.yaml",
    varied=("model.anchors.scales", "model.anchors.ratios"),
    rows=tuple(Row(f"scales_{s}_ratios_{r}", f"{s} scale{'s' * (s > 1)} x {r} ratio{'s' * (r > 1)}", _ap(ap))
               for s, r, ap in [(1, 1, 30.3), (2, 1, None), (3, 1, None), (1, 3, None), (2, 3, None),
                                (3, 3, 34.0)]),
    notes=("scales: 1 = {2^0}, 2 = {2^0, 2^(1/2)}, 3 = {2^0, 2^(1/3), 2^(2/3)}; ratios: 1 = {1:1}, "
           "3 = {1:2, 1:1, 2:1}",),
)

ATSS_4 = Table(
    name="atss_4",
    title="ATSS Table 4: candidates per level k",
    source="Zhang et al. 2020 (ATSS), Table 4: R50-FPN, 1x, 800 px, COCO minival",
    mini_overlay="mini_coco_atss.yaml",
    varied=("model.assigner.topk",),
    rows=tuple(Row(f"k_{k}", f"k = {k}", _ap(ap)) for k, ap in [
        (3, 38.0), (5, 38.8), (7, 39.1), (9, 39.3), (11, 39.1), (13, 39.0), (15, 39.1), (17, 39.2), (19, 38.9)]),
)

GFL = Table(
    name="gfl",
    title="GFL ablations: classification loss (FL vs QFL), box loss (with / without DFL), reg_max",
    source=("Li et al. 2020 (GFL); the ablation figures are unconfirmed here. QFL + DFL at reg_max 16 is the "
            "official repository's GFL R50 1x (800 px, COCO minival)"),
    mini_overlay="mini_coco_atss.yaml",
    varied=("model.loss_cls.type", "model.loss_box.type", "model.head.reg_max"),
    rows=(
        Row("fl_dfl", "FL + DFL + GIoU, reg_max 16", _ap(None)),
        Row("qfl_dfl", "QFL + DFL + GIoU, reg_max 16 (GFL default)", _ap(40.2)),
        Row("qfl_giou", "QFL + GIoU (no DFL), reg_max 16", _ap(None)),
        Row("fl_giou", "FL + GIoU (no DFL), reg_max 16", _ap(None)),
        *(Row(f"qfl_dfl_reg_max_{n}", f"QFL + DFL + GIoU, reg_max {n}", _ap(None)) for n in (4, 8, 12, 20)),
    ),
)

EFL = Table(
    name="efl",
    title="EFL: focal loss vs Equalized Focal Loss on LVIS v1 (R50 improved baseline, 2x, RFS)",
    source=("Li et al. 2022 (EFL), official benchmark, LVIS v1 val, R50-FPN improved baseline, 24 epochs, "
            "repeat-factor sampling; the focal-loss baseline row is unconfirmed here"),
    mini_overlay="mini_lvis_efl.yaml",
    varied=("model.loss_cls.type",),
    rows=(
        Row("fl", "focal loss", {"AP": None, "APr": None, "APc": None, "APf": None}),
        Row("efl", "equalized focal loss (gamma_b 2, s 8)", {"AP": 27.5, "APr": 20.2, "APc": 26.1, "APf": 32.4}),
    ),
    metrics=("AP", "APr", "APc", "APf"),
)

TABLES = {table.name: table for table in (RETINANET_1A, RETINANET_1B, RETINANET_1C, ATSS_4, GFL, EFL)}
