"""Importing a tracker's optional package only when the tracker is chosen, and a run id kept across resumes."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["TrackerUnavailableError", "TrackerStartError", "import_optional", "RunIdFile"]


class TrackerUnavailableError(ImportError):
    """A tracker listed in ``runtime.trackers`` needs a package that is not installed."""


class TrackerStartError(RuntimeError):
    """A tracker could not start its run (an unreachable MLflow server, W&B online without a login, ...)."""


def import_optional(module: str, tracker: str, extra: str) -> ModuleType:
    """``import module``, or one line naming the tracker and the focaldet extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise TrackerUnavailableError(
            f"runtime.trackers lists {tracker}, but the {module.split('.')[0]} package cannot be imported ({error}); "
            f"install it with: pip install 'focaldet[{extra}]' (or remove {tracker} from runtime.trackers)") from None


class RunIdFile:
    """``<work_dir>/<name>``: the tracker's run id, so that a resumed training run continues the same tracker run.

    A fresh start (iteration 0) always makes a new run; a resumed one reuses the id written by the run it
    continues, when there is one."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def previous(self, iteration: int) -> str | None:
        if iteration == 0 or not self.path.is_file():
            return None
        return self.path.read_text(encoding="utf-8").strip() or None

    def write(self, run_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(run_id + "\n", encoding="utf-8")
