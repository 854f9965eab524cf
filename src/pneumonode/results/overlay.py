"""Overlay pictures: the radiograph in grey with the finding drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["OVERLAY_RGB", "render_overlay"]

OVERLAY_RGB = (255, 64, 0)  # a red-orange that stands out on grey


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
