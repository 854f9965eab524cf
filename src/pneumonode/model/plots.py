"""Small pictures drawn with OpenCV: line charts of training curves, x-y charts (ROC, reliability)
and image grids."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["image_grid", "line_chart", "xy_chart"]

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def line_chart(
    series: Mapping[str, Sequence[float]], title: str, width: int = 640, height: int = 360
) -> np.ndarray:
    """A line chart of each series against its index (epoch). Returns RGB uint8 (H, W, 3)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 40, 40
    values = [v for s in series.values() for v in s if np.isfinite(v)]
    cv2.putText(canvas, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    if not values:
        return canvas
    low, high = min(values), max(values)
    if high == low:
        high = low + 1.0
    count = max(len(s) for s in series.values())
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(i: int, v: float) -> tuple[int, int]:
        x = left + (plot_w * i / max(count - 1, 1))
        y = top + plot_h * (1 - (v - low) / (high - low))
        return round(x), round(y)

    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 1.0):
        v = low + frac * (high - low)
        y = point(0, v)[1]
        cv2.putText(
            canvas, f"{v:.3g}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
        )
    cv2.putText(
        canvas,
        "epoch",
        (left + plot_w // 2 - 20, height - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    legend_x = left + 10
    for n, (name, data) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [point(i, v) for i, v in enumerate(data) if np.isfinite(v)]
        for a, b in itertools.pairwise(points):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, p, 3, colour, -1, cv2.LINE_AA)
        at_x = legend_x
        legend_x += cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] + 20
        cv2.putText(
            canvas,
            name,
            (at_x, top + 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            colour,
            1,
            cv2.LINE_AA,
        )
    return canvas


def image_grid(images: Sequence[np.ndarray], columns: int = 4, tile: int = 256) -> np.ndarray:
    """Tiles of RGB images (resized to ``tile``), row by row. Returns RGB uint8."""
    if not images:
        return np.full((tile, tile, 3), 255, np.uint8)
    rows = -(-len(images) // columns)
    grid = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for i, image in enumerate(images):
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        r, c = divmod(i, columns)
        grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = cv2.resize(
            rgb, (tile, tile), interpolation=cv2.INTER_AREA
        )
    return grid


def _text(
    canvas: np.ndarray,
    text: str,
    at: tuple[int, int],
    scale: float = 0.45,
    colour: tuple[int, int, int] = (0, 0, 0),
) -> None:
    cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def xy_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    x_label: str,
    y_label: str,
    *,
    diagonal: bool = True,
    markers: Mapping[str, tuple[float, float]] | None = None,
    size: int = 480,
) -> np.ndarray:
    """Curves on the unit square (ROC curves, reliability diagrams), the diagonal dashed, and
    labelled points (``markers``, e.g. the operating point). Returns RGB uint8 (H, W, 3)."""
    left, right, top, bottom = 55, 20, 40, 45
    width, height = size + left + right, size + top + bottom
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (left, 25), 0.55)

    def point(x: float, y: float) -> tuple[int, int]:
        return round(left + size * x), round(top + size * (1 - y))

    cv2.rectangle(canvas, point(0, 1), point(1, 0), (0, 0, 0), 1)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = point(tick, tick)
        _text(canvas, f"{tick:g}", (x - 8, top + size + 16), 0.4)
        _text(canvas, f"{tick:g}", (8, y + 4), 0.4)
    _text(canvas, x_label, (left + size // 2 - 4 * len(x_label), height - 8))
    _text(canvas, y_label, (8, top - 8))
    if diagonal:
        for k in range(0, 20, 2):
            cv2.line(
                canvas,
                point(k / 20, k / 20),
                point((k + 1) / 20, (k + 1) / 20),
                (160, 160, 160),
                1,
                cv2.LINE_AA,
            )
    for n, (name, (xs, ys)) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [point(x, y) for x, y in zip(xs, ys, strict=True) if np.isfinite(x + y)]
        for a, b in itertools.pairwise(points):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        if len(points) <= 20:
            for p in points:
                cv2.circle(canvas, p, 4, colour, -1, cv2.LINE_AA)
        _text(canvas, name, (left + 12, top + 20 + 20 * n), 0.5, colour)
    for label, (mark_x, mark_y) in (markers or {}).items():
        px, py = point(mark_x, mark_y)
        cv2.circle(canvas, (px, py), 6, (214, 39, 40), 2, cv2.LINE_AA)
        at = (px + 10, py + 18) if mark_x < 0.55 else (px - 8 * len(label) - 10, py + 18)
        _text(canvas, label, at, 0.45, (214, 39, 40))
    return canvas
