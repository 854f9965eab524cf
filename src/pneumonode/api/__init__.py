"""The HTTP API (FastAPI) that also serves the built web page."""

from pneumonode.api.app import create_app
from pneumonode.api.security import ApiToken, TokenError, resolve_token

__all__ = ["ApiToken", "TokenError", "create_app", "resolve_token"]
