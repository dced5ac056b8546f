"""Make the ``lvis`` package (lvis-api 0.5.3, 2020) usable with NumPy >= 1.24.

The problem: ``lvis/eval.py`` (``LVISEval.accumulate``) calls ``np.cumsum(...).astype(dtype=np.float)``.
NumPy 1.24 removed the ``np.float`` alias, so ``LVISEval.run()`` raises ``AttributeError`` under NumPy 2.
A grep of lvis 0.5.3 for the removed aliases (``np.float``, ``np.int``, ``np.bool``, ``np.object``,
``np.str``, ``np.long``, ``np.complex``, ``np.unicode``) finds ``np.float`` only, twice, in eval.py.

The fix, without editing site-packages: ``lvis.eval`` looks up its global name ``np`` at call time, so
``patch_lvis_numpy`` rebinds that one name to a thin proxy module that forwards every attribute to the
real NumPy and adds the removed aliases (``float`` -> the builtin ``float``, which is exactly what
``np.float`` was).  Unlike a global ``np.float = float``, this leaves the ``numpy`` module untouched for
every other library in the process (some probe ``hasattr(np, "float")``).  The patch is idempotent and a
no-op on a NumPy that still has the aliases.

Use ``import_lvis()`` rather than ``import lvis``: it also keeps lvis' import-time
``logging.basicConfig(level=WARN)`` from installing a root handler in the host program (lvis' package
``__init__`` calls it; with a handler already on the root logger ``basicConfig`` does nothing).
"""

from __future__ import annotations

import builtins
import importlib
import logging
import sys
import types

import numpy as np

__all__ = ["REMOVED_NUMPY_ALIASES", "import_lvis", "patch_lvis_numpy"]

# Aliases lvis 0.5.3 uses that NumPy 1.24 removed, with the builtin each one was an alias of.
REMOVED_NUMPY_ALIASES = {"float": builtins.float}


class _NumpyForLvis(types.ModuleType):
    """``numpy`` as ``lvis.eval`` sees it: the real module plus the removed aliases."""

    def __init__(self) -> None:
        super().__init__("numpy", "numpy with the aliases lvis 0.5.3 needs (see detector.evaluation.lvis_compat)")
        for name, value in REMOVED_NUMPY_ALIASES.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> object:
        # Called only for names not set on the proxy: everything but the aliases.
        return getattr(np, name)


def patch_lvis_numpy(eval_module: types.ModuleType | None = None) -> bool:
    """Give ``lvis.eval`` (or ``eval_module``) a NumPy with the removed aliases; idempotent.

    Returns True when this call installed the proxy, False when nothing was needed (already patched,
    or this NumPy still has every alias).
    """
    if eval_module is None:
        eval_module = importlib.import_module("lvis.eval")
    current = getattr(eval_module, "np", None)
    if isinstance(current, _NumpyForLvis):
        return False
    if current is not np:
        raise RuntimeError(f"{eval_module.__name__}.np is {current!r}, expected the numpy module")
    if all(hasattr(np, name) for name in REMOVED_NUMPY_ALIASES):
        return False
    eval_module.np = _NumpyForLvis()
    return True


def import_lvis() -> types.ModuleType:
    """Import the ``lvis`` package with its NumPy aliases patched and without its logging side effect."""
    if "lvis" not in sys.modules:
        root = logging.getLogger()
        guard = logging.NullHandler()
        root.addHandler(guard)  # makes lvis' logging.basicConfig(...) a no-op
        try:
            importlib.import_module("lvis")
        finally:
            root.removeHandler(guard)
    patch_lvis_numpy(importlib.import_module("lvis.eval"))
    return sys.modules["lvis"]
