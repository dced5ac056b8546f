"""Self-describing checkpoints: the ``meta`` entry, a config and class names read back from it, a trained model.

Every checkpoint focaldet writes (training's ``last.pt`` / ``iter_*.pt``, ``tools/convert_torchvision.py``,
``tools/publish_checkpoint.py``) carries, beside the weights, a ``meta`` dict of plain types (so
``torch.load(weights_only=True)`` reads it):

==================  ===========================================================================================
``format``          1 (this layout)
``focaldet_version``  the version that wrote it
``model_type``      ``model.type`` (retinanet | atss | gfl)
``config``          the resolved config as plain data (:func:`detector.config.config_to_dict`)
``class_names``     name of each contiguous label 0..K-1
``category_ids``    the original category id of each label (as in the training annotations)
``mean``, ``std``   input normalisation on the [0, 1] scale
``test_min_size``, ``test_max_size``, ``size_divisor``   the test resize (shorter side, longer-side cap) and padding
==================  ===========================================================================================

The config alone would do for focaldet; the other entries are there so that anyone holding the file (another
tool, a serving stack) can read what the model expects without parsing focaldet's config schema.

Checkpoints written before the metadata existed load when a config is given; their class names are then read from
the config's annotation files (:func:`meta_from_config`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence

from torch import nn

from detector.config import ConfigError, config_from_mapping, config_to_dict
from detector.config_schema import Config
from detector.models import build_model
from detector.runtime.checkpoint import CheckpointError
from detector.runtime.model_state import StateDictMismatchError, load_model_state, model_state_from_checkpoint
from detector.version import __version__

__all__ = ["META_KEY", "META_FORMAT", "build_checkpoint_meta", "read_checkpoint_meta", "config_from_meta",
           "meta_from_config", "resolve_config_and_meta", "build_inference_model", "load_weights"]

logger = logging.getLogger("detector.predict")

META_KEY = "meta"
META_FORMAT = 1
_REQUIRED = {"format": int, "focaldet_version": str, "model_type": str, "config": dict, "class_names": list,
             "category_ids": list, "mean": list, "std": list, "test_min_size": int, "test_max_size": int,
             "size_divisor": int}


def build_checkpoint_meta(cfg: Config, class_names: Sequence[str], category_ids: Sequence[int]) -> dict:
    """The ``meta`` entry for a model trained with ``cfg`` on classes ``class_names`` (label order) whose
    annotation category ids are ``category_ids``."""
    class_names, category_ids = [str(name) for name in class_names], [int(i) for i in category_ids]
    if not len(class_names) == len(category_ids) == cfg.model.num_classes:
        raise ValueError(f"{len(class_names)} class names and {len(category_ids)} category ids for a model of "
                         f"model.num_classes={cfg.model.num_classes} classes")
    data = cfg.data
    return {"format": META_FORMAT, "focaldet_version": __version__, "model_type": cfg.model.type,
            "config": config_to_dict(cfg), "class_names": class_names, "category_ids": category_ids,
            "mean": [float(m) for m in data.mean], "std": [float(s) for s in data.std],
            "test_min_size": int(data.test_min_size), "test_max_size": int(data.test_max_size),
            "size_divisor": int(data.size_divisor)}


def read_checkpoint_meta(state: dict, path: str | os.PathLike) -> dict | None:
    """The checked ``meta`` of a loaded checkpoint, or None when it has none (written before metadata existed).

    Raises CheckpointError naming the file and the entry when the metadata is malformed."""
    meta = state.get(META_KEY)
    if meta is None:
        return None
    where = f"checkpoint {os.fspath(path)}: metadata"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} is a {type(meta).__name__}, expected a dict")
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{where} entry {key!r} is missing or not a {kind.__name__}")
    if meta["format"] > META_FORMAT:
        raise CheckpointError(f"{where} has format {meta['format']} (written by focaldet "
                              f"{meta['focaldet_version']}); this focaldet {__version__} reads format {META_FORMAT}")
    if len(meta["class_names"]) != len(meta["category_ids"]):
        raise CheckpointError(f"{where} lists {len(meta['class_names'])} class names but "
                              f"{len(meta['category_ids'])} category ids")
    return meta


def config_from_meta(meta: dict, path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """The config stored in a checkpoint's metadata with ``overrides`` (KEY=VALUE) applied; ConfigError names
    the checkpoint as where a bad key came from."""
    cfg = config_from_mapping(meta["config"], overrides, source=f"the config stored in {os.fspath(path)}")
    if cfg.model.num_classes != len(meta["class_names"]):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but checkpoint {os.fspath(path)} was "
                          f"trained on {len(meta['class_names'])} classes")
    return cfg


def _categories_of(ann_file: str) -> list[dict] | None:
    """The "categories" of an annotation file sorted by id (the datasets' label order), or None if unreadable."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            categories = json.load(f).get("categories")
        return sorted(categories, key=lambda cat: cat["id"])
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None


def meta_from_config(cfg: Config) -> dict:
    """Metadata for a checkpoint without any, from its config: class names and category ids from
    ``data.train.ann_file`` (else ``data.val.ann_file``), as the datasets number them (categories sorted by id).
    When neither file can be read (or their class count differs), names are the label numbers and category ids
    the labels, with a warning."""
    for ann_file in (cfg.data.train.ann_file, cfg.data.val.ann_file):
        categories = _categories_of(ann_file) if ann_file else None
        if categories is not None and len(categories) == cfg.model.num_classes:
            return build_checkpoint_meta(cfg, [str(cat.get("name", cat["id"])) for cat in categories],
                                         [cat["id"] for cat in categories])
    logger.warning("no class names: neither %s nor %s lists %d categories; labels stand for names and category ids",
                   cfg.data.train.ann_file, cfg.data.val.ann_file, cfg.model.num_classes)
    labels = list(range(cfg.model.num_classes))
    return build_checkpoint_meta(cfg, [str(label) for label in labels], labels)


def resolve_config_and_meta(checkpoint: str | os.PathLike, state: dict, config: Config | None = None,
                            overrides: Iterable[str] = ()) -> tuple[Config, dict]:
    """(config, metadata) for a loaded checkpoint: ``config`` when given (class names from the checkpoint's
    metadata, else from the config's annotation files), else the config the checkpoint carries with ``overrides``.

    Raises CheckpointError when neither a config is given nor the checkpoint carries one."""
    meta = read_checkpoint_meta(state, checkpoint)
    if config is not None:
        if meta is not None and len(meta["class_names"]) == config.model.num_classes:
            return config, {**meta, **build_checkpoint_meta(config, meta["class_names"], meta["category_ids"])}
        return config, meta_from_config(config)
    if meta is None:
        raise CheckpointError(f"checkpoint {os.fspath(checkpoint)} carries no config (it was written before "
                              "checkpoints held metadata): give the config it was trained with as well")
    return config_from_meta(meta, checkpoint, overrides), meta


def build_inference_model(cfg: Config) -> nn.Module:
    """``build_model`` for a model whose weights all come from a checkpoint: no backbone weights are fetched and
    no ``model.init_checkpoint`` is read (both would be overwritten; the first may need a download)."""
    m = cfg.model
    return build_model(dataclasses.replace(m, init_checkpoint=None,
                                           backbone=dataclasses.replace(m.backbone, weights=None)))


def load_weights(model: nn.Module, state: dict, checkpoint: str | os.PathLike, config_name: str | None = None) -> None:
    """Load a loaded checkpoint's model weights into ``model``; weights of another architecture raise
    CheckpointError listing the keys and shapes, naming the checkpoint and the config it was tried with."""
    try:
        load_model_state(model, model_state_from_checkpoint(state, checkpoint))
    except StateDictMismatchError as err:
        against = f" than {config_name}" if config_name else ""
        raise CheckpointError(f"checkpoint {os.fspath(checkpoint)}: {err}\n  (was it trained with another config"
                              f"{against}? Keys and shapes follow model.num_classes, model.backbone.depth, "
                              "model.neck.* and model.head.*)") from None

