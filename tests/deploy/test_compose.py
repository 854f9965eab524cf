"""The deployment files agree with each other and with the code: docker-compose.yml, the
Dockerfile, .dockerignore, Orthanc's config and deploy/healthcheck.py.

No Docker engine is needed: compose is read with PyYAML (anchors and merge keys resolved), and
normalised by `docker compose config` or docker-compose where a client is installed.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
import yaml
from sqlalchemy.engine import make_url

from peers_harness import free_port
from pneumonode.addresses import PeerRule, parse_destination
from pneumonode.config import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ORTHANC_CONFIG = REPO / "deploy" / "orthanc" / "orthanc.json"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"

LISTENER = "pneumonode-listener"
WORKER = "pneumonode-worker"
GPU_WORKER = "pneumonode-worker-gpu"
API = "pneumonode-api"
PNEUMONODE_SERVICES = (LISTENER, WORKER, GPU_WORKER, API)
REQUIRED_SERVICES = {"redis", "postgres", "orthanc", *PNEUMONODE_SERVICES}

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: object) -> str:
    """A compose value as compose sees it with no .env: ``${NAME:-default}`` is the default."""
    text = str(value).replace("$$", "\0")
    return _VARIABLE.sub(lambda m: m.group(2) or "", text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or list form), interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(value) for key, value in raw.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def pyproject_pin(package: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies: list[str] = project["dependencies"]
    pins = [d.split("==", 1)[1] for d in dependencies if d.startswith(f"{package}==")]
    assert len(pins) == 1, f"pyproject.toml pins {package} {len(pins)} times"
    return pins[0]


def published_or_exposed_port(service: dict[str, Any], container_port: int) -> bool:
    return any(
        interpolate(mapping).rsplit(":", 1)[-1].split("/")[0] == str(container_port)
        for mapping in service.get("ports", [])
    )


# ------------------------------------------------------------------------- compose structure


def test_every_part_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= REQUIRED_SERVICES


def test_dependencies_wait_for_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}: {spec}"
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in (LISTENER, WORKER, GPU_WORKER, API):
        assert {"postgres", "redis"} <= services[name]["depends_on"].keys(), name
    # The listener migrates the database before it listens; the others start after it.
    for name in (WORKER, GPU_WORKER, API):
        assert LISTENER in services[name]["depends_on"], name


def test_environment_keys_are_settings(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    used = dict(dockerfile_env())
    for service in services.values():
        used.update(environment(service))
    names = [key for key in used if key.startswith(ENV_PREFIX)]
    assert names
    unknown = [key for key in names if key[len(ENV_PREFIX) :].lower() not in fields]
    assert not unknown, f"not a pneumonode setting: {unknown}"


@pytest.mark.parametrize("name", PNEUMONODE_SERVICES)
def test_each_process_gets_valid_settings(
    name: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**dockerfile_env(), **environment(services[name])}.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    settings = Settings()  # the validators (AE titles, lists, sc_destinations) run here
    assert settings.data_dir == Path("/var/lib/pneumonode")
    assert settings.model == Path("/opt/pneumonode/models/pneumothorax-triage-lite2")
    database = make_url(settings.database)
    postgres = environment(services["postgres"])
    assert database.get_backend_name() == "postgresql" and database.host == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.database == postgres["POSTGRES_DB"]
    assert settings.broker.startswith("redis://redis:6379/")
    for destination in settings.destinations:
        parse_destination(destination)


def test_dockerfile_env_points_into_the_image() -> None:
    env = dockerfile_env()
    copied = [rest.split()[-1] for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert env["PNEUMONODE_MODEL_PATH"] in copied
    assert (REPO / "models" / Path(env["PNEUMONODE_MODEL_PATH"]).name / "config.json").is_file()


def test_listener_worker_api_share_the_data_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mounts = {}
    for name in PNEUMONODE_SERVICES:
        data_dir = environment(services[name])["PNEUMONODE_DATA_DIR"]
        volumes = [str(v).split(":") for v in services[name]["volumes"]]
        sources = [source for source, target, *_ in volumes if target == data_dir]
        assert len(sources) == 1, f"{name}: nothing mounted at {data_dir}"
        mounts[name] = (sources[0], data_dir)
    assert len(set(mounts.values())) == 1, mounts
    volume = next(iter(mounts.values()))[0]
    assert volume in compose["volumes"], f"{volume} is not a named volume"
    assert "postgres-data" in compose["volumes"] and "orthanc-data" in compose["volumes"]


def test_orthanc_and_node_know_each_other(services: dict[str, dict[str, Any]]) -> None:
    orthanc = json.loads(ORTHANC_CONFIG.read_text())
    mounted = [str(v).split(":") for v in services["orthanc"]["volumes"]]
    assert ["./deploy/orthanc/orthanc.json", "/etc/orthanc/orthanc.json", "ro"] in mounted

    listener = environment(services[LISTENER])
    ae_title = listener["PNEUMONODE_AE_TITLE"]
    ours = [m for m in orthanc["DicomModalities"].values() if m["AET"] == ae_title]
    assert len(ours) == 1, "Orthanc does not list our AE title"
    assert ours[0]["Host"] == LISTENER
    assert ours[0]["Port"] == int(listener["PNEUMONODE_DICOM_PORT"])
    assert ours[0]["AllowStore"] and ours[0]["AllowEcho"]
    assert listener["PNEUMONODE_DICOM_HOST"] == "0.0.0.0"
    assert published_or_exposed_port(services[LISTENER], int(listener["PNEUMONODE_DICOM_PORT"]))
    # results come from every worker's address too
    assert orthanc.get("DicomCheckModalityHost", False) is False

    peers = [PeerRule.parse(p) for p in listener["PNEUMONODE_ALLOWED_PEERS"].split(",")]
    assert any(rule.allows(orthanc["DicomAet"], "172.18.0.5") for rule in peers)
    for name in (LISTENER, WORKER, GPU_WORKER):
        destinations = environment(services[name])["PNEUMONODE_DESTINATIONS"].split(",")
        parsed = [parse_destination(d) for d in destinations]
        assert any(
            (d.ae_title, d.host, d.port) == (orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
            for d in parsed
        ), f"{name} does not send to Orthanc: {destinations}"

    api = environment(services[API])
    assert api["PNEUMONODE_DICOM_HOST"] == LISTENER  # /health looks for the listener there
    assert api["PNEUMONODE_DICOM_PORT"] == listener["PNEUMONODE_DICOM_PORT"]
    assert api["PNEUMONODE_API_HOST"] == "0.0.0.0"
    assert published_or_exposed_port(services[API], int(api["PNEUMONODE_API_PORT"]))


@pytest.mark.parametrize("name", PNEUMONODE_SERVICES)
def test_commands_parse(name: str, services: dict[str, dict[str, Any]]) -> None:
    from pneumonode.cli import build_parser

    command = [interpolate(part) for part in services[name]["command"]]
    args = build_parser().parse_args(command)  # a typo exits with status 2
    assert args.command in ("dicom-listen", "worker", "api")


def test_workers_cpu_and_gpu(services: dict[str, dict[str, Any]]) -> None:
    for name in (WORKER, GPU_WORKER):
        command = [interpolate(part) for part in services[name]["command"]]
        assert command[0] == "worker", name
        concurrency = command[command.index("--concurrency") + 1]
        assert int(concurrency) >= 1, name
    assert environment(services[WORKER])["PNEUMONODE_DEVICE"] == "cpu"
    assert services[WORKER]["build"]["args"]["VARIANT"] == "cpu"

    gpu = services[GPU_WORKER]
    assert gpu["profiles"] == ["gpu"]
    assert environment(gpu)["PNEUMONODE_DEVICE"] == "cuda"
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert gpu["image"] != services[WORKER]["image"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services[WORKER]


def test_example_env_documents_every_variable() -> None:
    defaults = dict(
        (m.group(1), m.group(2) or "") for m in _VARIABLE.finditer(COMPOSE_FILE.read_text())
    )
    example = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "example.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert example == defaults


# ------------------------------------------------------------------------- Dockerfile


def test_dockerfile_variants_and_torch_pin() -> None:
    args = dockerfile_args()
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_VERSION"] == pyproject_pin("torch")
    assert args["TORCHVISION_VERSION"] == pyproject_pin("torchvision")
    text = DOCKERFILE.read_text()
    assert re.search(r"^\s*cpu\) index=\"\$TORCH_INDEX_CPU\"", text, re.MULTILINE)
    assert re.search(r"^\s*cuda\) index=\"\$TORCH_INDEX_CUDA\"", text, re.MULTILINE)
    assert '"torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"' in text

    instructions = dockerfile_instructions()
    stages = [rest.split()[-1] for keyword, rest in instructions if keyword == "FROM"]
    assert stages == ["web", "build", "runtime"]
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image runs as root"


def test_dockerignore_lets_every_copy_source_in() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _target = shlex.split(rest)
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"COPY {source}: missing"
            assert any(path == a or path.startswith(f"{a}/") for a in allowed), (
                f"COPY {source}: excluded by .dockerignore"
            )


# ------------------------------------------------------------------------- docker compose config


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_normalises() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no compose client: neither `docker compose` nor docker-compose is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for profile, expected in (([], REQUIRED_SERVICES - {GPU_WORKER}), (["gpu"], REQUIRED_SERVICES)):
        flags = [arg for p in profile for arg in ("--profile", p)]
        result = subprocess.run(
            [*command, "--file", str(COMPOSE_FILE), *flags, "config"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        normalised = yaml.safe_load(result.stdout)
        assert expected <= normalised["services"].keys(), profile
        listener = normalised["services"][LISTENER]
        assert listener["depends_on"]["postgres"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------- deploy/healthcheck.py


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pneumonode_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_listener(healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("PNEUMONODE_DICOM_PORT", str(server.getsockname()[1]))
        assert healthcheck.main(["listener"]) == 0
    monkeypatch.setenv("PNEUMONODE_DICOM_PORT", str(free_port()))
    assert healthcheck.main(["listener"]) == 1
    assert healthcheck.main(["nonsense"]) == 2


def test_healthcheck_of_a_tls_only_listener_looks_at_the_tls_port(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("cert", "key"):
        (tmp_path / name).write_text("-")  # the healthcheck never reads them
        monkeypatch.setenv(f"PNEUMONODE_TLS_{name.upper()}_FILE", str(tmp_path / name))
    monkeypatch.setenv("PNEUMONODE_DICOM_PLAINTEXT", "false")
    monkeypatch.setenv("PNEUMONODE_DICOM_PORT", str(free_port()))  # nothing there
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("PNEUMONODE_DICOM_TLS_PORT", str(server.getsockname()[1]))
        assert healthcheck.main(["listener"]) == 0


def test_healthcheck_worker(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pneumonode.db.models import WorkerHeartbeat, utcnow
    from pneumonode.db.session import Database

    url = f"sqlite:///{tmp_path / 'pneumonode.sqlite3'}"
    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", url)
    database = Database.open(url)
    host = socket.gethostname()

    def beat(name: str, age: timedelta) -> None:
        with database.session() as session:
            session.merge(
                WorkerHeartbeat(
                    name=name,
                    model="m",
                    model_version="1",
                    device="cpu",
                    backend="torch",
                    seen_at=utcnow() - age,
                )
            )

    try:
        assert healthcheck.main(["worker"]) == 1  # no worker yet
        beat("another-host:1", timedelta(0))
        beat(f"{host}:7", timedelta(minutes=5))
        assert healthcheck.main(["worker"]) == 1  # ours is silent, the other is not ours
        beat(f"{host}:7", timedelta(seconds=5))
        assert healthcheck.main(["worker"]) == 0
    finally:
        database.dispose()


class _Health(http.server.BaseHTTPRequestHandler):
    """Answers GET /health with ``status`` and ``body`` (set by the test)."""

    status: ClassVar[int] = 200
    body: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        payload = json.dumps(self.body).encode()
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Health]]:
    handler = type("Health", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PNEUMONODE_API_PORT", str(server.server_address[1]))
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def _components(**states: str) -> dict[str, Any]:
    return {"components": {name: {"state": s, "detail": ""} for name, s in states.items()}}


def test_healthcheck_api(healthcheck: ModuleType, health_server: type[_Health]) -> None:
    health_server.status, health_server.body = 200, _components(database="ok", workers="ok")
    assert healthcheck.main(["api"]) == 0
    health_server.status, health_server.body = 503, _components(database="ok", workers="down")
    assert healthcheck.main(["api"]) == 0  # serving; the workers have their own check
    health_server.status, health_server.body = 503, _components(database="down", workers="ok")
    assert healthcheck.main(["api"]) == 1


def test_healthcheck_runs_as_a_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_DICOM_PORT", str(free_port()))
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "listener"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "ConnectionRefusedError" in result.stderr
