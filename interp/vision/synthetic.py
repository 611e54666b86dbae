"""Drawn images for tests and demos (no photographs exist on machines without the datasets).

A scene is a grey background with, optionally, a coloured square: "There is a red square" is true
of one and false of the other, which is the existence question in its simplest form.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUND = (128, 128, 128)
COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def square_scene(size: int = 224, box: tuple[int, int, int, int] | None = None, color: str = "red") -> Image.Image:
    """A grey ``size`` x ``size`` image, with a filled square at ``box`` = (left, top, right, bottom)
    (exclusive right/bottom) in ``color``, or no square when ``box`` is None."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    if box is not None:
        left, top, right, bottom = box
        ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), fill=COLORS[color])
    return image


def patch_box(row: int, col: int, patch: int) -> tuple[int, int, int, int]:
    """The pixel box of patch (row, col) on a grid of ``patch``-pixel patches."""
    return col * patch, row * patch, (col + 1) * patch, (row + 1) * patch


def write_scenes(folder: str | os.PathLike, names: dict[str, bool], size: int = 224, color: str = "red") -> list[Path]:
    """Write one PNG per name: with a square (True) or without (False). Returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    third = size // 3
    for name, has_square in names.items():
        box = (third, third, 2 * third, 2 * third) if has_square else None
        path = folder / name
        square_scene(size, box, color).save(path)
        paths.append(path)
    return paths
