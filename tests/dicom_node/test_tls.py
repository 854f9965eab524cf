"""DICOM TLS against dcmtk built with OpenSSL: our listener on a second port, and our sending side.

Certificates are made in the test (tls_certs.py): a CA that signs the server and client
certificates, and a stranger's CA whose certificate must be refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from peers_harness import dcmtk_env, free_port, run_storescp, storescu_args, tool
from pneumonode.config import Settings
from pneumonode.db.models import AuditEvent, Instance
from tls_certs import Certificates, Pair, make_certificates

if TYPE_CHECKING:
    from conftest import RunningNode

pytestmark = pytest.mark.integration

PNEUMONODE = str(Path(sys.executable).parent / "pneumonode")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def tls_storescu(
    files: list[Path], port: int, client: Pair | None, ca: Path
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu over TLS: with a client certificate, or anonymous (+tla)."""
    identity = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    args = [tool("storescu"), "-aet", "STORESCU", "-aec", "PNEUMONODE", *storescu_args(files)]
    args += [*identity, "+cf", str(ca), "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


def plain_storescu(files: list[Path], port: int) -> subprocess.CompletedProcess[str]:
    args = [tool("storescu"), "-aet", "STORESCU", "-aec", "PNEUMONODE", *storescu_args(files)]
    args += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


def stored(node: RunningNode) -> set[str]:
    with node.database.session() as session:
        return set(session.scalars(select(Instance.sop_uid)))


def tls_node(node_factory: Callable[..., RunningNode], certs: Certificates) -> RunningNode:
    return node_factory(
        dicom_tls_port=free_port(),
        tls_cert_file=certs.server.cert,
        tls_key_file=certs.server.key,
        tls_ca_file=certs.ca,
    )


def test_plaintext_and_tls_listen_side_by_side(
    node_factory: Callable[..., RunningNode],
    certs: Certificates,
    siim_sample_dicoms: list[Path],
) -> None:
    import pydicom

    node = tls_node(node_factory, certs)
    over_tls, in_clear = siim_sample_dicoms[0], siim_sample_dicoms[1]

    done = tls_storescu([over_tls], node.listener.tls_port, certs.client, certs.ca)
    assert done.returncode == 0, done.stderr
    done = plain_storescu([in_clear], node.port)
    assert done.returncode == 0, done.stderr
    uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in (over_tls, in_clear)
    }
    assert stored(node) == uids

    with node.database.session() as session:
        accepted = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "association.accepted")
        ).all()
    assert sorted(bool(e.detail and e.detail["tls"]) for e in accepted) == [False, True]

    # plaintext on the TLS port is not DICOM there
    plain_on_tls = plain_storescu([siim_sample_dicoms[2]], node.listener.tls_port)
    assert plain_on_tls.returncode != 0
    assert stored(node) == uids


def test_tls_listener_refuses_clients_without_a_trusted_certificate(
    node_factory: Callable[..., RunningNode],
    certs: Certificates,
    siim_sample_dicoms: list[Path],
) -> None:
    node = tls_node(node_factory, certs)
    stranger = tls_storescu(
        siim_sample_dicoms[:1], node.listener.tls_port, certs.stranger, certs.ca
    )
    assert stranger.returncode != 0
    anonymous = tls_storescu(siim_sample_dicoms[:1], node.listener.tls_port, None, certs.ca)
    assert anonymous.returncode != 0
    assert stored(node) == set()
    # the client gives up at the TLS alert, maybe before the listener has written the audit
    deadline = time.monotonic() + 10
    while True:
        with node.database.session() as session:
            rejected = session.scalars(
                select(AuditEvent).where(AuditEvent.kind == "association.rejected")
            ).all()
        if len(rejected) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rejected) == 2  # who tried, in the audit trail
    assert all(e.message.startswith("rejected: TLS handshake failed") for e in rejected)
    assert {e.peer_address for e in rejected} == {"127.0.0.1"}
    # the listener is still fine for a client with a good certificate
    good = tls_storescu(siim_sample_dicoms[:1], node.listener.tls_port, certs.client, certs.ca)
    assert good.returncode == 0, good.stderr
    assert len(stored(node)) == 1


def test_a_client_that_connects_and_says_nothing_blocks_nobody(
    node_factory: Callable[..., RunningNode],
    certs: Certificates,
    siim_sample_dicoms: list[Path],
) -> None:
    """The TLS handshake happens in the admission loop, without blocking, under the ARTIM
    timeout: a peer that opens the TLS port and never speaks does not hold up the next one."""
    node = tls_node(node_factory, certs)
    silent = [socket.create_connection(("127.0.0.1", node.listener.tls_port)) for _ in range(3)]
    try:
        good = tls_storescu(siim_sample_dicoms[:1], node.listener.tls_port, certs.client, certs.ca)
        assert good.returncode == 0, good.stderr
        assert len(stored(node)) == 1
    finally:
        for sock in silent:
            sock.close()


def test_tls_only_listener_does_not_listen_in_clear(
    node_factory: Callable[..., RunningNode], certs: Certificates
) -> None:
    node = node_factory(
        dicom_plaintext=False,
        dicom_tls_port=free_port(),
        tls_cert_file=certs.server.cert,
        tls_key_file=certs.server.key,
        tls_ca_file=certs.ca,
    )
    assert set(node.listener.servers) == {"tls"}
    with pytest.raises(RuntimeError, match="plain listener is not running"):
        _ = node.port


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PNEUMONODE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tls_env(tmp_path: Path, certs: Certificates, identity: Pair | None) -> dict[str, str]:
    env = {"PNEUMONODE_DATA_DIR": str(tmp_path / "data"), "PNEUMONODE_TLS_CA_FILE": str(certs.ca)}
    if identity is not None:
        env["PNEUMONODE_TLS_CERT_FILE"] = str(identity.cert)
        env["PNEUMONODE_TLS_KEY_FILE"] = str(identity.key)
    return env


def test_results_go_out_over_tls_to_a_dcmtk_storescp(
    certs: Certificates, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    server_tls = ("+tls", str(certs.server.key), str(certs.server.cert), "+cf", str(certs.ca))
    with run_storescp(tmp_path / "pacs", options=("+xa", *server_tls)) as pacs:
        env = tls_env(tmp_path, certs, certs.client)
        echoed = run_cli(["echo", "--tls", pacs.destination], env)
        assert echoed.returncode == 0, echoed.stderr
        sent = run_cli(
            ["send", "--tls", "--to", pacs.destination, *map(str, siim_sample_dicoms[:3])], env
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len([p for p in pacs.folder.rglob("*") if p.is_file()]) == 3

        # a destination listed in tls_destinations gets TLS without the flag
        listed = {**env, "PNEUMONODE_DESTINATIONS": pacs.destination}
        listed["PNEUMONODE_TLS_DESTINATIONS"] = pacs.destination
        assert run_cli(["echo", pacs.destination], listed).returncode == 0
        # the same peer in clear: storescp speaks only TLS there
        in_clear = run_cli(["echo", "--timeout", "5", pacs.destination], env)
        assert in_clear.returncode != 0

        # storescp requires a client certificate: without ours, nothing goes
        anonymous = run_cli(["echo", "--tls", pacs.destination], tls_env(tmp_path, certs, None))
        assert anonymous.returncode != 0
        assert anonymous.stderr.count("\n") == 1
        assert "did it refuse our certificate?" in anonymous.stderr


def test_we_refuse_a_peer_whose_certificate_we_do_not_trust(
    certs: Certificates, tmp_path: Path
) -> None:
    impostor = ("+tls", str(certs.stranger.key), str(certs.stranger.cert), "-ic")
    with run_storescp(tmp_path / "pacs", options=("+xa", *impostor)) as pacs:
        refused = run_cli(
            ["echo", "--tls", pacs.destination], tls_env(tmp_path, certs, certs.client)
        )
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1 and "TLS handshake failed" in refused.stderr


def test_tls_settings_are_checked_at_start(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs tls_cert_file and tls_key_file"):
        Settings(dicom_tls_port=2762)
    with pytest.raises(ValidationError, match="no dicom_tls_port"):
        Settings(dicom_plaintext=False)
    with pytest.raises(ValidationError, match="tls_destinations must be listed"):
        Settings(tls_destinations=["PACS@10.0.0.1:2762"])
    broken = tmp_path / "broken.crt"
    broken.write_text("not a certificate\n")
    env = {
        "PNEUMONODE_DATA_DIR": str(tmp_path / "data"),
        "PNEUMONODE_DICOM_PORT": str(free_port()),
        "PNEUMONODE_DICOM_TLS_PORT": str(free_port()),
        "PNEUMONODE_TLS_CERT_FILE": str(broken),
        "PNEUMONODE_TLS_KEY_FILE": str(certs.server.key),
    }
    failed = run_cli(["dicom-listen"], env, timeout=60)
    assert failed.returncode != 0
    assert failed.stderr.startswith("error: cannot load the TLS certificates")
