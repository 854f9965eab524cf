"""Post-processing, the Predictor on real and non-square DICOMs, overlays, `pneumonode predict`."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dicom_factory import make_dx, save, synthetic_chest
from pneumonode.cli import EXIT_OK, EXIT_PARTIAL, main
from pneumonode.model.checkpoint import (
    Architecture,
    CheckpointConfig,
    InputSpec,
    PostProcessing,
    save_checkpoint,
)
from pneumonode.model.network import build_unet
from pneumonode.model.postprocess import (
    binary_mask,
    grown_regions,
    remove_small_components,
    summarise,
)
from pneumonode.model.predictor import Predictor, cpu_supports_bf16
from pneumonode.results import render_overlay

# ------------------------------------------------------------------ post-processing


def test_small_components_are_removed() -> None:
    mask = np.zeros((40, 40), bool)
    mask[2:4, 2:4] = True  # 4 pixels
    mask[10:20, 10:20] = True  # 100 pixels
    kept = remove_small_components(mask, min_area=10)
    assert kept.sum() == 100 and not kept[2, 2]
    assert remove_small_components(mask, 0).sum() == 104


def test_top_score_gate() -> None:
    probability = np.full((8, 8), 0.2, np.float32)
    probability[2:5, 2:5] = 0.6
    assert binary_mask(probability, 0.5).sum() == 9
    assert binary_mask(probability, 0.5, top_score_threshold=0.7).sum() == 0


def test_regions_grow_from_their_core_down_to_the_grow_threshold() -> None:
    probability = np.full((40, 40), 0.05, np.float32)
    probability[5:15, 5:15] = 0.3  # a faint region around
    probability[8:12, 8:12] = 0.8  # a confident core: 16 pixels
    probability[25:35, 25:35] = 0.3  # a faint region with no core
    assert binary_mask(probability, 0.5).sum() == 16
    grown = binary_mask(probability, 0.5, grow_threshold=0.25)
    assert grown.sum() == 100 and grown[5, 5] and not grown[30, 30]
    # the minimum area counts the grown region
    assert binary_mask(probability, 0.5, 50, grow_threshold=0.25).sum() == 100
    assert binary_mask(probability, 0.5, 101, grow_threshold=0.25).sum() == 0
    # no growing at or above the threshold: the plain mask
    assert binary_mask(probability, 0.5, grow_threshold=0.5).sum() == 16
    # several minimum areas from one labelling, each as binary_mask gives it
    for area, mask in zip(
        (0, 50, 101), grown_regions(probability, 0.5, 0.25, (0, 50, 101)), strict=True
    ):
        assert np.array_equal(mask, binary_mask(probability, 0.5, area, grow_threshold=0.25))
    with pytest.raises(ValueError, match="grow_threshold"):
        PostProcessing(threshold=0.4, grow_threshold=0.6)


@pytest.mark.parametrize(
    ("orientation", "columns", "side"),
    [
        (["L", "F"], slice(70, 90), "left"),  # standard: patient's left on the image right
        (["L", "F"], slice(5, 25), "right"),
        (["R", "F"], slice(70, 90), "right"),  # a film flipped left-right
        (["L", "F"], slice(30, 70), "bilateral"),
    ],
)
def test_side_area_and_spacing(orientation: list[str], columns: slice, side: str) -> None:
    ds = make_dx(np.zeros((100, 100), np.uint16), 12)
    ds.PatientOrientation = orientation
    ds.ImagerPixelSpacing = [0.2, 0.1]
    mask = np.zeros((100, 100), bool)
    mask[10:30, columns] = True
    finding = summarise(mask, 0.9, ds)
    assert finding.present and finding.side == side and not finding.orientation_assumed
    assert finding.area_pixels == mask.sum()
    assert finding.area_mm2 == pytest.approx(mask.sum() * 0.02)


def test_no_spacing_no_mm2_and_empty_mask() -> None:
    finding = summarise(np.zeros((10, 10), bool), 0.1, None)
    assert not finding.present and finding.side is None and finding.area_mm2 is None
    assert finding.orientation_assumed


# ------------------------------------------------------------------------ predictor


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("ck")
    config = CheckpointConfig(
        architecture=Architecture(encoder="efficientnet-b0"),
        input=InputSpec(size=64),
        postprocess=PostProcessing(threshold=0.5, min_area_pixels=0),
        version="test",
    )
    save_checkpoint(build_unet("efficientnet-b0"), folder, config)
    return folder


def test_masks_come_back_at_the_source_size(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = Predictor.load(tiny_checkpoint, device="cpu", precision="fp32")
    path = save(
        make_dx(synthetic_chest(300, 200, 12), 12, window=([2048.0], [4000.0])), tmp_path / "x.dcm"
    )
    prediction = predictor.predict_dicom(path)
    assert prediction.probability.shape == (64, 64)
    assert prediction.mask.shape == (300, 200) and prediction.mask.dtype == bool
    assert prediction.prepared.source_pixels is not None
    assert prediction.prepared.source_pixels.shape == (300, 200)
    box = prediction.prepared.letterbox
    expected = box.to_source(prediction.probability >= 0.5)
    assert np.array_equal(prediction.mask, expected)
    assert prediction.finding.area_pixels == int(expected.sum())


def test_flip_tta_is_symmetric(tiny_checkpoint: Path) -> None:
    predictor = Predictor.load(tiny_checkpoint, device="cpu", precision="fp32", tta=True)
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    a = predictor.probabilities(x)[0]
    b = predictor.probabilities(x[..., ::-1].copy())[0]
    assert np.allclose(a, b[:, ::-1], atol=1e-5)


def test_threads_share_a_predictor_one_inference_at_a_time(tiny_checkpoint: Path) -> None:
    """The worker's threads pool shares one Predictor: results as if alone, and the engine (not
    thread-safe: one infer request) never runs two batches at once."""
    predictor = Predictor.load(tiny_checkpoint, device="cpu", precision="fp32")
    inputs = np.random.default_rng(1).random((8, 1, 1, 64, 64), dtype=np.float32)
    alone = [predictor.probabilities(x)[0] for x in inputs]
    engine_forward = predictor.engine.forward
    inside: list[int] = []
    most = [0]
    guard = threading.Lock()

    def counted(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with guard:
            inside.append(1)
            most[0] = max(most[0], len(inside))
        time.sleep(0.01)  # long enough for another thread to try to come in
        try:
            return engine_forward(batch)
        finally:
            with guard:
                inside.pop()

    predictor.engine.forward = counted  # type: ignore[method-assign]
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(lambda x: predictor.probabilities(x)[0], inputs))
    assert most[0] == 1
    for a, b in zip(alone, shared, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_stays_close_to_fp32(tiny_checkpoint: Path, siim_sample_dicoms: list[Path]) -> None:
    fp32 = Predictor.load(tiny_checkpoint, device="cpu", precision="fp32")
    bf16 = Predictor.load(tiny_checkpoint, device="cpu", precision="bf16")
    a = fp32.predict_dicom(siim_sample_dicoms[0]).probability
    b = bf16.predict_dicom(siim_sample_dicoms[0]).probability
    assert np.abs(a - b).max() < 0.05


def test_png_and_jpeg_inputs(tiny_checkpoint: Path, shared_data: Path) -> None:
    predictor = Predictor.load(tiny_checkpoint, device="cpu", precision="fp32")
    jpg = sorted((shared_data / "siim-positives" / "images").glob("*.jpg"))[0]
    prediction = predictor.predict_path(jpg)
    assert prediction.mask.shape == (1024, 1024)
    with pytest.raises(ValueError, match="not a readable PNG/JPEG"):
        bad = jpg.parent.parent / "index.csv"
        predictor.predict_image_file(bad)


def test_overlay() -> None:
    grey = np.full((50, 60), 100, np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[10:30, 10:40] = True
    rgb = render_overlay(grey, mask, opacity=0.5, outline=False)
    assert rgb.shape == (50, 60, 3)
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    assert rgb[20, 20, 0] > 150 and rgb[20, 20, 2] < 100  # tinted red-orange
    outlined = render_overlay(grey, mask)
    assert tuple(outlined[10, 20]) == (255, 64, 0)
    with pytest.raises(ValueError, match="differ in size"):
        render_overlay(grey, mask[:10])


def test_predict_cli(
    tiny_checkpoint: Path,
    siim_sample_dicoms: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    bad = tmp_path / "bad.dcm"
    bad.write_text("no")
    files = [str(siim_sample_dicoms[0]), str(bad)]
    code = main(
        [
            "predict",
            *files,
            "--weights",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--precision",
            "fp32",
        ]
    )
    assert code == EXIT_PARTIAL
    stem = siim_sample_dicoms[0].stem
    mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1024, 1024) and set(np.unique(mask)) <= {0, 255}
    overlay = cv2.imread(str(out / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (1024, 1024, 3)
    report = json.loads((out / "predictions.json").read_text())
    assert report["version"] == "test" and "not for clinical use" in report["note"]
    assert (report["precision"], report["device"]) == ("fp32", "cpu") and report["backend"]
    assert len(report["predictions"]) == 1 and report["predictions"][0]["area_pixels"] == int(
        (mask > 0).sum()
    )
    assert "error: bad.dcm: not a DICOM file" in capsys.readouterr().err
    assert main(["predict", files[0], "--weights", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert (
        main(["predict", files[0], "--weights", str(tiny_checkpoint), "--out", str(out)]) == EXIT_OK
    )
