"""The FastAPI application: health, metrics, the authenticated API and the web page."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from pneumonode import __version__
from pneumonode.api import actions, deliveries, health, metrics, studies, system
from pneumonode.api.alerts import router as alerts_router
from pneumonode.api.deps import ApiState
from pneumonode.api.feedback import router as feedback_router
from pneumonode.api.limits import RateLimiter
from pneumonode.api.performance import router as performance_router
from pneumonode.api.security import ApiToken
from pneumonode.config import Settings
from pneumonode.db.session import Database

__all__ = ["WEB_DIST", "create_app"]

log = logging.getLogger(__name__)

#: Where `npm run build` (web/) puts the page; served at / when present.
WEB_DIST = Path(__file__).resolve().parent / "static"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts)[:2000] or "invalid request"


def create_app(settings: Settings, database: Database, token: ApiToken) -> FastAPI:
    """The API for ``settings``/``database``, requiring ``token`` outside /health and /metrics."""
    app = FastAPI(
        title="pneumonode",
        version=__version__,
        summary="Pneumothorax on chest radiographs: studies, findings, deliveries, audit. "
        "AI results, not for clinical use.",
    )
    app.state.pneumonode = ApiState(settings, database, token)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _validation_message(exc)},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", type(exc.orig).__name__)
        return JSONResponse(
            {"detail": "database unavailable, try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    uploads = RateLimiter(settings.upload_rate_per_minute)

    @app.middleware("http")
    async def _upload_rate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # before the body is read: a refused upload costs us no disk
        if request.method == "POST" and request.url.path == "/api/upload":
            client = request.client.host if request.client else "unknown"
            wait = uploads.retry_after(client)
            if wait > 0:
                return JSONResponse(
                    {
                        "detail": f"more than {uploads.per_minute} uploads a minute from "
                        f"{client}; retry in {math.ceil(wait)} s"
                    },
                    status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(math.ceil(wait))},
                )
        return await call_next(request)

    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(studies.router)
    app.include_router(actions.router)
    app.include_router(deliveries.router)
    app.include_router(system.router)
    for router in (feedback_router, performance_router, alerts_router):  # issue 25
        app.include_router(router)
    if (WEB_DIST / "index.html").is_file():
        app.mount("/", StaticFiles(directory=WEB_DIST, html=True), name="web")
    return app
