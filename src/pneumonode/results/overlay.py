"""Overlay pictures: the radiograph in grey with the finding drawn on it, and a text banner."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "BANNER_BACKGROUND_RGB",
    "BANNER_HIGHLIGHT_RGB",
    "BANNER_TEXT_RGB",
    "OVERLAY_RGB",
    "add_banner",
    "render_overlay",
]

OVERLAY_RGB = (255, 64, 0)  # a red-orange that stands out on grey
BANNER_BACKGROUND_RGB = (16, 16, 16)
BANNER_HIGHLIGHT_RGB = (255, 191, 0)  # amber: the line that says what the picture is
BANNER_TEXT_RGB = (240, 240, 240)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CAP_PX_AT_SCALE_1 = 20  # height of a capital letter of _FONT at scale 1 (ink over half)
_MIN_CAP_PX = 9


def render_overlay(
    grey: np.ndarray,
    mask: np.ndarray,
    *,
    opacity: float = 0.35,
    outline: bool = True,
    colour: tuple[int, int, int] = OVERLAY_RGB,
) -> np.ndarray:
    """Blend ``mask`` over ``grey``; with ``outline`` the region's border is drawn solid.

    Shape: grey (H, W) uint8, mask (H, W) bool -> (H, W, 3) uint8 RGB.
    """
    if grey.shape != mask.shape:
        raise ValueError(f"image {grey.shape} and mask {mask.shape} differ in size")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within [0, 1], got {opacity}")
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    region = mask.astype(bool)
    if region.any():
        tint = np.array(colour, dtype=np.float32)
        blended = rgb[region].astype(np.float32) * (1 - opacity) + tint * opacity
        rgb[region] = np.rint(blended).astype(np.uint8)
        if outline:
            thickness = max(1, round(max(grey.shape) / 400))
            contours, _ = cv2.findContours(
                region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(rgb, contours, -1, colour, thickness)
    return rgb


def _ascii(text: str) -> str:
    """``text`` as the Hershey fonts can draw it: accents dropped, anything else as '?'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return (
        "".join(c for c in decomposed if not unicodedata.combining(c))
        .encode("ascii", "replace")
        .decode("ascii")
    )


def _wrap(text: str, scale: float, thickness: int, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a single word
    that is wider stays whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def _widest(wrapped: list[tuple[list[str], bool]], scale: float, thickness: int) -> int:
    return max(
        cv2.getTextSize(line, _FONT, scale, thickness)[0][0] + thickness
        for parts, _ in wrapped
        for line in parts
    )


def add_banner(
    rgb: np.ndarray,
    lines: Sequence[str],
    *,
    highlighted: int = 1,
    text_share: float = 0.016,
) -> np.ndarray:
    """A dark band with ``lines`` of text put above ``rgb``; the picture itself is not covered.

    The text scales with the picture: capital letters are ``text_share`` of its larger side
    high (16 px on a 1024 px film, 48 px on a 3000 px one: the same share of a screen that
    shows the whole film, 25 px on a 1536 px one), at least 9 px. Lines too wide for the band
    are wrapped at spaces, and centred, clear of the corners where viewers print their own
    annotations. The first ``highlighted`` lines are drawn in amber, the rest in white.
    Non-ASCII characters are drawn without accents, or as '?'.

    Shape: rgb (H, W, 3) uint8 -> (H + band, W, 3) uint8; the last H rows are ``rgb``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"the picture must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if not lines:
        raise ValueError("a banner needs at least one line of text")
    rows, columns = rgb.shape[:2]
    cap = max(_MIN_CAP_PX, text_share * max(rows, columns))
    scale = cap / _CAP_PX_AT_SCALE_1
    thickness = max(1, round(scale * 1.6))
    margin = max(2, round(cap * 0.6))
    room = columns - 2 * margin
    wrapped = [
        (_wrap(_ascii(text), scale, thickness, room), k < highlighted)
        for k, text in enumerate(lines)
    ]
    # a single word wider than the band: the whole text smaller (ink runs past the measure)
    while (widest := _widest(wrapped, scale, thickness)) > room and scale > 0.05:
        scale *= 0.95 * room / widest
        thickness = max(1, round(scale * 1.6))
        cap = scale * _CAP_PX_AT_SCALE_1
    step = round(cap * 1.6)
    pad = round(cap * 0.7)
    count = sum(len(parts) for parts, _ in wrapped)
    band = np.full((2 * pad + count * step, columns, 3), BANNER_BACKGROUND_RGB, dtype=np.uint8)
    baseline = pad + round(cap)
    for parts, highlight in wrapped:
        colour = BANNER_HIGHLIGHT_RGB if highlight else BANNER_TEXT_RGB
        for line in parts:
            width = cv2.getTextSize(line, _FONT, scale, thickness)[0][0]
            origin = (max(margin, (columns - width) // 2), baseline)
            cv2.putText(band, line, origin, _FONT, scale, colour, thickness, cv2.LINE_AA)
            baseline += step
    return np.concatenate([band, rgb], axis=0)
