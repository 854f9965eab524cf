"""`pneumonode echo / send / resend / deliveries` in-process against real peers (dcmtk storescp),
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info

from peers_harness import free_port, run_storescp
from pneumonode.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from pneumonode.config import Settings
from pneumonode.db.session import Database
from pneumonode.dicom_node.delivery import RetryPolicy, run_due
from pneumonode.dicom_node.receive import dataset_offset

pytestmark = pytest.mark.integration

BACKOFF = 0.05


@pytest.fixture
def cli_database(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[Database]:
    """Settings for fast sends (tiny back-off, two attempts); yields the CLI's database."""
    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", database_url)
    monkeypatch.setenv("PNEUMONODE_SEND_BACKOFF_SECONDS", str(BACKOFF))
    monkeypatch.setenv("PNEUMONODE_SEND_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("PNEUMONODE_NETWORK_TIMEOUT", "5")
    database = Database.open(database_url)
    yield database
    database.dispose()


def _sop_uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def _received(folder: Path) -> dict[str, Path]:
    return {_sop_uid(p): p for p in folder.iterdir() if p.is_file()}


def _deliveries(capsys: pytest.CaptureFixture[str], *options: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["deliveries", "--format", "json", *options]) == EXIT_OK
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return sorted(rows, key=lambda row: int(row["id"]))


def _errors(stderr: str) -> list[str]:
    """The error lines of stderr; also checks that the last line of stderr is one of them."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors and lines[-1] == errors[-1], stderr
    return errors


def test_echo_send_and_deliveries(
    cli_database: Database,
    tmp_path: Path,
    siim_sample: Path,
    siim_sample_dicoms: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with run_storescp(tmp_path / "scp", options=("+xa", "+B")) as scp:
        assert main(["echo", scp.destination, "--timeout", "5"]) == EXIT_OK
        assert capsys.readouterr().out == f"{scp.destination} answered C-ECHO\n"

        # a folder: every file inside, each with its own SOP class and transfer syntax
        assert main(["send", str(siim_sample / "dicom"), "--to", scp.destination]) == EXIT_OK
        out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"sent to {scp.destination}:"
    assert len(lines) == 11
    for line, path in zip(lines[1:], siim_sample_dicoms, strict=True):
        assert line.split() == [line.split()[0], "sent", path.name]

    received = _received(scp.folder)
    assert set(received) == {_sop_uid(path) for path in siim_sample_dicoms}
    for path in siim_sample_dicoms:
        copy = received[_sop_uid(path)]
        sent = path.read_bytes()[dataset_offset(path) :]
        assert copy.read_bytes()[dataset_offset(copy) :] == sent

    rows = _deliveries(capsys)
    assert [(row["state"], row["attempts"], row["last_error"]) for row in rows] == [
        ("sent", 1, None)
    ] * 10
    assert {row["destination"] for row in rows} == {scp.destination}
    assert [row["sop_uid"] for row in rows] == [_sop_uid(p) for p in siim_sample_dicoms]
    assert _deliveries(capsys, "--state", "pending") == []


def test_send_to_a_dead_port_then_resend(
    cli_database: Database,
    tmp_path: Path,
    siim_sample_dicoms: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()  # nothing listens here until storescp starts on it below
    destination = f"STORESCP@127.0.0.1:{port}"
    files = [str(path) for path in siim_sample_dicoms[:2]]
    refused = f"cannot connect to {destination} (refused or unreachable)"

    assert main(["echo", destination, "--timeout", "5"]) == EXIT_ERROR
    assert _errors(capsys.readouterr().err) == [f"error: {refused}"]

    assert main(["send", *files, "--to", destination]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert _errors(err) == ["error: 2 of 2 not delivered (see above)"]
    assert out.count(f"pending  {Path(files[0]).name}: {refused}") == 1
    rows = _deliveries(capsys)
    assert [(row["state"], row["attempts"]) for row in rows] == [("pending", 1)] * 2  # queued
    ids = [str(row["id"]) for row in rows]

    policy = RetryPolicy.from_settings(Settings())

    def dead_letter() -> None:  # what the running node's delivery loop does: the last attempt
        time.sleep(2 * BACKOFF)
        assert run_due(cli_database, policy) == 0

    dead_letter()
    assert [(row["state"], row["attempts"]) for row in _deliveries(capsys)] == [("dead", 2)] * 2

    # resending one while the peer is still down: one more attempt, queued again, exit 1
    assert main(["resend", ids[0]]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "resent:"
    assert _errors(err) == ["error: 1 of 1 not delivered (see above)"]
    assert [(row["state"], row["attempts"]) for row in _deliveries(capsys)] == [
        ("pending", 1),
        ("dead", 2),
    ]
    dead_letter()

    assert main(["resend"]) == EXIT_ERROR
    assert _errors(capsys.readouterr().err) == [
        "error: name delivery ids, or --all for every dead-lettered delivery"
    ]
    with run_storescp(tmp_path / "scp", port=port) as scp:
        other = f"OTHER@127.0.0.1:{port}"
        assert main(["resend", "--all", "--destination", other]) == EXIT_OK
        assert capsys.readouterr().out == "no dead-lettered deliveries match\n"

        assert main(["resend", "--all", "--destination", destination]) == EXIT_OK
        out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == "resent:"
    assert sorted(line.split()[1:] for line in out.splitlines()[1:]) == [
        ["sent", Path(files[0]).name],
        ["sent", Path(files[1]).name],
    ]
    assert set(_received(scp.folder)) == {_sop_uid(Path(f)) for f in files}
    rows = _deliveries(capsys)
    assert [(row["state"], row["attempts"], row["last_error"]) for row in rows] == [
        ("sent", 1, None)
    ] * 2
    assert main(["resend", "--all"]) == EXIT_OK  # nothing dead any more
    assert capsys.readouterr().out == "no dead-lettered deliveries match\n"


def test_send_reports_bad_inputs(
    cli_database: Database,
    tmp_path: Path,
    siim_sample_dicoms: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    good = str(siim_sample_dicoms[0])

    assert main(["send", good, "--to", "nonsense"]) == EXIT_ERROR
    assert _errors(capsys.readouterr().err) == [
        "error: destination 'nonsense': expected AE@host:port"
    ]
    missing = tmp_path / "missing.dcm"
    assert main(["send", str(missing), "--to", f"X@127.0.0.1:{free_port()}"]) == EXIT_ERROR
    assert _errors(capsys.readouterr().err) == [f"error: {missing}: no such file or folder"]

    with run_storescp(tmp_path / "scp") as scp:
        assert main(["send", good, str(not_dicom), "--to", scp.destination]) == EXIT_PARTIAL
    errors = _errors(capsys.readouterr().err)
    assert errors[-1] == "error: 1 of 2 not delivered (see above)"
    assert errors[0].startswith(f"error: {not_dicom}: not a DICOM file with file meta")
    assert set(_received(scp.folder)) == {_sop_uid(siim_sample_dicoms[0])}
    assert [(row["state"], row["attempts"]) for row in _deliveries(capsys)] == [("sent", 1)]
