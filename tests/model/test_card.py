"""The model card's tables are generated from the measured files (pneumonode model-card)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pneumonode.config import SHIPPED_MODEL
from pneumonode.model.card import (
    CARD_NAME,
    EVALUATION_NAME,
    CardError,
    held_out_table,
    measured_blocks,
    refresh,
)


def _summary() -> dict[str, object]:
    def proportion(k: int, n: int) -> dict[str, object]:
        return {"value": k / n, "ci95": [k / n - 0.05, k / n + 0.04], "n": n}

    return {
        "images": 20,
        "positives": 10,
        "negatives": 10,
        "auc": 0.91234,
        "operating_point": 0.4,
        "sensitivity": proportion(9, 10),
        "specificity": proportion(8, 10),
        "specificity_by_group": {
            "normal": proportion(5, 5),
            "abnormal, no pneumothorax": proportion(3, 5),
        },
        "false_positive_rate_normal": 0.0,
        "mean_dice_positives": 0.41,
        "mean_dice_positives_called": 0.45,
        "dice_by_size": {"small (<0.5%)": {"images": 4, "mean_dice": 0.3}},
        "siim_score_at_prevalence": 0.8,
        "prevalence": 0.22,
        "log_loss": 0.3,
    }


def test_refresh_rewrites_only_the_marked_tables() -> None:
    card = (
        "# Card\n\nProse stays.\n\n<!-- measured: test -->\nold table\n<!-- /measured -->\n\n"
        "More prose.\n"
    )
    table = held_out_table(_summary())
    updated = refresh(card, {"test": table})
    assert "old table" not in updated and "| AUC | **0.912** |" in updated
    assert updated.startswith("# Card\n\nProse stays.\n") and updated.endswith("More prose.\n")
    assert "| sensitivity at the operating point | **0.900 (95 % CI 0.850-0.940, n = 10)** |" in (
        updated
    )
    assert refresh(updated, {"test": table}) == updated  # idempotent
    with pytest.raises(CardError, match="siim"):
        refresh(card, {"test": table, "siim": "x"})


def test_the_command_copies_the_measurements_and_refreshes_the_card(tmp_path: Path) -> None:
    from pneumonode.cli import main

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, folder)
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / EVALUATION_NAME).write_text(
        json.dumps({"summary": _summary(), "images": [{"image_id": "private"}]})
    )
    assert main(["model-card", "--weights", str(folder), "--evaluation", str(evaluation)]) == 0
    copied = json.loads((folder / EVALUATION_NAME).read_text())
    assert "images" not in copied  # per-film rows stay out of the model folder
    assert "| AUC | **0.912** |" in (folder / CARD_NAME).read_text()


def test_the_shipped_cards_tables_are_the_measured_ones() -> None:
    card = (SHIPPED_MODEL / CARD_NAME).read_text()
    blocks = measured_blocks(SHIPPED_MODEL)
    assert {"calibration", "test", "siim"} <= set(blocks)
    assert refresh(card, blocks) == card, "run pneumonode model-card (docs/model.md)"
