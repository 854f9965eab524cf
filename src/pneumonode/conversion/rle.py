"""The SIIM-ACR pneumothorax run-length encoding, exactly as the challenge defined it.

Facts (the challenge's ``mask_functions.py``): pairs of (start, length); each start counts from
the end of the previous run (relative, not absolute); pixels are in column-major order (decode
into a flat array, reshape to (width, height), transpose); foreground is 255; ``-1`` means no
pneumothorax. This is not the common absolute, 1-based Kaggle RLE.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "EMPTY_MASK",
    "RleError",
    "decode_siim_rle",
    "encode_siim_rle",
    "read_siim_rle_csv",
    "siim_runs",
    "union_mask",
]

EMPTY_MASK = "-1"


class RleError(ValueError):
    """A run-length string is malformed or does not fit the image."""


def siim_runs(rle: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (start, length) of each run in the column-major flat image.

    Raises:
        RleError: odd number of values, non-integers, negative values, or a run past the end.
    """
    text = rle.strip()
    if text in (EMPTY_MASK, ""):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise RleError("run-length string contains non-integer values") from None
    if values.size % 2:
        raise RleError(f"run-length string has an odd number of values ({values.size})")
    gaps, lengths = values[0::2], values[1::2]
    if (gaps < 0).any() or (lengths <= 0).any():
        raise RleError("run-length string has a negative start or a non-positive length")
    # start_i = sum(gaps[:i+1]) + sum(lengths[:i])
    starts = np.cumsum(gaps) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    end = int(starts[-1] + lengths[-1])
    if end > width * height:
        raise RleError(f"runs end at pixel {end}, past the {width}x{height} image")
    return starts, lengths


def decode_siim_rle(rle: str, width: int = 1024, height: int = 1024) -> np.ndarray:
    """Decode one SIIM run-length string.

    Returns:
        uint8 mask of shape (height, width), 0 or 255.
    """
    starts, lengths = siim_runs(rle, width, height)
    flat = np.zeros(width * height, dtype=np.uint8)
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        flat[start : start + length] = 255
    return cv2.transpose(flat.reshape(width, height))


def encode_siim_rle(mask: np.ndarray) -> str:
    """Encode a mask (height, width), foreground = any non-zero value, as a SIIM string.

    The inverse of ``decode_siim_rle``: ``decode_siim_rle(encode_siim_rle(m), w, h) == (m>0)*255``.
    An empty mask gives ``"-1"``.
    """
    if mask.ndim != 2:
        raise RleError(f"mask must be 2-D, got shape {mask.shape}")
    flat = (mask.T.reshape(-1) > 0).astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return EMPTY_MASK
    lengths = ends - starts
    previous_ends = np.concatenate(([0], ends[:-1]))
    gaps = starts - previous_ends
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = gaps, lengths
    return " ".join(map(str, pairs.tolist()))


def union_mask(rles: Iterable[str], width: int = 1024, height: int = 1024) -> np.ndarray:
    """Union of several SIIM strings of one image (one per region), uint8 0/255 (height, width)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        mask |= decode_siim_rle(rle, width, height)
    return mask


def read_siim_rle_csv(path: Path) -> dict[str, list[str]]:
    """Read a SIIM label file: ImageId -> its run-length strings (``[]`` when labelled empty).

    Accepts ``.csv`` and ``.csv.gz``, with or without a UTF-8 byte-order mark, with or without a
    header row (``ImageId, EncodedPixels``, the second name possibly with a leading space).

    Raises:
        RleError: a row without two columns (with its line number).
        OSError: the file cannot be read.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    labels: dict[str, list[str]] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise RleError(f"{path.name} line {line_no}: expected 'ImageId,EncodedPixels'")
        image_id, rle = row[0].strip(), row[1].strip()
        if line_no == 1 and image_id.lower() == "imageid":
            continue
        runs = labels.setdefault(image_id, [])
        if rle != EMPTY_MASK:
            runs.append(rle)
    return labels
