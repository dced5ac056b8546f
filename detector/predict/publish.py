"""Publishing a checkpoint: weights and metadata only, no optimizer or trainer state (mmdetection's publish_model).

A training checkpoint holds the model, the optimizer's momentum buffers (as large again), the scheduler, scaler,
RNG states and counters. The published file keeps ``{"model": weights, "meta": metadata}``: what
:class:`~detector.predict.Detector`, ``tools/predict.py`` and ``tools/eval.py`` need. When the checkpoint holds
EMA weights (an ``ema`` entry with a model state: a state dict, or a dict with one under ``model``), those are
published, as they are the weights evaluation uses. The weights are loaded into the model their config builds
before anything is written, so a published file always loads.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from detector.config_schema import Config
from detector.predict.checkpoints import META_KEY, build_inference_model, load_weights, resolve_config_and_meta
from detector.runtime.checkpoint import load_checkpoint, save_checkpoint
from detector.runtime.model_state import model_state_from_checkpoint

__all__ = ["publish_checkpoint", "file_sha256"]

EMA_KEY = "ema"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish_checkpoint(source: str | os.PathLike, out: str | os.PathLike, config: Config | None = None,
                       hash_in_name: bool = False) -> tuple[Path, str, str]:
    """Write the weights and metadata of checkpoint ``source`` to ``out``; returns (written path, SHA-256, which
    weights: "ema" or "model").

    ``config``: the config to store instead of the checkpoint's own (needed for a checkpoint written before
    checkpoints carried metadata; its class names then come from the config's annotation files).
    ``hash_in_name``: write ``<stem>-<first 8 hex digits of the SHA-256><suffix>`` next to ``out`` instead
    (mmdetection's naming), so the name pins the content.
    Raises CheckpointError naming the file when it has no weights, no metadata and no config is given, or weights
    that do not fit the model of its config."""
    state = load_checkpoint(source, map_location="cpu")
    which = "ema" if isinstance(state.get(EMA_KEY), dict) else "model"
    weights = model_state_from_checkpoint(state[EMA_KEY] if which == "ema" else state,
                                          f"{os.fspath(source)}{' (ema)' if which == 'ema' else ''}")
    cfg, meta = resolve_config_and_meta(source, state, config)
    load_weights(build_inference_model(cfg), {"model": weights}, source)  # refuse weights that would not load
    published = {"model": {key: value.detach().clone().contiguous() for key, value in weights.items()},
                 META_KEY: meta}
    out = Path(out)
    save_checkpoint(out, published)
    sha = file_sha256(out)
    if hash_in_name:
        named = out.with_name(f"{out.stem}-{sha[:8]}{out.suffix}")
        os.replace(out, named)
        out = named
    return out, sha, which
