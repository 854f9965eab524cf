"""A node that cannot work stops at start with one line naming the setting, never a traceback.

Each case runs the real command (as an operator would) and expects exactly one line on stderr
and the exit code: 2 for a value the settings refuse, 1 for what only the machine can answer
(a port in use, a data folder that cannot be written, a host that does not resolve).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_processes import PNEUMONODE
from peers_harness import free_port
from pneumonode.cli import EXIT_ERROR, EXIT_USAGE
from pneumonode.config import Settings
from pneumonode.db.session import Database
from pneumonode.node import run_node
from pneumonode.startup import StartupError

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``pneumonode ARGS`` with only ``env`` as its PNEUMONODE_ settings (and a data folder)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMONODE_")}
    env = {"PNEUMONODE_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run(
        [PNEUMONODE, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


@pytest.mark.parametrize(
    ("command", "env", "named", "problem"),
    [
        (  # accepted before, and its results never left; `echo` refuses the same string
            "dicom-listen",
            {"PNEUMONODE_DESTINATIONS": "ORTHANC@127.0.0.1"},
            "PNEUMONODE_DESTINATIONS",
            "destination 'ORTHANC@127.0.0.1': expected AE@host:port",
        ),
        (
            "serve",
            {"PNEUMONODE_AE_TITLE": "A_MUCH_TOO_LONG_AE_TITLE"},
            "PNEUMONODE_AE_TITLE",
            "1-16 printable characters",
        ),
        (
            "dicom-listen",
            {"PNEUMONODE_ALLOWED_PEERS": "ORTHANC, A_MUCH_TOO_LONG_AE_TITLE@10.0.0.1"},
            "PNEUMONODE_ALLOWED_PEERS",
            "allowed peer 'A_MUCH_TOO_LONG_AE_TITLE@10.0.0.1'",
        ),
        ("api", {"PNEUMONODE_API_PORT": "80000"}, "PNEUMONODE_API_PORT", "at most 65535"),
        (
            "worker",
            {"PNEUMONODE_DEVICE": "gpu"},
            "PNEUMONODE_DEVICE",
            "auto, cpu, cuda or cuda:N",
        ),
        (
            "serve",
            {"PNEUMONODE_TLS_CERT_FILE": "/etc/ssl/ours.pem"},
            "PNEUMONODE_TLS_KEY_FILE",
            "tls_cert_file is set",
        ),
        (  # pydantic's own message would quote the URL, password and all
            "api",
            {"PNEUMONODE_DATABASE_URL": "postgress://node:secret@db/pneumonode"},
            "PNEUMONODE_DATABASE_URL",
            "unknown database kind 'postgress'",
        ),
    ],
)
def test_a_value_the_settings_refuse_is_one_line_and_exit_2(
    command: str, env: dict[str, str], named: str, problem: str, tmp_path: Path
) -> None:
    result = run([command], env, tmp_path)
    line = one_line(result)
    assert result.returncode == EXIT_USAGE
    assert line.startswith(f"error: invalid configuration: {named}: ") and problem in line
    assert "secret" not in line and "validation error" not in line


def test_a_config_file_typo_names_the_file_key_and_the_nearest_setting(tmp_path: Path) -> None:
    config = tmp_path / "pneumonode.toml"
    config.write_text('destination = ["ORTHANC@127.0.0.1:4242"]\n')
    result = run(["--config", str(config), "dicom-listen"], {}, tmp_path)
    assert result.returncode == EXIT_USAGE
    assert one_line(result) == (
        f"error: invalid configuration: destination in {config}: not a setting; "
        "did you mean destinations?"
    )


def test_a_dicom_port_in_use_names_the_setting_and_port(taken_port: int, tmp_path: Path) -> None:
    """Was a 30-line double traceback ending in 'cannot join thread before it is started'."""
    for command in ("dicom-listen", "serve"):
        result = run([command], {"PNEUMONODE_DICOM_PORT": str(taken_port)}, tmp_path)
        assert result.returncode == EXIT_ERROR
        assert one_line(result) == (
            f"error: PNEUMONODE_DICOM_PORT: port {taken_port} on 127.0.0.1 is already in use "
            "by another program; stop that one or choose another port"
        )


def test_an_api_port_in_use_names_the_setting(taken_port: int, tmp_path: Path) -> None:
    result = run(["api"], {"PNEUMONODE_API_PORT": str(taken_port)}, tmp_path)
    assert result.returncode == EXIT_ERROR
    assert one_line(result).startswith(f"error: PNEUMONODE_API_PORT: port {taken_port} on ")


def test_two_settings_on_one_port(tmp_path: Path) -> None:
    port = str(free_port())
    env = {"PNEUMONODE_DICOM_PORT": port, "PNEUMONODE_API_PORT": port}
    result = run(["serve"], env, tmp_path)
    assert result.returncode == EXIT_ERROR
    assert one_line(result) == (
        f"error: PNEUMONODE_API_PORT: port {port} is PNEUMONODE_DICOM_PORT too; "
        "give each its own port"
    )


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("PNEUMONODE_DICOM_HOST", "192.0.2.1", "192.0.2.1 is not an address of this machine"),
        (
            "PNEUMONODE_ALLOWED_PEERS",
            "PACS@no-such-host.invalid",
            "allowed peer 'PACS@no-such-host.invalid': cannot resolve host",
        ),
    ],
)
def test_what_the_machine_refuses_is_one_line_and_exit_1(
    setting: str, value: str, problem: str, tmp_path: Path
) -> None:
    env = {"PNEUMONODE_DICOM_PORT": str(free_port()), setting: value}
    result = run(["dicom-listen"], env, tmp_path)
    assert result.returncode == EXIT_ERROR
    assert one_line(result).startswith(f"error: {setting}: {problem}")


def test_a_data_folder_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the data folder should be")
    for command in ("dicom-listen", "worker", "api"):
        env = {"PNEUMONODE_DATA_DIR": str(blocker / "data")}
        result = run([command], env, tmp_path)
        assert result.returncode == EXIT_ERROR
        assert one_line(result) == (
            f"error: PNEUMONODE_DATA_DIR: cannot write in {blocker / 'data'} (Not a directory)"
        )


def test_tls_files_that_do_not_exist_are_named(tmp_path: Path) -> None:
    env = {
        "PNEUMONODE_DICOM_PORT": str(free_port()),
        "PNEUMONODE_DICOM_TLS_PORT": str(free_port()),
        "PNEUMONODE_TLS_CERT_FILE": str(tmp_path / "node.crt"),
        "PNEUMONODE_TLS_KEY_FILE": str(tmp_path / "node.key"),
    }
    result = run(["dicom-listen"], env, tmp_path)
    assert result.returncode == EXIT_ERROR
    assert one_line(result) == (
        f"error: PNEUMONODE_TLS_CERT_FILE: {tmp_path / 'node.crt'} is not a file"
    )


def test_a_misspelt_environment_variable_is_named_with_the_nearest_setting(
    tmp_path: Path,
) -> None:
    result = run(["info"], {"PNEUMONODE_DESTINATION": "ORTHANC@127.0.0.1:4242"}, tmp_path)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        "environment variable PNEUMONODE_DESTINATION is not a pneumonode setting and is "
        "ignored; did you mean PNEUMONODE_DESTINATIONS?"
    )


def test_a_port_taken_after_the_check_stops_the_node_with_its_setting(
    taken_port: int, tmp_path: Path
) -> None:
    """The listener's own bind failure (a port taken between the check and the start) is the
    same one error, and nothing that never started is stopped (no second traceback)."""
    settings = Settings(data_dir=tmp_path / "data", dicom_port=taken_port)
    database = Database.open(settings.database)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(StartupError, match=f"PNEUMONODE_DICOM_PORT: port {taken_port} on"):
            run_node(settings, database, with_worker=False)
    finally:
        database.dispose()
    assert signal.getsignal(signal.SIGTERM) == previous  # the node's handlers are put back
