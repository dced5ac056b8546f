"""Config values that depend on the data: the synthetic generator switch and ``model.num_classes: auto``.

Both run when a config is loaded (:func:`detector.config.config_from_dict`, before the cross-section checks), so
every tool, the work dir's ``config.yaml`` and every checkpoint's metadata see the resolved values.

**The synthetic generator switch.** A config based on a synthetic quick-start config has
``data.synthetic.enabled: true`` and data paths under ``data.synthetic.root``. When both ``data.train.ann_file``
and ``data.val.ann_file`` point outside that root, the config reads the user's own data: the generator is turned
off (``data.synthetic.enabled`` resolves to false, said in one log line), since its files would be read by nobody
and its class count would only stand in the way. When only one of the two points outside, the generator stays on
(the other split is its output); should the class counts then disagree, the error says what to set
(``data.synthetic.enabled: false`` and the other split's paths, see ``Config.check``).

**``model.num_classes: auto``**: the number of entries in the ``categories`` of ``data.train.ann_file`` (COCO and
LVIS format alike), or ``data.synthetic.num_classes`` when the generator is on and writes that file (it writes
exactly that many categories, possibly not yet on disk). A missing or unreadable annotation file stops with one
line naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from detector.config_schema import Config
from detector.data.annotation_files import load_detection_json

__all__ = ["AUTO", "resolve_data_dependent", "is_under", "reads_own_data", "count_categories"]

AUTO = "auto"
logger = logging.getLogger(__name__)


def is_under(path: str, root: str) -> bool:
    """Whether ``path`` lies inside the folder ``root`` (both taken relative to the working directory)."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def reads_own_data(cfg: Config, split: str) -> bool:
    """Whether ``data.<split>.ann_file`` lies outside ``data.synthetic.root`` (a file the generator does not write)."""
    return not is_under(getattr(cfg.data, split).ann_file, cfg.data.synthetic.root)


def _resolve_synthetic_switch(cfg: Config) -> Config:
    syn = cfg.data.synthetic
    if not (syn.enabled and reads_own_data(cfg, "train") and reads_own_data(cfg, "val")):
        return cfg
    logger.info("data.train.ann_file and data.val.ann_file are outside data.synthetic.root (%s): the synthetic "
                "generator is off (data.synthetic.enabled: false)", syn.root)
    data = dataclasses.replace(cfg.data, synthetic=dataclasses.replace(syn, enabled=False))
    return dataclasses.replace(cfg, data=data)


def count_categories(ann_file: str) -> int:
    """The number of categories a COCO- or LVIS-format annotation file declares; errors name the file."""
    if not os.path.isfile(ann_file):
        raise ValueError(f"model.num_classes: auto reads the class count from data.train.ann_file, but {ann_file} "
                         "does not exist: set data.train.ann_file to your training annotations (e.g. written by "
                         "tools/convert_dataset.py), or model.num_classes to the number of classes")
    categories = load_detection_json(ann_file)["categories"]
    if not categories:
        raise ValueError(f"{ann_file}: model.num_classes: auto found no categories in the file (its 'categories' "
                         "list is empty): add them, or set model.num_classes")
    return len(categories)


def _resolve_num_classes(cfg: Config) -> Config:
    if cfg.model.num_classes != AUTO:
        return cfg
    syn = cfg.data.synthetic
    generated = syn.enabled and not reads_own_data(cfg, "train")
    num_classes = syn.num_classes if generated else count_categories(cfg.data.train.ann_file)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


def resolve_data_dependent(cfg: Config) -> Config:
    """``cfg`` with the synthetic switch and ``model.num_classes: auto`` resolved (see the module docstring);
    raises ValueError naming the keys or the file."""
    return _resolve_num_classes(_resolve_synthetic_switch(cfg))
