"""The README's configuration reference lists every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from pneumonode.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def configuration_section() -> str:
    text = README.read_text()
    start = text.index("\n## Configuration")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_setting_has_a_row_and_every_row_is_a_setting() -> None:
    rows = re.findall(r"^\| `(PNEUMONODE_[A-Z0-9_]+)` \| ([^|]+) \|", configuration_section(), re.M)
    documented = [name for name, _default in rows]
    expected = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented))


def test_the_documented_defaults_are_the_defaults() -> None:
    rows = dict(
        re.findall(r"^\| `PNEUMONODE_([A-Z0-9_]+)` \| `([^`|]+)` \|", configuration_section(), re.M)
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
        assert str(value) == documented, f"PNEUMONODE_{name}: README says {documented}"
