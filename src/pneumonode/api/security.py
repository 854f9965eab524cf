"""The API's bearer tokens: the single one (from the settings, or generated once and kept in the
data dir), named ``default``, and the named ones of ``PNEUMONODE_API_TOKENS``; a request is
answered as the name of the token it presents."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pneumonode.api_tokens import DEFAULT_TOKEN_NAME, parse_named_tokens
from pneumonode.config import Settings

__all__ = ["KNOWN_DEFAULT_TOKENS", "ApiToken", "TokenError", "resolve_token"]

#: Tokens from examples, tutorials and habit; refused outside dev mode.
KNOWN_DEFAULT_TOKENS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "token", "pneumonode", "admin", "password",
     "test", "dev", "default", "1234", "12345678"}
)  # fmt: skip
MIN_LENGTH = 16


class TokenError(ValueError):
    """The configured token must not be used."""


@dataclass(frozen=True)
class ApiToken:
    """The tokens the API accepts: ``value`` (named ``default``; empty when only named tokens
    are configured) and ``named`` ({name: token}, from ``PNEUMONODE_API_TOKENS``)."""

    value: str
    source: str  # "settings", "file", "generated" or "named"
    path: Path | None = None
    named: dict[str, str] = field(default_factory=dict)

    def caller(self, presented: str) -> str | None:
        """The name of the token ``presented``, or None when it is none of ours (each token is
        compared in constant time, all of them every time)."""
        found = None
        candidates = [(DEFAULT_TOKEN_NAME, self.value), *self.named.items()]
        for name, value in candidates:
            if value and hmac.compare_digest(presented.encode(), value.encode()):
                found = found or name
        return found

    def matches(self, presented: str) -> bool:
        return self.caller(presented) is not None


def _checked(setting: str, value: str, dev_mode: bool) -> str:
    if not dev_mode:
        if value.lower() in KNOWN_DEFAULT_TOKENS:
            raise TokenError(
                f"{setting} is a well-known default; set a random one "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if len(value) < MIN_LENGTH:
            raise TokenError(
                f"{setting} is shorter than {MIN_LENGTH} characters; set a longer random one"
            )
    return value


def _named(settings: Settings) -> dict[str, str]:
    """``PNEUMONODE_API_TOKENS`` as {name: token}, each token checked as the single one is."""
    if settings.api_tokens is None:
        return {}
    try:
        named = parse_named_tokens(settings.api_tokens.get_secret_value())
    except ValueError as exc:
        raise TokenError(f"PNEUMONODE_API_TOKENS: {exc}") from None
    if DEFAULT_TOKEN_NAME in named and settings.api_token is not None:
        raise TokenError(
            f"PNEUMONODE_API_TOKENS: the name {DEFAULT_TOKEN_NAME!r} is PNEUMONODE_API_TOKEN's; "
            "choose another"
        )
    for name, value in named.items():
        _checked(f"PNEUMONODE_API_TOKENS: the token of {name!r}", value, settings.dev_mode)
    return named


def resolve_token(settings: Settings) -> ApiToken:
    """The token the API requires.

    Order: ``PNEUMONODE_API_TOKEN``; else, when ``PNEUMONODE_API_TOKENS`` names tokens, those
    alone; else ``<data_dir>/api-token``; else a new random token, written there (mode 0600) and
    reported as ``generated`` so the caller prints it once. Named tokens are accepted beside the
    single one.

    Raises:
        TokenError: a well-known or short token outside dev mode, or a malformed
            ``PNEUMONODE_API_TOKENS`` (one line naming the setting).
    """
    named = _named(settings)
    if settings.api_token is not None:
        value = settings.api_token.get_secret_value().strip()
        value = _checked("PNEUMONODE_API_TOKEN", value, settings.dev_mode)
        return ApiToken(value, "settings", named=named)
    if named:
        return ApiToken("", "named", named=named)
    path = settings.data_dir / "api-token"
    if path.is_file():
        return ApiToken(path.read_text().strip(), "file", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return ApiToken(value, "generated", path)
