"""Dependencies of the API's routes, as ``Annotated`` aliases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from pneumonode.api.security import ApiToken
from pneumonode.config import Settings
from pneumonode.db.session import Database

__all__ = [
    "ApiState",
    "Authorized",
    "Caller",
    "SessionDep",
    "SettingsDep",
    "StateDep",
    "UidPath",
    "checked_uid",
]

#: What a stored UID may look like: valid DICOM UIDs and the odd real-world ones (SIIM's
#: ``ID_4d6269d79``), never path separators or spaces.
UID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass
class ApiState:
    settings: Settings
    database: Database
    token: ApiToken


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.pneumonode
    return state


StateDep = Annotated[ApiState, Depends(_state)]


def _settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _session(state: StateDep) -> Iterator[Session]:
    with state.database.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]

_bearer = HTTPBearer(auto_error=False, description="the API token (PNEUMONODE_API_TOKEN)")


def _authorized(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller: the name of the token presented (``default`` for the single token)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = state.token.caller(credentials.credentials)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong API token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return caller


Authorized = Depends(_authorized)
#: The name of the caller's token (``PNEUMONODE_API_TOKENS``), for who did what.
Caller = Annotated[str, Depends(_authorized)]


def checked_uid(value: str, what: str = "UID") -> str:
    if not UID_PATTERN.match(value):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"invalid {what}: 1-128 characters of digits, letters, '.', '_' or '-'",
        )
    return value


UidPath = Annotated[str, Path(min_length=1, max_length=128, description="a DICOM UID")]
