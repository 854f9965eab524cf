"""The card's first paragraph and its "Known limits" as plain words, for the web page."""

from __future__ import annotations

from pneumonode.config import SHIPPED_MODEL
from pneumonode.model.card import CARD_NAME, card_limits, card_summary

CARD = """# Model card: x 1.0

**AI result, not for clinical use.** A `research` model,
on [two lines](https://example.org).

## Known limits

- **Misses.** Small ones
  most often.
- *False alarms*: some.

## History

- 1.0: first.
"""


def test_the_summary_and_limits_as_plain_words() -> None:
    assert card_summary(CARD) == (
        "AI result, not for clinical use. A research model, on two lines."
    )
    assert card_limits(CARD) == ["Misses. Small ones most often.", "False alarms: some."]


def test_a_card_without_limits_states_none() -> None:
    assert card_limits("# Model card\n\nSome words.\n") == []
    assert card_summary("# Model card\n") is None


def test_the_shipped_card_states_its_limits() -> None:
    card = (SHIPPED_MODEL / CARD_NAME).read_text(encoding="utf-8")
    limits = card_limits(card)
    assert len(limits) >= 5 and limits[-1] == "Not for clinical use. Not a medical device."
    assert not any("**" in limit or "`" in limit for limit in limits)
