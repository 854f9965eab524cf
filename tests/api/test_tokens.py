"""Named API tokens: PNEUMONODE_API_TOKENS, the single token named 'default', start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pneumonode.api.deps import Caller
from pneumonode.api.security import ApiToken, TokenError, resolve_token
from pneumonode.api_tokens import parse_named_tokens
from pneumonode.cli import main
from pneumonode.config import ConfigError, load_settings

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"
SINGLE = "single-token-0123456789abcdef"


def test_named_tokens_are_parsed_in_order() -> None:
    assert parse_named_tokens(f" alice:{ALICE} , bob:{BOB},") == {"alice": ALICE, "bob": BOB}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("alice", "no ':'"),
        (f"al ice:{ALICE}", "name must be"),
        ("alice:", "empty"),
        (f"alice:{ALICE},alice:{BOB}", "twice"),
        (f"alice:{ALICE},bob:{ALICE}", "also another"),
        (",", "no name:token"),
    ],
)
def test_a_bad_value_stops_start_up_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("PNEUMONODE_API_TOKENS: ") and words in message
    assert "\n" not in message and ALICE not in message and BOB not in message


def test_the_command_line_refuses_to_start_on_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", "alice")
    assert main(["results"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PNEUMONODE_API_TOKENS" in err[0]


def test_a_weak_named_token_is_refused_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", f"alice:{ALICE},bob:short")
    with pytest.raises(TokenError, match=r"PNEUMONODE_API_TOKENS: the token of 'bob' is shorter"):
        resolve_token(load_settings())
    monkeypatch.setenv("PNEUMONODE_DEV_MODE", "1")
    assert resolve_token(load_settings()).named == {"alice": ALICE, "bob": "short"}


def test_the_single_token_is_named_default_beside_the_named_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PNEUMONODE_API_TOKEN", SINGLE)
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", f"alice:{ALICE}")
    token = resolve_token(load_settings())
    assert token.caller(SINGLE) == "default"
    assert token.caller(ALICE) == "alice"
    assert token.caller("nope") is None
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", f"default:{ALICE}")
    with pytest.raises(TokenError, match="'default' is PNEUMONODE_API_TOKEN's"):
        resolve_token(load_settings())


def test_named_tokens_alone_generate_no_token_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PNEUMONODE_API_TOKENS", f"alice:{ALICE}")
    token = resolve_token(load_settings())
    assert token.source == "named" and token.caller("") is None
    assert not (tmp_path / "api-token").exists()


def test_a_route_learns_the_callers_name() -> None:
    from pneumonode.api.deps import ApiState

    app = FastAPI()
    app.state.pneumonode = ApiState(None, None, ApiToken(SINGLE, "settings", named={"bob": BOB}))  # type: ignore[arg-type]

    @app.get("/who")
    def who(caller: Caller) -> dict[str, str]:
        return {"caller": caller}

    client = TestClient(app)
    assert client.get("/who", headers={"Authorization": f"Bearer {BOB}"}).json() == {
        "caller": "bob"
    }
    assert client.get("/who", headers={"Authorization": f"Bearer {SINGLE}"}).json() == {
        "caller": "default"
    }
    assert client.get("/who", headers={"Authorization": "Bearer x"}).status_code == 401
