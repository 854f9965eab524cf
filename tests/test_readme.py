"""The README is the front door, a page long; the rest lives in docs/ pages a reader finds from it.

The README stays under 12 KB and states the shipped model's measured limits as its card does;
every relative link in README.md and docs/*.md leads to a file, and to a heading when it names one;
docs/configuration.md lists every setting and nothing that is not one, with its declared default
and its field's description.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from pneumonode.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
MODEL_CARD = ROOT / "models" / "pneumothorax-triage-lite2" / "MODEL_CARD.md"
README_LIMIT_BYTES = 12 * 1024

FENCED_BLOCK = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code_blocks(path: Path) -> str:
    return FENCED_BLOCK.sub("", path.read_text())


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces become hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in ``path``; a repeated one gets ``-1``, ``-2``... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(without_code_blocks(path)):
        anchor = heading_anchor(heading)
        repeat = seen.get(anchor, 0)
        found.add(anchor if repeat == 0 else f"{anchor}-{repeat}")
        seen[anchor] = repeat + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(CODE_SPAN.sub("", without_code_blocks(page))):
        if URL_SCHEME.match(target):
            continue  # http:, https:, mailto: are not ours to check offline
        path, _, fragment = target.partition("#")
        linked = (page.parent / unquote(path)).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: there is no {os.path.relpath(linked, ROOT)}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: {linked.name} has no heading with the anchor #{fragment}")
    return broken


def test_the_readme_is_a_page_long() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, (
        f"README.md is {size} bytes, over {README_LIMIT_BYTES}: move the detail into a docs/ page "
        "and link it"
    )


def test_the_readme_states_the_models_limits_as_its_card_does() -> None:
    """The README's figures are the measured ones: the summary of evaluate --subset test that
    the model folder keeps (evaluation.json), which the card's table is generated from."""
    import json

    readme, card = README.read_text(), MODEL_CARD.read_text()
    summary = json.loads((MODEL_CARD.parent / "evaluation.json").read_text())["summary"]
    measured = {
        "AUC": summary["auc"],
        "sensitivity": summary["sensitivity"]["value"],
        "specificity": summary["specificity"]["value"],
        "false-positive rate on normal films": summary["false_positive_rate_normal"],
        "mean Dice": summary["mean_dice_positives"],
    }
    for name, value in measured.items():
        figure = f"{value:.3f}"
        assert figure in readme, f"README.md does not state the measured {name}, {figure}"
        assert figure in card, f"the model card does not state the measured {name}, {figure}"
    assert "not for clinical use" in readme
    assert "make run" in readme and "make test" in readme


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def configuration_table() -> str:
    return CONFIGURATION.read_text()


def test_every_setting_has_a_row_and_every_row_is_a_setting() -> None:
    rows = re.findall(r"^\| `(PNEUMONODE_[A-Z0-9_]+)` \| ([^|]+) \|", configuration_table(), re.M)
    documented = [name for name, _default in rows]
    expected = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented))


def test_the_documented_defaults_are_the_defaults() -> None:
    rows = dict(
        re.findall(r"^\| `PNEUMONODE_([A-Z0-9_]+)` \| `([^`|]+)` \|", configuration_table(), re.M)
    )
    defaults = Settings.model_construct()  # no environment, no validation: the declared defaults
    assert len(rows) > 30
    for name, documented in rows.items():
        value = getattr(defaults, name.lower())
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, Path):
            value = f"./{value}"
        assert str(value) == documented, f"PNEUMONODE_{name}: configuration.md says {documented}"


def test_each_meaning_is_the_settings_description() -> None:
    rows = re.findall(
        r"^\| `PNEUMONODE_([A-Z0-9_]+)` \| [^|]+ \| (.+) \|$", configuration_table(), re.M
    )
    assert len(rows) == len(Settings.model_fields)
    for name, meaning in rows:
        description = Settings.model_fields[name.lower()].description
        assert meaning == description, (
            f"PNEUMONODE_{name}: docs/configuration.md says {meaning!r}; the field's description "
            f"in pneumonode.config is {description!r}: make them the same"
        )
