"""Schemathesis over the OpenAPI schema: whatever it sends, the API never answers 5xx."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from peers_harness import storescu  # noqa: E402
from pneumonode.api import create_app  # noqa: E402
from pneumonode.api.security import ApiToken  # noqa: E402
from pneumonode.model.predictor import Predictor  # noqa: E402
from pneumonode.worker.pipeline import PipelineContext, process_job  # noqa: E402
from pneumonode.worker.tasks import celery_config  # noqa: E402

if TYPE_CHECKING:
    from conftest import RunningNode

TOKEN = "schemathesis-token-93b1c0f2d4e6"


@pytest.fixture
def app(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> tuple[Any, PipelineContext]:
    """The API over a node with two processed images (one dead-lettered delivery each), and the
    worker context whose heartbeat keeps /health ready."""
    model = tiny_checkpoint(bias=20.0)
    node = node_factory(
        destinations=["PACS@127.0.0.1:9"], send_max_attempts=1, max_upload_mb=2, model_path=model
    )
    storescu(siim_sample_dicoms[:2], node.port)
    context = PipelineContext(node.settings, node.database, Predictor.load(model, backend="torch"))
    for job_id in (1, 2):
        process_job(context, job_id)
    context.heartbeat()  # a worker is alive: /health is ready (200), not 503
    celery_config(node.settings)
    return create_app(node.settings, node.database, ApiToken(TOKEN, "settings")), context


@pytest.mark.slow
def test_no_request_gets_a_server_error(app: tuple[Any, PipelineContext]) -> None:
    asgi, worker = app
    schema = schemathesis.openapi.from_asgi("/openapi.json", asgi)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            worker.heartbeat()  # a slow run must not outlive the heartbeat (then 503 is right)
            for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:200]}"
                    )

        run()
    assert failures == [], "\n".join(sorted(set(failures)))
