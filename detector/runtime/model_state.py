"""Model weights in and out of checkpoints: unwrapping DDP / compiled models and loading state dicts with every
mismatch named (missing keys, unexpected keys, shapes), so a checkpoint of another model fails readably."""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import torch
from torch import nn

from detector.runtime.checkpoint import CheckpointError, load_checkpoint

__all__ = [
    "StateDictMismatchError",
    "LoadResult",
    "load_model_state",
    "load_model_checkpoint",
    "model_kind",
    "model_state_from_checkpoint",
    "has_ema_weights",
    "EMA_KEY",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

_MAX_LISTED_KEYS = 50
# Parameters only one kind of dense head has: how a state dict shows the model it was saved from (checkpoints
# do not record model.type). The anchor head serves both retinanet and atss configs.
_HEAD_SIGNATURES = (("head.box_bins.", "gfl"), ("head.box_deltas.", "retinanet / atss"))


class StateDictMismatchError(CheckpointError):
    """The keys or shapes of a state dict do not match the model (see the attributes for the full lists).

    ``saved_kind`` is set ("gfl", "retinanet / atss") when the state dict belongs to another kind of detector
    than the model; the message then is one line naming both."""

    def __init__(self, message: str, missing_keys: list[str], unexpected_keys: list[str],
                 shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
                 saved_kind: str | None = None) -> None:
        super().__init__(message)
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.shape_mismatches = shape_mismatches
        self.saved_kind = saved_kind


class LoadResult(NamedTuple):
    """What :func:`load_model_state` could not load (all empty after a clean load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint shape, model shape)



def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove a ``module.`` (DDP / DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by all keys."""
    for prefix in ("module.", "_orig_mod."):
        while state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def _format_keys(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f", ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"  {title} ({len(keys)}): {shown}{more}"


def model_kind(keys) -> str | None:
    """Which detector a state dict's keys belong to: "gfl", "retinanet / atss" (the anchor head), or None."""
    keys = list(keys)
    for prefix, kind in _HEAD_SIGNATURES:
        if any(key.startswith(prefix) for key in keys):
            return kind
    return None


def _other_model_message(source: str, saved_kind: str, own_kind: str, model_type: str | None) -> str:
    """One line for weights of another kind of detector than the model (e.g. GFL weights, RetinaNet model)."""
    saved_key = next(prefix for prefix, kind in _HEAD_SIGNATURES if kind == saved_kind)
    own_key = next(prefix for prefix, kind in _HEAD_SIGNATURES if kind == own_kind)
    built = f"the config builds {model_type}" if model_type else f"this model is a {own_kind} model"
    return (f"{source} holds a {saved_kind} model, {built} (its head has {saved_key}*, this one {own_key}*); "
            f"use a checkpoint trained with the same model.type")


def _list_mismatches(title: str, missing: list[str], unexpected: list[str],
                     mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> str:
    lines = [title]
    if missing:
        lines.append(_format_keys("missing keys", missing))
    if unexpected:
        lines.append(_format_keys("unexpected keys", unexpected))
    if mismatched:
        lines.append(_format_keys(
            "shape mismatches (key: checkpoint -> model)",
            [f"{key}: {list(src)} -> {list(dst)}" for key, src, dst in mismatched],
        ))
    return "\n".join(lines)


def load_model_state(model: nn.Module, state_dict: dict[str, Any], strict: bool = True, source: str | None = None,
                     model_type: str | None = None) -> LoadResult:
    """Load ``state_dict`` into ``model``, explaining every mismatch by name.

    A ``module.`` prefix (state saved from a DDP-wrapped model) is stripped, and a wrapped ``model``
    (DDP, DataParallel, torch.compile) is unwrapped, so any combination of wrapped/unwrapped loads.

    Args:
        model: the module to load into.
        state_dict: parameters and buffers, e.g. ``load_checkpoint(path)["model"]``.
        strict: if True, any missing key, unexpected key or shape mismatch raises
            :class:`StateDictMismatchError` listing them all and nothing is loaded. If False, the matching
            entries are loaded, shape-mismatched ones are skipped (e.g. a classifier trained for another
            number of classes), and the mismatches are returned and logged as a warning.
        source: what the messages call the state dict, e.g. "checkpoint work_dirs/gfl/checkpoints/last.pt".
        model_type: the config's ``model.type``, named when the weights belong to another kind of detector.

    Weights of another kind of detector (a GFL state dict for a RetinaNet / ATSS model or the reverse, told
    apart by their heads' keys) raise one line instead of the key lists: "checkpoint X holds a gfl model, the
    config builds retinanet (...)"; the lists stay on the exception's attributes.

    Returns:
        A :class:`LoadResult` of the keys that were not loaded.
    """
    target = unwrap_model(model)
    state_dict = _strip_wrapper_prefixes(dict(state_dict))
    model_state = target.state_dict()

    missing = [key for key in model_state if key not in state_dict]
    unexpected = [key for key in state_dict if key not in model_state]
    mismatched = [
        (key, tuple(value.shape), tuple(model_state[key].shape))
        for key, value in state_dict.items()
        if key in model_state and isinstance(value, torch.Tensor) and value.shape != model_state[key].shape
    ]
    result = LoadResult(missing, unexpected, mismatched)

    if missing or unexpected or mismatched:
        saved_kind, own_kind = model_kind(state_dict), model_kind(model_state)
        other_model = bool(saved_kind and own_kind and saved_kind != own_kind)
        title = f"{source + ': ' if source else ''}state dict does not match {type(target).__name__}:"
        if other_model:
            title = _other_model_message(source or "the state dict", saved_kind, own_kind, model_type)
        # Weights of another detector, refused: the one line says it all. Otherwise every key is listed.
        message = title if other_model and strict else _list_mismatches(title, missing, unexpected, mismatched)
        if strict:
            raise StateDictMismatchError(message, missing, unexpected, mismatched,
                                         saved_kind=saved_kind if other_model else None)
        logger.warning("%s\n  (strict=False: loading the matching entries only)", message)

    skipped = {key for key, _, _ in mismatched}
    loadable = {key: value for key, value in state_dict.items() if key in model_state and key not in skipped}
    target.load_state_dict(loadable, strict=False)
    return result


EMA_KEY = "ema"  # a training checkpoint's entry holding the moving average of the weights (runtime.ema)


def has_ema_weights(state: dict) -> bool:
    """True when a loaded checkpoint holds a moving average of the weights (``runtime.ema``)."""
    return isinstance(state.get(EMA_KEY), dict) and "model" in state[EMA_KEY]


def model_state_from_checkpoint(state: dict, path: str | os.PathLike = "checkpoint",
                                prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict inside a loaded checkpoint: ``state["model"]`` (what the trainer saves), or
    ``state`` itself when it is a bare state dict (every value a tensor, e.g. exported weights). With
    ``prefer_ema``, a training checkpoint's moving average of the weights (``state["ema"]["model"]``, written
    with ``runtime.ema``) when it holds one: the weights training evaluated.

    Raises:
        CheckpointError: naming the file, when there is no ``"model"`` entry and ``state`` is not a state
            dict, or when the state dict is not a mapping of names to tensors.
    """
    path = os.fspath(path)
    if prefer_ema and has_ema_weights(state):
        state, path = state[EMA_KEY], f"{path} ({EMA_KEY})"
    if "model" in state:
        state_dict = state["model"]
        where = f"checkpoint {path}: entry 'model'"
    elif state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    else:
        keys = ", ".join(repr(key) for key in list(state)[:10]) or "none"
        raise CheckpointError(f"checkpoint {path} has no 'model' entry and is not a state dict of tensors "
                              f"(top-level keys: {keys})")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{where} holds a {type(state_dict).__name__}, expected a state dict")
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where} is not a state dict of tensors: {', '.join(map(repr, bad[:10]))} "
                              f"{'is not a tensor' if len(bad) == 1 else 'are not tensors'}")
    return state_dict


def load_model_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                          model_type: str | None = None, prefer_ema: bool = False) -> LoadResult:
    """Load the model weights of checkpoint ``path`` into ``model`` (see :func:`load_model_state`).

    Every error names the file: :class:`CheckpointError` for a missing, unreadable or foreign file (not a
    checkpoint, garbage bytes, JSON, a checkpoint without model weights) and :class:`StateDictMismatchError`
    (with its key lists) for weights that do not fit the model, e.g. from a config with another
    ``model.num_classes`` or backbone depth; its message is one line when the checkpoint holds another kind
    of detector (``model_type``, the config's ``model.type``, is then named). ``prefer_ema``: see
    :func:`model_state_from_checkpoint`.
    """
    path = os.fspath(path)
    state = load_checkpoint(path, map_location="cpu")
    if prefer_ema and has_ema_weights(state):
        logger.info("%s: evaluating the moving average of the weights (runtime.ema) it holds", path)
    state_dict = model_state_from_checkpoint(state, path, prefer_ema)
    return load_model_state(model, state_dict, strict=strict, source=f"checkpoint {path}", model_type=model_type)
