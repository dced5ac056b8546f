"""What the synthetic classes look like: a shape, a base colour and a texture per class, and their names.

Each shape maps normalised coordinates over an object's box to a mask; classes beyond the 10 shapes reuse
them with other colours and textures. Category ids are non-contiguous (1, 3, 5, ...), so code that confuses
ids with contiguous labels fails on the synthetic data.
"""

from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------------- shapes
# Each shape maps normalised coordinates u (left -> right) and v (top -> bottom) in [-1, 1] over the
# object's box to a boolean mask.
def circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) <= (v + 1.0) / 2.0  # apex at the top


def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)


def ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    radius2 = u * u + v * v
    return (radius2 <= 1.0) & (radius2 >= 0.5**2)


def diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star, one point up: fold the angle into one half-spike and test against its edge."""
    sector = 2.0 * math.pi / 5.0
    angle = np.mod(np.arctan2(u, -v), sector)  # 0 at a point
    angle = np.minimum(angle, sector - angle)  # in [0, sector / 2]
    radius = np.sqrt(u * u + v * v)
    px, py = radius * np.cos(angle), radius * np.sin(angle)
    inner = 0.42
    ix, iy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)  # inner vertex; outer is (1, 0)
    # Inside when on the origin's side of the line from (1, 0) to (ix, iy).
    return (px - 1.0) * iy - py * (ix - 1.0) <= 0.0


def ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v / 0.55) ** 2 <= 1.0


def frame(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) >= 0.55


def crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 >= 0.75**2)


SHAPES = (circle, square, triangle, cross, ring, diamond, star, ellipse, frame, crescent)

# Saturated base colours (RGB); classes beyond the palette get hues from the golden-ratio sequence.
_PALETTE = (
    (225, 35, 35), (35, 85, 235), (30, 185, 60), (240, 215, 30), (215, 45, 205),
    (30, 205, 215), (250, 125, 20), (125, 55, 205), (255, 120, 170), (165, 235, 35),
)


# ---------------------------------------------------------------------- textures
def texture_brightness(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor in about [0.65, 1.0] of texture `kind` at (u, v), broadcast to their shape."""
    if kind == 0:  # solid
        factor = np.ones(1)
    elif kind == 1:  # horizontal stripes
        factor = 0.68 + 0.32 * (np.sin(v * 3.0 * math.pi) > 0)
    elif kind == 2:  # vertical stripes
        factor = 0.68 + 0.32 * (np.sin(u * 3.0 * math.pi) > 0)
    elif kind == 3:  # checker
        factor = 0.68 + 0.32 * ((np.floor((u + 1) * 2) + np.floor((v + 1) * 2)) % 2)
    elif kind == 4:  # dots
        du, dv = np.mod(u * 2.0, 1.0) - 0.5, np.mod(v * 2.0, 1.0) - 0.5
        factor = 1.0 - 0.35 * (du * du + dv * dv < 0.08)
    elif kind == 5:  # diagonal stripes
        factor = 0.68 + 0.32 * (np.sin((u + v) * 2.5 * math.pi) > 0)
    elif kind == 6:  # radial gradient
        factor = 1.0 - 0.35 * np.clip(np.sqrt(u * u + v * v), 0.0, 1.0)
    else:  # vertical gradient
        factor = 0.65 + 0.35 * (v + 1.0) / 2.0
    return np.broadcast_to(factor, np.broadcast_shapes(u.shape, v.shape))


_NUM_TEXTURES = 8


def class_appearance(label: int) -> tuple[object, tuple[float, float, float], int]:
    """(shape function, base RGB colour, texture kind) of contiguous class `label`."""
    shape = SHAPES[label % len(SHAPES)]
    if label < len(_PALETTE):
        colour = tuple(float(c) for c in _PALETTE[label])
    else:
        hue = (label * 0.6180339887) % 1.0
        colour = tuple(255.0 * c for c in _hsv_to_rgb(hue, 0.85, 0.92))
    return shape, colour, label % _NUM_TEXTURES


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def class_names(num_classes: int) -> list[str]:
    """Names of the classes: the shape's name, suffixed by a variant number once the shapes repeat."""
    names = []
    for label in range(num_classes):
        name = SHAPES[label % len(SHAPES)].__name__
        names.append(name if label < len(SHAPES) else f"{name}_{label // len(SHAPES)}")
    return names


def category_id(label: int) -> int:
    """Non-contiguous COCO category id of contiguous class `label`: 1, 3, 5, ..."""
    return 2 * label + 1
