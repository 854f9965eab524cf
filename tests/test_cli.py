"""The command line: help, info, single-file convert, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_factory import synthetic_chest
from pneumonode.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from pneumonode.config import SHIPPED_MODEL
from pneumonode.db.models import Delivery
from pneumonode.db.session import Database


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "pneumonode"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("info", "convert", "convert-siim"):
        assert command in result.stdout


def test_info_json_lists_decoders_for_every_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--format", "json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    plugins = {d["uid"]: d["plugins"] for d in info["decoders"]}
    assert plugins["1.2.840.10008.1.2.4.50"].startswith("pillow")  # JPEG Baseline
    assert "gdcm" in plugins["1.2.840.10008.1.2.4.57"]  # JPEG Lossless process 14
    assert plugins["1.2.840.10008.1.2.4.80"].startswith("pyjpegls")  # JPEG-LS
    assert plugins["1.2.840.10008.1.2.4.90"].startswith("pylibjpeg")  # JPEG 2000
    assert "none installed" not in json.dumps(info["decoders"])
    assert info["settings"]["image_size"] == 1024


def test_convert_single_files(
    siim_sample_dicoms: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "png"
    assert main(["convert", str(siim_sample_dicoms[0]), "--out", str(out), "--size", "512"]) == 0
    image = cv2.imread(str(out / f"{siim_sample_dicoms[0].stem}.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (512, 512) and image.dtype == np.uint8

    bad = tmp_path / "bad.dcm"
    bad.write_text("nope")
    capsys.readouterr()
    code = main(["convert", str(siim_sample_dicoms[1]), str(bad), "--out", str(out)])
    assert code == EXIT_PARTIAL
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: bad.dcm: not a DICOM file (no 'DICM' marker after the preamble)"]
    assert main(["convert", str(bad), "--out", str(out)]) == EXIT_ERROR


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert-siim", "--workers", "0"])
    assert info.value.code == EXIT_USAGE


def test_bad_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PNEUMONODE_IMAGE_SIZE", "huge")
    assert main(["info"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid configuration")


def test_unwritable_output_is_one_line(
    siim_sample_dicoms: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code = main(["convert", str(siim_sample_dicoms[0]), "--out", str(blocker / "out")])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(blocker) in err[0]


def test_an_operating_point_needs_a_calibrated_model(
    tiny_checkpoint: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PNEUMONODE_OPERATING_POINT on a model without a calibrated probability stops the worker
    with one line naming the setting, before anything starts."""
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tiny_checkpoint()))
    monkeypatch.setenv("PNEUMONODE_OPERATING_POINT", "0.4")
    assert main(["worker"]) == EXIT_ERROR
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "PNEUMONODE_OPERATING_POINT" in error and "calibrated" in error


def test_info_shows_the_model_the_node_serves(
    tiny_checkpoint: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its path, name, version, input size (the checkpoint's, not the convert setting's 1024)
    and the engine the node would pick, without loading the weights."""
    checkpoint = tiny_checkpoint(size=64)
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(checkpoint))
    monkeypatch.setenv("PNEUMONODE_INFERENCE_BACKEND", "torch")
    monkeypatch.setenv("PNEUMONODE_DEVICE", "cpu")
    assert main(["info"]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    model = table[table.index("model served:") + 1 : table.index("settings:")]
    assert model == [
        f"  path                 {checkpoint} (PNEUMONODE_MODEL_PATH)",
        "  name                 pneumonode-test-unet",
        "  version              0.0.1-test",
        "  input size           64 px (its config.json)",
        "  encoder              efficientnet-b0",
        "  probability          none calibrated (the mask decides)",
        "  engine               torch on cpu, precision auto (PNEUMONODE_INFERENCE_BACKEND=torch)",
    ]
    assert "  image_size           1024 (convert, convert-siim)" in table
    assert main(["info", "--format", "json"]) == EXIT_OK
    served = json.loads(capsys.readouterr().out)["model"]
    assert (served["path"], served["input_size"], served["version"]) == (
        str(checkpoint),
        64,
        "0.0.1-test",
    )
    assert (served["backend"], served["device"]) == ("torch", "cpu")


def test_info_shows_the_shipped_model_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((SHIPPED_MODEL / "config.json").read_text())
    assert main(["info", "--format", "json"]) == EXIT_OK
    served = json.loads(capsys.readouterr().out)["model"]
    assert served["path"] == str(SHIPPED_MODEL)
    assert served["configured_by"] == "shipped model"
    assert (served["name"], served["version"]) == (config["name"], config["version"])
    assert served["input_size"] == config["input"]["size"]
    assert served["calibrated"] is True
    assert served["operating_point"] == config["decision"]["threshold"]
    assert served["backend"] in ("torch", "onnxruntime", "openvino")


def test_info_names_a_model_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tmp_path / "none"))
    assert main(["info"]) == EXIT_OK  # info shows what is wrong; serve refuses to start
    table = capsys.readouterr().out
    assert f"  error                {tmp_path / 'none'}: no such checkpoint" in table


def test_predict_without_weights_uses_the_served_model(
    tiny_checkpoint: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    film = tmp_path / "film.png"
    cv2.imwrite(str(film), synthetic_chest(96, 80, 8))
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tiny_checkpoint(bias=20.0)))
    out = tmp_path / "out"
    args = ["predict", str(film), "--out", str(out), "--backend", "torch", "--precision", "fp32"]
    assert main(args) == EXIT_OK
    report = json.loads((out / "predictions.json").read_text())
    assert report["version"] == "0.0.1-test"
    assert [p["present"] for p in report["predictions"]] == [True]
    assert "film.png: pneumothorax" in capsys.readouterr().out
    # at the node's operating point, which this uncalibrated model cannot take: one line
    monkeypatch.setenv("PNEUMONODE_OPERATING_POINT", "0.4")
    assert main(args) == EXIT_ERROR
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: PNEUMONODE_OPERATING_POINT")


def test_deliveries_table_has_a_header_and_names_each_object(
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SEG, SR or SC (other classes by keyword), under a header row, the columns aligned."""
    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", database.url)
    classes = [SegmentationStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage]
    with database.session() as session:
        for k, sop_class in enumerate([*classes, DigitalXRayImageStorageForPresentation]):
            session.add(
                Delivery(
                    destination="PACS@127.0.0.1:11112",
                    path=f"/results/{k}.dcm",
                    sop_uid=f"1.2.3.{k}",
                    sop_class_uid=sop_class,
                    last_error="association rejected\nby PACS" if k == 0 else None,
                )
            )
    assert main(["deliveries"]) == EXIT_OK
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "ID",
        "OBJECT",
        "STATE",
        "DESTINATION",
        "ATTEMPTS",
        "NEXT_ATTEMPT_AT",
        "SOP_UID",
        "LAST_ERROR",
    ]
    objects = [line.split()[1] for line in lines]
    assert objects == ["DigitalXRayImageStorageForPresentation", "SC", "SR", "SEG"]  # newest first
    for line in lines:
        assert line.index("pending") == header.index("STATE")
    assert lines[-1].endswith("association rejected by PACS")
    assert lines[0].endswith("1.2.3.3  -")
