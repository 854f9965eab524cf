"""The API's bearer token: from the settings, or generated once and kept in the data dir."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

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
    value: str
    source: str  # "settings", "file" or "generated"
    path: Path | None = None

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.value.encode())


def resolve_token(settings: Settings) -> ApiToken:
    """The token the API requires.

    Order: ``PNEUMONODE_API_TOKEN``; else ``<data_dir>/api-token``; else a new random token,
    written there (mode 0600) and reported as ``generated`` so the caller prints it once.

    Raises:
        TokenError: a well-known or short token outside dev mode.
    """
    if settings.api_token is not None:
        value = settings.api_token.get_secret_value().strip()
        if not settings.dev_mode:
            if value.lower() in KNOWN_DEFAULT_TOKENS:
                raise TokenError(
                    "PNEUMONODE_API_TOKEN is a well-known default; set a random one "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            if len(value) < MIN_LENGTH:
                raise TokenError(
                    f"PNEUMONODE_API_TOKEN is shorter than {MIN_LENGTH} characters; "
                    "set a longer random one"
                )
        return ApiToken(value, "settings")
    path = settings.data_dir / "api-token"
    if path.is_file():
        return ApiToken(path.read_text().strip(), "file", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return ApiToken(value, "generated", path)
