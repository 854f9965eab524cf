"""The worker's stage names are defined once (db/stages.py) and imported everywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

from pneumonode.db.stages import QUEUED_TO_INFERRED, STAGES

SOURCE = Path(__file__).resolve().parents[2] / "src" / "pneumonode"
#: Names no other word of the code shares ("convert", "send" ... are ordinary words).
DISTINCT = ("receive_to_queued", "queue_wait")


def test_the_stages_are_in_order_and_distinct() -> None:
    assert STAGES[:2] == DISTINCT and len(set(STAGES)) == len(STAGES) == 7
    assert set(QUEUED_TO_INFERRED) <= set(STAGES)


def test_no_module_but_db_stages_spells_a_stage_name() -> None:
    spelled = [
        f"{path.relative_to(SOURCE)}:{node.lineno}"
        for path in sorted(SOURCE.rglob("*.py"))
        if path != SOURCE / "db" / "stages.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in DISTINCT
    ]
    assert not spelled, f"import the stage names from pneumonode.db.stages: {spelled}"
