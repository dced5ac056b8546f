"""Where a config named on the command line (or to :func:`detector.config.load_config`) is read from.

The configs ship inside the package (``detector/configs``, the repository's ``configs/`` folder: a link in the
clone, copied into the wheel as package data), so an installed focaldet runs its configs from any folder:

* an existing file is read as given (``configs/quickstart.yaml`` in a clone, ``my_run.yaml`` anywhere);
* otherwise the path is looked up among the packaged configs, with or without its ``.yaml`` suffix and with or
  without a leading ``configs/``: ``quickstart``, ``retinanet/retinanet_r50_fpn_1x_coco``,
  ``configs/quickstart.yaml`` all resolve outside a clone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["packaged_configs_dir", "packaged_config_names", "resolve_config_path"]

CONFIG_SUFFIXES = (".yaml", ".yml")


def packaged_configs_dir() -> Path:
    """The folder of the configs shipped with the package."""
    return Path(__file__).parent / "configs"


def packaged_config_names() -> list[str]:
    """The packaged configs a user can name (``quickstart``, ``gfl/gfl_r50_fpn_1x_coco``, ...), bases excluded."""
    root = packaged_configs_dir()
    names = [path.relative_to(root).with_suffix("").as_posix() for path in root.rglob("*.yaml")]
    return sorted(name for name in names if "_base_" not in name.split("/"))


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path`` when it is a file, else the packaged config it names; unchanged when neither exists (the reader
    then reports the missing file)."""
    given = Path(path)
    if given.is_file():
        return given
    name = given.as_posix()
    name = name[len("configs/"):] if name.startswith("configs/") else name
    root = packaged_configs_dir()
    for candidate in ([name] if name.endswith(CONFIG_SUFFIXES) else [name + ".yaml", name + ".yml"]):
        packaged = root / candidate
        if packaged.is_file():
            return packaged
    return given
