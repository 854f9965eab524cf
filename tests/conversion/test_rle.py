"""The SIIM run-length codec against the challenge's reference algorithm and the real labels."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumonode.conversion import (
    RleError,
    decode_siim_rle,
    encode_siim_rle,
    read_siim_rle_csv,
    union_mask,
)
from pneumonode.conversion.rle import siim_runs


def reference_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The challenge's mask_functions.rle2mask, verbatim in behaviour (the oracle)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position : current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height).T


def test_sample_labels_decode_to_the_reference_masks(siim_sample: Path) -> None:
    labels = read_siim_rle_csv(siim_sample / "train-rle-sample.csv")
    assert len(labels) == 10
    assert sum(bool(rles) for rles in labels.values()) == 5
    for image_id, rles in labels.items():
        expected = cv2.imread(str(siim_sample / "masks" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(union_mask(rles), expected), image_id


def test_encode_decode_round_trip_on_sample_masks(siim_sample: Path) -> None:
    for path in sorted((siim_sample / "masks").glob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        rle = encode_siim_rle(mask)
        assert np.array_equal(decode_siim_rle(rle), mask)
        if mask.any():
            assert np.array_equal(reference_rle2mask(rle, 1024, 1024), mask)
        else:
            assert rle == "-1"


def test_round_trip_random_masks_non_square_and_edges() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        height, width = rng.integers(1, 60, size=2)
        mask = (rng.random((height, width)) > 0.6).astype(np.uint8) * 255
        mask[0, 0] = 255  # a run starting at pixel 0
        mask[-1, -1] = 255  # a run ending at the last pixel
        rle = encode_siim_rle(mask)
        assert np.array_equal(decode_siim_rle(rle, int(width), int(height)), mask)
        assert np.array_equal(reference_rle2mask(rle, int(width), int(height)), mask)


def test_starts_are_relative_and_pixels_column_major() -> None:
    # "2 3 4 1": pixels 2,3,4 then (4 later) pixel 9, counted down the columns of a 4x4 image
    mask = decode_siim_rle("2 3 4 1", width=4, height=4)
    flat_column_major = mask.T.reshape(-1)
    assert np.flatnonzero(flat_column_major).tolist() == [2, 3, 4, 9]
    assert mask[2, 0] == 255 and mask[0, 1] == 255 and mask[1, 2] == 255


def test_several_rows_of_one_image_are_united(siim_sample: Path) -> None:
    mask = cv2.imread(
        str(siim_sample / "masks" / "1.2.276.0.7230010.3.1.4.8323329.1314.1517875167.222290.png"),
        cv2.IMREAD_GRAYSCALE,
    )
    split = int(np.median(np.nonzero(mask)[1]))  # a column through the region
    left, right = mask.copy(), mask.copy()
    left[:, split:] = 0
    right[:, :split] = 0
    rows = [f"A,{encode_siim_rle(left)}", f"A,{encode_siim_rle(right)}", "B,-1"]
    text = "\ufeffImageId, EncodedPixels\n" + "\n".join(rows) + "\n"
    labels = _parse(text)
    assert len(labels["A"]) == 2 and labels["B"] == []
    assert np.array_equal(union_mask(labels["A"]), mask)


def _parse(text: str) -> dict[str, list[str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        path.write_text(text, encoding="utf-8")
        return read_siim_rle_csv(path)


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffid1,-1\nid2,1 2\n",  # byte-order mark, no header (the sample file)
        "ImageId,EncodedPixels\nid1,-1\nid2,1 2\n",
        "ImageId, EncodedPixels\nid1, -1\nid2, 1 2\n",  # leading spaces (some copies)
        "\ufeffImageId, EncodedPixels\r\nid1,-1\r\nid2,1 2\r\n\r\n",
    ],
)
def test_csv_variants(text: str) -> None:
    assert _parse(text) == {"id1": [], "id2": ["1 2"]}


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv.gz"
    path.write_bytes(gzip.compress(b"ImageId, EncodedPixels\nx,-1\ny,5 5\n"))
    assert read_siim_rle_csv(path) == {"x": [], "y": ["5 5"]}


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("-3 2", "negative"),
        ("5 0", "non-positive"),
        ("0 17", "past the 4x4 image"),
    ],
)
def test_malformed_rle_is_refused(rle: str, message: str) -> None:
    with pytest.raises(RleError, match=message):
        decode_siim_rle(rle, 4, 4)


def test_csv_row_without_two_columns_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ImageId,EncodedPixels\nid1,-1\njustoneword\n")
    with pytest.raises(RleError, match="line 3"):
        read_siim_rle_csv(path)


def test_full_label_file_every_row_decodes_inside_1024(shared_data: Path) -> None:
    path = shared_data / "siim-labels" / "siim-pneumothorax-train-rle.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    rows = list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode("utf-8-sig"))))
    body = rows[1:]
    assert len(body) == 12_954
    decoded = 0
    for image_id, rle in body:
        starts, lengths = siim_runs(rle, 1024, 1024)
        if rle.strip() == "-1":
            assert starts.size == 0
            continue
        mask = decode_siim_rle(rle)
        assert int(np.count_nonzero(mask)) == int(lengths.sum()), image_id
        decoded += 1
    labels = read_siim_rle_csv(path)
    assert len(labels) == 12_047
    assert sum(bool(v) for v in labels.values()) == 2_669
    assert decoded == sum(len(v) for v in labels.values())
    # spot-check the vectorised decoder against the challenge's loop on every 25th region
    regions = [r for v in labels.values() for r in v]
    for rle in regions[::25]:
        assert np.array_equal(decode_siim_rle(rle), reference_rle2mask(rle, 1024, 1024))
