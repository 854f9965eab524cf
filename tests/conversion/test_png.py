"""Our PNG writer produces files that OpenCV and Pillow read back bit-exactly."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumonode.conversion import encode_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (1024, 1024), (300, 200, 3), (5, 1, 3)])
@pytest.mark.parametrize("level", [0, 1, 3])
def test_round_trip_through_opencv_and_pillow(shape: tuple[int, ...], level: int) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(image, level)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded.reshape(shape), image)
    with Image.open(io.BytesIO(data)) as pil:
        pil.load()  # verifies CRCs and the zlib stream
        assert pil.mode == ("L" if image.ndim == 2 else "RGB")
        assert np.array_equal(np.asarray(pil).reshape(shape), image)


def test_compresses_smooth_images() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    assert len(encode_png(ramp)) < ramp.nbytes / 20


@pytest.mark.parametrize(
    ("image", "level", "message"),
    [
        (np.zeros((4, 4), np.uint16), 1, "expected uint8"),
        (np.zeros((4, 4, 4), np.uint8), 1, "expected uint8"),
        (np.zeros((4, 4), np.uint8), 7, "level must be"),
        (np.zeros((0, 4), np.uint8), 1, "empty"),
    ],
)
def test_refuses_what_it_cannot_write(image: np.ndarray, level: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_png(image, level)
