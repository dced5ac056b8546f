"""Optimizer construction and gradient clipping.

The detectors in this project are trained with SGD + momentum, as in the RetinaNet, ATSS and GFL papers
(lr 0.01 for a total batch of 16, momentum 0.9, weight decay 1e-4); AdamW (decoupled weight decay) is the
other choice, as modern dense-detector recipes use. This module builds the parameter groups (optionally
exempting normalisation layers and biases from weight decay, as detectron2's ``WEIGHT_DECAY_NORM = 0`` and
mmdetection's ``norm_decay_mult = 0`` do, and optionally giving the backbone its own learning-rate multiplier,
mmdetection's ``paramwise_cfg.custom_keys={"backbone": dict(lr_mult=...)}``), the optimizer itself, and a
small gradient-clipping wrapper the trainer calls once per iteration, and :func:`load_optimizer_state`, which
restores a saved optimizer state or names the parameter groups that no longer match.

Nothing here reads a config: :func:`build_optimizer` takes explicit keyword arguments and the trainer
(or ``tools/``) maps config values onto them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from detector.runtime.checkpoint import CheckpointError

__all__ = ["NORM_LAYER_TYPES", "OPTIMIZERS", "OptimizerStateMismatchError", "build_param_groups", "build_optimizer",
           "clip_gradients", "load_optimizer_state"]


def _norm_layer_types() -> tuple[type[nn.Module], ...]:
    """Module classes whose parameters count as normalisation parameters.

    ``_BatchNorm`` is the common base of ``BatchNorm1d/2d/3d``, their lazy variants and ``SyncBatchNorm``;
    ``_InstanceNorm`` covers ``InstanceNorm1d/2d/3d``. Both bases are private in torch but have been stable
    since 1.0 and are the only way to catch every subclass (including user subclasses) by type.
    torchvision's ``FrozenBatchNorm2d`` holds buffers only, so it never contributes parameters.
    """
    types: list[type[nn.Module]] = [
        nn.modules.batchnorm._BatchNorm,
        nn.modules.instancenorm._InstanceNorm,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
    ]
    rms_norm = getattr(nn, "RMSNorm", None)  # torch >= 2.4
    if rms_norm is not None:
        types.append(rms_norm)
    return tuple(types)


NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = _norm_layer_types()


def build_param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool,
                       backbone: nn.Module | None = None, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Split the trainable parameters of ``model`` into optimizer parameter groups.

    Args:
        model: the module whose parameters are optimised. A DDP-wrapped model works too (its parameters are
            those of ``model.module``).
        weight_decay: weight decay for the ordinary ("decay") parameters.
        no_decay_norm_bias: when True, the parameters of normalisation layers (any module in
            :data:`NORM_LAYER_TYPES`: BatchNorm*, SyncBatchNorm, GroupNorm, LayerNorm, InstanceNorm*, RMSNorm)
            and every parameter named ``bias`` get ``weight_decay = 0``.
        backbone: a submodule of ``model`` (the detector's backbone) whose parameters train at
            ``lr * backbone_lr_mult``; only used when ``backbone_lr_mult != 1``.
        backbone_lr_mult: the backbone's learning-rate multiplier (> 0).

    Returns:
        A list of dicts ``{"params": [...], "weight_decay": float, "name": str}`` named, in this order,
        ``decay``, ``no_decay``, ``backbone_decay``, ``backbone_no_decay``; the backbone groups exist only with
        a multiplier other than 1 and carry ``"lr_mult"`` (which :func:`build_optimizer` turns into their
        ``lr``). Frozen parameters (``requires_grad=False``) are left out, every trainable parameter appears in
        exactly one group (parameters shared between modules are counted once), and empty groups are omitted.
        The ``name`` and ``lr_mult`` entries are ignored by torch optimizers.

    Raises:
        ValueError: if ``model`` has no trainable parameter, ``weight_decay`` is negative, or
            ``backbone_lr_mult`` is not positive or has no ``backbone`` to apply to.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if backbone_lr_mult <= 0:
        raise ValueError(f"backbone_lr_mult must be > 0, got {backbone_lr_mult}")
    split_backbone = backbone_lr_mult != 1.0
    if split_backbone and backbone is None:
        raise ValueError(f"backbone_lr_mult={backbone_lr_mult} needs the backbone module")

    no_decay_ids: set[int] = set()
    if no_decay_norm_bias:
        for module in model.modules():
            is_norm = isinstance(module, NORM_LAYER_TYPES)
            for param_name, param in module.named_parameters(recurse=False):
                if is_norm or param_name == "bias":
                    no_decay_ids.add(id(param))
    backbone_ids = {id(p) for p in backbone.parameters()} if split_backbone else set()

    named: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "backbone_decay": [], "backbone_no_decay": []}
    # named_parameters() de-duplicates shared (tied) parameters, so each tensor is visited once.
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = "no_decay" if id(param) in no_decay_ids else "decay"
        named[f"backbone_{kind}" if id(param) in backbone_ids else kind].append(param)

    if not any(named.values()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    groups: list[dict] = []
    for name, params in named.items():
        if not params:
            continue
        group = {"params": params, "weight_decay": 0.0 if name.endswith("no_decay") else float(weight_decay),
                 "name": name}
        if name.startswith("backbone_"):
            group["lr_mult"] = float(backbone_lr_mult)
        groups.append(group)
    return groups


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    no_decay_norm_bias: bool = False,
    nesterov: bool = False,
    fused: bool = False,
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    backbone: nn.Module | None = None,
    backbone_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """Build SGD with momentum or AdamW over the trainable parameters of ``model``.

    Args:
        model: the (possibly DDP-wrapped) detector.
        lr: base learning rate (the LR schedule scales it; see :mod:`detector.engine.lr_schedule`); the backbone
            groups start at ``lr * backbone_lr_mult``.
        momentum: SGD momentum factor (SGD only).
        weight_decay: weight decay of the "decay" groups: SGD adds ``weight_decay * w`` to the gradient (L2);
            AdamW decays decoupled from the adaptive step, ``w <- w - lr * weight_decay * w``.
        no_decay_norm_bias: exempt normalisation parameters and biases from weight decay
            (see :func:`build_param_groups`).
        nesterov: use Nesterov momentum (SGD only; requires ``momentum > 0``).
        fused: use torch's fused kernel (one kernel for the whole update) instead of the multi-tensor
            (``foreach``) implementation. Both compute the same update.
        optimizer: ``"sgd"`` or ``"adamw"``.
        betas, eps: AdamW's moment decay rates and denominator term (AdamW only).
        backbone, backbone_lr_mult: see :func:`build_param_groups`.

    Returns:
        ``torch.optim.SGD`` or ``torch.optim.AdamW``; by default the multi-tensor (``foreach``) implementation,
        which batches the update of all parameters into a few kernels on CUDA and is also supported on the CPU.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if nesterov and momentum <= 0:
        raise ValueError("nesterov=True requires momentum > 0")
    groups = build_param_groups(model, weight_decay=weight_decay, no_decay_norm_bias=no_decay_norm_bias,
                                backbone=backbone, backbone_lr_mult=backbone_lr_mult)
    for group in groups:
        if "lr_mult" in group:
            group["lr"] = lr * group["lr_mult"]
    implementation = dict(foreach=None if fused else True, fused=True if fused else None)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 **implementation)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                           **implementation)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float | None) -> float | None:
    """Clip the global L2 norm of the gradients in place.

    Args:
        parameters: the parameters whose ``.grad`` is clipped (e.g. ``model.parameters()``); parameters
            without a gradient are skipped.
        max_norm: maximum total norm. ``None`` or ``0`` disables clipping.

    Returns:
        The total gradient norm *before* clipping as a Python float (``inf``/``nan`` when a gradient is not
        finite, so the caller can skip the step or stop), ``0.0`` when no parameter has a gradient, and
        ``None`` when clipping is disabled (no norm is computed, saving a device synchronisation).

    With AMP the caller must ``scaler.unscale_(optimizer)`` first, otherwise the norm is that of the
    scaled gradients. Converting the norm to a float synchronises with the device once per call.
    """
    if not max_norm:
        return None
    if max_norm < 0:
        raise ValueError(f"max_norm must be > 0 (or None/0 to disable), got {max_norm}")
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return 0.0
    total_norm = nn.utils.clip_grad_norm_(with_grad, max_norm=float(max_norm))
    return float(total_norm)


class OptimizerStateMismatchError(CheckpointError):
    """A saved optimizer state does not fit this run's parameter groups (the message names them)."""


def _describe_groups(groups: list[dict], count) -> str:
    """'decay (171 parameters), no_decay (60 parameters)'."""
    return ", ".join(f"{group.get('name', f'group {index}')} ({count(group)} parameters)"
                     for index, group in enumerate(groups))


def _optimizer_kind(groups: list[dict]) -> str:
    """"adamw" or "sgd" from the hyper-parameters a group carries (AdamW's betas, SGD's momentum)."""
    if groups and "betas" in groups[0]:
        return "adamw"
    return "sgd" if groups and "momentum" in groups[0] else "an unknown optimizer"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict, source: str = "the checkpoint") -> None:
    """``optimizer.load_state_dict(state_dict)``, after checking that the saved parameter groups are this
    run's: the same number, names and sizes, in order. torch only says "loaded state dict contains a parameter
    group that doesn't match the size of optimizer's group"; this names them.

    Args:
        optimizer: the optimizer of the resumed run (e.g. from :func:`build_optimizer`).
        state_dict: the saved ``optimizer.state_dict()``.
        source: what the message calls the saved state, e.g. "checkpoint work_dirs/run/checkpoints/last.pt".

    Raises:
        OptimizerStateMismatchError (a CheckpointError): the groups differ, e.g. because
            ``schedule.optimizer``, ``schedule.no_decay_norm_bias``, ``schedule.backbone_lr_mult`` or the trainable
            parameters (``model.backbone.frozen_stages``,
            ``model.backbone.norm``) changed since the state was saved; the message lists both sides' groups.
    """
    saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if not isinstance(saved_groups, list) or not all(isinstance(g, dict) and "params" in g for g in saved_groups):
        raise OptimizerStateMismatchError(f"{source}: the optimizer state has no list of parameter groups")
    saved_kind, current_kind = _optimizer_kind(saved_groups), _optimizer_kind(optimizer.param_groups)
    if saved_kind != current_kind:
        raise OptimizerStateMismatchError(
            f"{source}: the optimizer state was saved by {saved_kind}, this run uses {current_kind}; "
            "schedule.optimizer must stay as it was to resume")
    saved = _describe_groups(saved_groups, lambda group: len(group["params"]))
    current = _describe_groups(optimizer.param_groups, lambda group: len(group["params"]))
    if saved != current:
        raise OptimizerStateMismatchError(
            f"{source}: the optimizer's parameter groups differ from this run's: saved {saved}; this run {current}. "
            "Settings that decide them (schedule.no_decay_norm_bias, schedule.backbone_lr_mult, "
            "model.backbone.frozen_stages, model.backbone.norm) must stay as they were to resume")
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError, TypeError) as error:
        raise OptimizerStateMismatchError(f"{source}: the optimizer state does not load: {error}") from None
