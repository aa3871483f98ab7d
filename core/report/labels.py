"""Text in pictures: one font for every PNG label, and labels that do not overlap in matplotlib plots.

PIL's built-in bitmap font and the small default FreeType font both render a word space 1-2 pixels wide,
so "no guidance" read as "noguidance" in the grids. Labels are drawn with DejaVu Sans instead: the
TrueType font matplotlib (a dependency) ships in its own data folder, under its own licence (Bitstream Vera
/ DejaVu, in matplotlib's distribution), so nothing is downloaded and no font file is added here. Should a
matplotlib build lack it, Pillow's scalable default (`ImageFont.load_default(size=...)`, Pillow >= 10.1,
also FreeType, but with the narrow space) is used.
"""

from __future__ import annotations

import functools
import os
from typing import Any

#: Label size in pixels (a 64-pixel grid cell holds about four lines of it).
LABEL_SIZE = 11


@functools.cache
def label_font(size: int = LABEL_SIZE) -> Any:
    """The PIL font every PNG label is drawn with: DejaVu Sans at `size` pixels (see the module docstring)."""
    import matplotlib
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    if os.path.isfile(path):
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int = LABEL_SIZE) -> float:
    """Width in pixels of `text` drawn with `label_font(size)`."""
    return float(label_font(size).getlength(text))


def fit_text(text: str, width: float, size: int = LABEL_SIZE) -> str:
    """`text`, cut at a word and ended with '...' when it is wider than `width` pixels."""
    if text_width(text, size) <= width:
        return text
    words = text.split(" ")
    while len(words) > 1 and text_width(" ".join(words) + "...", size) > width:
        words.pop()
    cut = " ".join(words)
    while cut and text_width(cut + "...", size) > width:
        cut = cut[:-1]
    return cut + "..."


def spread_labels(ax: Any, annotations: list[Any], passes: int = 60) -> None:
    """Move matplotlib annotations (offset-point labels) apart until none overlaps another, nudging the later
    of two overlapping labels up or down by the overlap (alternating), so close points keep readable labels."""
    if len(annotations) < 2:
        return
    fig = ax.figure
    fig.canvas.draw()  # lay the figure out first: an undrawn annotation has no extent yet
    renderer = fig.canvas.get_renderer()
    for _ in range(passes):
        moved = False
        boxes = [a.get_window_extent(renderer) for a in annotations]
        for i in range(len(annotations)):
            for j in range(i + 1, len(annotations)):
                a, b = boxes[i], boxes[j]
                if a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0:
                    continue
                up = (b.y0 + b.y1) >= (a.y0 + a.y1)
                shift = (a.y1 - b.y0 + 1) if up else -(b.y1 - a.y0 + 1)
                x, y = annotations[j].xyann
                annotations[j].xyann = (x, y + shift * 72 / fig.dpi)
                boxes[j] = annotations[j].get_window_extent(renderer)
                moved = True
        if not moved:
            return


def overlapping(ax: Any, annotations: list[Any]) -> list[tuple[str, str]]:
    """Pairs of annotation texts whose drawn boxes overlap (for tests and checks)."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    boxes = [(a.get_text(), a.get_window_extent(renderer)) for a in annotations]
    return [(p, q) for i, (p, a) in enumerate(boxes) for q, b in boxes[i + 1:]
            if not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)]


__all__ = ["LABEL_SIZE", "fit_text", "label_font", "overlapping", "spread_labels", "text_width"]
