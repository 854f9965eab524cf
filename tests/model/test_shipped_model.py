"""The model that ships in models/: the exact file, and the numbers its model card promises.

The 10 SIIM sample images are the public sanity check (nothing was tuned on them): the shipped
checkpoint must reproduce the per-image Dice values its MODEL_CARD.md records for them.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumonode.config import SHIPPED_MODEL, Settings
from pneumonode.model.checkpoint import file_sha256, read_checkpoint_config
from pneumonode.model.metrics import dice
from pneumonode.model.predictor import Predictor

#: sha256 of models/pneumothorax-unet-b4/model.safetensors; a new model changes this on purpose.
SHIPPED_SHA256 = "eee1b879eea7b3e28f69f120a0ace9ed011a15f3b09bc2327b3f5ddd2633b8b0"
DICE_TOLERANCE = 0.02


def _card_dice() -> dict[str, float]:
    """Image id -> Dice from the model card's table of the SIIM sample images."""
    card = (SHIPPED_MODEL / "MODEL_CARD.md").read_text()
    rows = re.findall(r"^\| `([0-9.]+)` \| (negative|positive) \| [^|]+\| ([0-9.]+) \|", card, re.M)
    return {image_id: float(value) for image_id, _, value in rows}


def test_the_shipped_checkpoint_is_the_pinned_one() -> None:
    weights = SHIPPED_MODEL / "model.safetensors"
    assert file_sha256(weights) == SHIPPED_SHA256
    config = read_checkpoint_config(SHIPPED_MODEL)
    assert config.weights_sha256 == SHIPPED_SHA256
    assert config.weights_dtype == "float16"
    assert weights.stat().st_size <= 45 * 1024 * 1024
    assert Settings().model == SHIPPED_MODEL  # the default model the node loads
    assert "not for clinical use" in config.intended_use.lower()


def test_a_users_own_weights_replace_it_through_one_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tmp_path / "mine"))
    assert Settings().model == tmp_path / "mine"


@pytest.mark.slow
def test_predictions_on_the_siim_samples_match_the_model_card(
    siim_sample: Path, siim_sample_dicoms: list[Path]
) -> None:
    recorded = _card_dice()
    assert len(recorded) == 10
    predictor = Predictor.load(SHIPPED_MODEL, backend="torch", precision="fp32", device="cpu")
    for path in siim_sample_dicoms:
        truth = cv2.imread(str(siim_sample / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        mask = predictor.predict_dicom(path).mask
        measured = dice(mask, truth > 127)
        assert measured == pytest.approx(recorded[path.stem], abs=DICE_TOLERANCE), path.stem
    assert np.isfinite(list(recorded.values())).all()
