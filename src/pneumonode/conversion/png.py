"""A fast PNG writer for 8-bit grey or RGB images.

Rows are filtered with PNG's "Up" filter (one vectorised subtraction) and deflated with ISA-L
(python-isal), about four times faster than zlib at level 1 with smaller output; the result is an
ordinary PNG that any reader decodes. Measured here on a 1024x1024 chest film: 3 ms instead of
22 ms for OpenCV's encoder at level 1 (bench/conversion.py).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib

__all__ = ["MAX_PNG_LEVEL", "encode_png"]

#: ISA-L deflate levels are 0 (fastest) to 3 (smallest).
MAX_PNG_LEVEL = 3

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
    )


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of ``image``.

    Args:
        image: uint8, shape (rows, cols) for grey or (rows, cols, 3) for RGB.
        level: deflate effort, 0 (fastest) to 3 (smallest).
    """
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"expected uint8 (rows, cols) or (rows, cols, 3), got {image.dtype} {image.shape}"
        )
    if not 0 <= level <= MAX_PNG_LEVEL:
        raise ValueError(f"PNG level must be 0..{MAX_PNG_LEVEL}, got {level}")
    rows, cols = image.shape[:2]
    if rows == 0 or cols == 0:
        raise ValueError("cannot encode an empty image")
    colour_type = 0 if image.ndim == 2 else 2
    lines = np.ascontiguousarray(image).reshape(rows, -1)
    filtered = np.empty((rows, lines.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 0] = 0  # the first row has no row above: filter None
    filtered[0, 1:] = lines[0]
    np.subtract(lines[1:], lines[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", isal_zlib.compress(filtered.tobytes(), level)),
            _chunk(b"IEND", b""),
        )
    )
