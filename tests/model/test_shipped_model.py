"""The model that ships in models/: the exact file, and the numbers its model card promises.

The 10 SIIM sample DICOMs are the public sanity check (nothing was chosen on them): the shipped
checkpoint must reproduce the calibrated probability, the decision and the Dice its MODEL_CARD.md
records for each, and call all 5 positives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest

from pneumonode.config import SHIPPED_MODEL, Settings
from pneumonode.model.checkpoint import file_sha256, read_checkpoint_config
from pneumonode.model.metrics import dice
from pneumonode.model.predictor import Predictor

#: sha256 of models/pneumothorax-triage-lite2/model.safetensors; a new model changes it on purpose.
SHIPPED_SHA256 = "b2cc9c968e2d105a0792fe1e6542b0a1d9efd0dd3af15f7e99f2b0bfefb358a0"
PROBABILITY_TOLERANCE = 0.02
DICE_TOLERANCE = 0.02

CARD_ROW = re.compile(
    r"^\| `([0-9.]+)` \| (negative|positive) \| ([0-9.]+) \| (present|absent) \| ([0-9.]+) \|",
    re.M,
)


def _card_rows() -> dict[str, tuple[str, float, bool, float]]:
    """Image id -> (truth, probability, called present, Dice) from the model card's table."""
    card = (SHIPPED_MODEL / "MODEL_CARD.md").read_text()
    return {
        image_id: (truth, float(probability), called == "present", float(value))
        for image_id, truth, probability, called, value in CARD_ROW.findall(card)
    }


def test_the_shipped_checkpoint_is_the_pinned_one() -> None:
    weights = SHIPPED_MODEL / "model.safetensors"
    assert file_sha256(weights) == SHIPPED_SHA256
    config = read_checkpoint_config(SHIPPED_MODEL)
    assert config.weights_sha256 == SHIPPED_SHA256
    assert config.weights_dtype == "float16"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    assert Settings().model == SHIPPED_MODEL  # the default model the node loads
    assert "not for clinical use" in config.intended_use.lower()
    # a triage model: an image-level head, a calibrated probability, an operating point
    assert config.architecture.classification_head
    assert config.calibration is not None and config.decision is not None
    assert config.decision.validation["sensitivity"] >= 0.9
    # the split it was made and calibrated on travels with it: no patient on two sides
    split = json.loads((SHIPPED_MODEL / "split.json").read_text())
    assert split["by"] == "patient" and split["test"]
    assert not set(split["train"]) & set(split["validation"])
    assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))


def test_a_users_own_weights_replace_it_through_one_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tmp_path / "mine"))
    assert Settings().model == tmp_path / "mine"


@pytest.mark.slow
def test_predictions_on_the_siim_samples_match_the_model_card(
    siim_sample: Path, siim_sample_dicoms: list[Path]
) -> None:
    recorded = _card_rows()
    assert len(recorded) == 10
    predictor = Predictor.load(SHIPPED_MODEL, backend="torch", precision="fp32", device="cpu")
    called = {"negative": [], "positive": []}
    for path in siim_sample_dicoms:
        truth_name, probability, present, expected_dice = recorded[path.stem]
        truth = cv2.imread(str(siim_sample / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        prediction = predictor.predict_dicom(path)
        finding = prediction.finding
        assert finding.probability == pytest.approx(probability, abs=PROBABILITY_TOLERANCE)
        assert finding.present == present, path.stem
        assert dice(prediction.mask, truth > 127) == pytest.approx(
            expected_dice, abs=DICE_TOLERANCE
        )
        assert bool(truth.any()) == (truth_name == "positive")
        called[truth_name].append(finding.present)
    # every positive sample is called; 3 of the 5 normal samples are not yet left unmarked
    # (the goal is 4 of 5: see the card's known limits), which the recorded decisions pin
    assert all(called["positive"]), "all 5 positives are called positive"
    assert sum(not present for present in called["negative"]) >= 2
