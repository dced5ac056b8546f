"""Small matplotlib helpers shared by the figure modules (Agg canvas, PNG output)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

# One palette for every figure (matplotlib's tab10), so gamma / model colours read alike across figures.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:gray", "tab:olive", "tab:cyan")


def new_figure(num_panels: int = 1, width_per_panel: float = 5.0, height: float = 4.0) -> tuple[Figure, list]:
    """A Figure with ``num_panels`` side-by-side axes (always returned as a list)."""
    if num_panels < 1:
        raise ValueError(f"need at least one panel, got {num_panels}")
    figure = Figure(figsize=(width_per_panel * num_panels, height), layout="constrained")
    axes = figure.subplots(1, num_panels, squeeze=False)[0]
    return figure, list(axes)


def save_png(figure: Figure, out: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG (parent folders created); returns the path."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: figures are written as PNG; give a file name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path
