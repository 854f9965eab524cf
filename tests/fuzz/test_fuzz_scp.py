"""Broken datasets through the Storage SCP (issue 8, bad DICOM input fuzzing).

Mutants of the SIIM samples go to our in-process listener over real associations (several
C-STOREs each, several associations). Every one must be answered with a C-STORE status:
success when the bytes are a whole dataset we can store (kept byte for byte, with its row),
0xC2xx "cannot understand" otherwise, or 0xA900 "data set does not match SOP Class" when its
SOP Class UID is not the C-STORE's; never a dropped association, an exception status (0x0110,
0xC211) or out of resources. Afterwards the node answers C-ECHO, stores a good file, and its
spool holds no partial file and nothing the database does not know.

What a peer sends is the dataset only: the file meta is ours to write, from the presentation
context. So the SCP's share of "bogus transfer syntax" is a dataset sent under a context of
another transfer syntax than its bytes are encoded in; a transfer syntax we do not support
cannot be sent at all, as the association refuses its context (tested below).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pynetdicom.association
import pytest
from dicom_mutations import Base, Mutant, file_meta_bytes, mutate, unique_uid, with_uid
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from pneumonode.db.models import AuditEvent, Instance
from pneumonode.dicom_node.receive import dataset_offset

if TYPE_CHECKING:
    from conftest import RunningNode

#: pydicom warns about what it reads in the broken input, as it should; not news here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

#: Transfer syntaxes a mutant may be sent under (the SIIM bytes are JPEG Baseline, explicit
#: VR little endian): mostly its own, sometimes one that reads its bytes wrongly.
SYNTAXES = (
    JPEGBaseline8Bit,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
SOP_CLASSES = (
    SecondaryCaptureImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
)
#: An answer takes about 10 ms here. A hang is no answer within the node's own network
#: timeout (60 s by default); less would fail on a shared machine whose disk stalls.
PER_STORE_SECONDS = 60.0


@dataclass(frozen=True)
class Sent:
    """One C-STORE of a mutant and its answer (status None: no answer)."""

    mutant: Mutant
    sop_uid: str
    syntax: str
    dataset: bytes
    status: int | None
    comment: str
    seconds: float

    def __str__(self) -> str:
        answer = "no answer" if self.status is None else f"{self.status:#06x} {self.comment!r}"
        return f"{self.mutant} [sent as {pydicom.uid.UID(self.syntax).name}] -> {answer}"

    @property
    def stored(self) -> bool:
        return self.status == 0x0000

    @property
    def refused(self) -> bool:
        return self.status is not None and (
            0xC200 <= self.status <= 0xC2FF or self.status == 0xA900
        )


def _storage_scu() -> AE:
    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = PER_STORE_SECONDS
    for sop_class in SOP_CLASSES:
        for syntax in SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


def _associate(ae: AE, port: int) -> Association:
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMONODE")
    assert assoc.is_established, "the node refused an association"
    # pynetdicom leaves Nagle's algorithm on: each C-STORE (command, then dataset) would
    # wait for the peer's delayed ACK, 40 ms here, which is most of the run time
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def _send_mutant(assoc: Association, base: Base, seed: int, index: int, path: Path) -> Sent:
    """Mutate ``base`` as a new instance and C-STORE its dataset bytes as they are."""
    uid_length = next(f.length for f in base.fields if f.tag == 0x00080018)
    sop_uid = unique_uid(seed, index, uid_length)
    mutant = mutate(with_uid(base, sop_uid), seed, index, protect_meta=True)
    rng = random.Random(f"{seed}:{index}:context")
    syntax = JPEGBaseline8Bit if rng.random() < 0.85 else rng.choice(SYNTAXES)
    sop_class = rng.choice(SOP_CLASSES) if rng.random() < 0.1 else SecondaryCaptureImageStorage
    dataset = mutant.data[base.dataset_at :]
    path.write_bytes(file_meta_bytes(sop_class, sop_uid, syntax) + dataset)
    started = time.monotonic()
    answer = assoc.send_c_store(path)
    seconds = time.monotonic() - started
    status = int(answer.Status) if "Status" in answer else None
    comment = str(answer.get("ErrorComment", ""))
    return Sent(mutant, sop_uid, str(syntax), dataset, status, comment, seconds)


def _one_connection(
    port: int, bases: list[Base], seed: int, indices: range, per_association: int, path: Path
) -> list[Sent]:
    ae = _storage_scu()
    sent: list[Sent] = []
    assoc: Association | None = None
    try:
        for number, index in enumerate(indices):
            if assoc is None or not assoc.is_established or number % per_association == 0:
                if assoc is not None and assoc.is_established:
                    assoc.release()
                assoc = _associate(ae, port)
            sent.append(_send_mutant(assoc, bases[index % len(bases)], seed, index, path))
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return sent


def fuzz_scp(
    port: int,
    bases: list[Base],
    seed: int,
    count: int,
    per_association: int,
    scratch: Path,
    connections: int = 1,
) -> list[Sent]:
    """Send mutants 0..count-1 from ``connections`` peers at once, each opening a new
    association every ``per_association`` C-STOREs; returns every answer."""
    with ThreadPoolExecutor(connections) as pool:
        runs = [
            pool.submit(
                _one_connection,
                port,
                bases,
                seed,
                range(number, count, connections),
                per_association,
                scratch / f"mutant-{number}.dcm",
            )
            for number in range(connections)
        ]
        return [one for run in runs for one in run.result()]


def _patient_identifiers(bases: list[Base]) -> set[str]:
    identifiers = set()
    for base in bases:
        ds = pydicom.dcmread(BytesIO(base.data), stop_before_pixels=True)
        identifiers |= {str(ds.PatientID).upper(), str(ds.PatientName).upper()} - {""}
    return identifiers


def check_no_patient_data(
    node: RunningNode,
    identifiers: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No patient name or ID in a log record or an audit message, however broken the input
    that carried them (a mutation may move them into any element)."""
    logged = [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    with node.database.session() as session:
        audited = [f"{e.message} {e.detail or ''}" for e in session.scalars(select(AuditEvent))]
    for where, texts in (("log", logged), ("audit trail", audited)):
        leaks = [text for text in texts if any(i in text.upper() for i in identifiers)]
        assert not leaks, f"patient data in the {where}: {leaks[:3]}"


def check_answers(sent: list[Sent], seed: int) -> None:
    """Each mutant got a status, success or a refusal (cannot understand, data set does not
    match SOP Class), in good time."""
    problems = []
    for one in sent:
        if one.status is None:
            problems.append(f"{one}: no answer, the association ended after {one.seconds:.1f} s")
        elif not (one.stored or one.refused):
            problems.append(f"{one}: neither success nor a refusal")
        elif one.seconds > PER_STORE_SECONDS:
            problems.append(f"{one}: answered after {one.seconds:.1f} s")
    replay = f"seed {seed} (PNEUMONODE_TEST_FUZZ_SEED replays it)"
    assert not problems, f"{len(problems)} problem(s), {replay}:\n" + "\n".join(problems[:30])


def check_node_after(node: RunningNode, sent: list[Sent], good: Path) -> None:
    """The node still works, and spool and database agree with the answers it gave."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = _associate(ae, node.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    ae = _storage_scu()
    assoc = _associate(ae, node.port)
    assert assoc.send_c_store(pydicom.dcmread(good)).Status == 0x0000
    assoc.release()

    spool = node.spool
    assert not list((spool / ".incoming").iterdir()), "partial files left in the spool"
    strays = [
        p
        for p in spool.rglob("*")
        if p.is_file() and not (p.suffix == ".dcm" and p.parent.parent == spool)
    ]
    assert not strays, f"files other than spooled instances: {strays[:5]}"

    stored = {one.sop_uid: one for one in sent if one.stored}
    with node.database.session() as session:
        rows = {row.sop_uid: row for row in session.scalars(select(Instance))}
        refusals = session.scalar(select(func.count()).where(AuditEvent.kind == "instance.refused"))
    good_uid = str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    assert set(rows) == set(stored) | {good_uid}
    assert len(list(spool.glob("*/*.dcm"))) == len(rows)
    for uid, one in stored.items():
        path = spool / rows[uid].path
        data = path.read_bytes()
        assert data[dataset_offset(path) :] == one.dataset, f"{one}: not kept byte for byte"
    assert refusals == sum(one.refused for one in sent)


def _fuzz_and_check(
    node: RunningNode,
    bases: list[Base],
    seed: int,
    count: int,
    per_association: int,
    folder: Path,
    good: Path,
    caplog: pytest.LogCaptureFixture,
    connections: int = 1,
) -> list[Sent]:
    caplog.set_level(logging.INFO)
    sent = fuzz_scp(node.port, bases, seed, count, per_association, folder, connections)
    check_answers(sent, seed)
    check_node_after(node, sent, good)
    check_no_patient_data(node, _patient_identifiers(bases), caplog)
    return sent


def _split_at_group_length(path: Path) -> tuple[pydicom.Dataset, int]:
    """The file meta and where the dataset starts, by the meta's group length. (pynetdicom's
    split_dataset reads group 0002 elements as long as they come, so it would take a broken
    dataset's first elements as file meta when a mutation gave them group 0002.)"""
    offset = dataset_offset(path)
    with path.open("rb") as handle:
        meta = pydicom.dcmread(BytesIO(handle.read(offset))).file_meta
    return meta, offset


@pytest.fixture
def send_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's dataset bytes as they are, without decoding them."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(pynetdicom.association, "split_dataset", _split_at_group_length)


@pytest.mark.parametrize(
    ("offset", "count", "per_association", "connections", "at_least"),
    [
        pytest.param(0, 200, 50, 1, 20, id="hundreds"),
        pytest.param(1, 2000, 100, 2, 200, id="thousands", marks=pytest.mark.slow),
    ],
)
@pytest.mark.usefixtures("send_raw_bytes")
def test_mutants_each_get_a_status_and_the_node_stays_healthy(
    node_factory: Callable[..., RunningNode],
    scp_bases: list[Base],
    siim_sample_dicoms: list[Path],
    fuzz_seed: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    offset: int,
    count: int,
    per_association: int,
    connections: int,
    at_least: int,
) -> None:
    """Hundreds in the default run; thousands from two peers at once (slow)."""
    node = node_factory()
    sent = _fuzz_and_check(
        node,
        scp_bases,
        fuzz_seed + offset,
        count,
        per_association,
        tmp_path,
        siim_sample_dicoms[0],
        caplog,
        connections,
    )
    assert sum(one.stored for one in sent) >= at_least
    assert sum(one.refused for one in sent) >= at_least


@pytest.mark.usefixtures("send_raw_bytes")
def test_a_transfer_syntax_we_do_not_decode_cannot_be_sent(
    node_factory: Callable[..., RunningNode], scp_bases: list[Base], tmp_path: Path
) -> None:
    """The SCP's part of 'bogus transfer syntax in the file meta': a peer sends under a
    presentation context the association accepted, and ours refuses unknown syntaxes, so no
    C-STORE can carry one (pynetdicom finds no context for it); the others work."""
    bogus = ["1.2.3.4.5.6.7.8.9", "1.2.840.10008.1.2.4.100"]  # unknown; MPEG2, not ours
    ae = AE(ae_title="STORESCU")
    for syntax in [*bogus, JPEGBaseline8Bit]:
        ae.add_requested_context(SecondaryCaptureImageStorage, syntax)
    node = node_factory()
    assoc = _associate(ae, node.port)
    assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [JPEGBaseline8Bit]
    assert sorted(cx.transfer_syntax[0] for cx in assoc.rejected_contexts) == sorted(bogus)
    base = scp_bases[0]
    ds = pydicom.dcmread(BytesIO(base.data), stop_before_pixels=True)
    path = tmp_path / "bogus.dcm"
    for syntax in [*bogus, JPEGBaseline8Bit]:
        meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
        path.write_bytes(meta + base.data[base.dataset_at :])
        if syntax in bogus:
            with pytest.raises(ValueError, match=r"presentation context|not a transfer syntax"):
                assoc.send_c_store(path)
        else:
            assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()


@pytest.mark.usefixtures("send_raw_bytes")
def test_a_patient_name_in_the_modality_stays_out_of_the_audit_trail(
    node_factory: Callable[..., RunningNode],
    scp_bases: list[Base],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mutation that gives Patient's Name the tag of Modality (it then follows, and wins
    over, the real Modality): the instance is stored and skipped as 'secondary capture with
    modality <the patient's name>, not CR/DX'."""
    caplog.set_level(logging.INFO)
    node = node_factory()
    base = scp_bases[0]
    data = bytearray(base.data)
    name = next(f for f in base.fields if f.tag == 0x00100010)
    data[name.offset : name.offset + 4] = b"\x08\x00\x60\x00"
    ds = pydicom.dcmread(BytesIO(base.data), stop_before_pixels=True)
    path = tmp_path / "moved-name.dcm"
    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), JPEGBaseline8Bit)
    path.write_bytes(meta + bytes(data[base.dataset_at :]))
    assoc = _associate(_storage_scu(), node.port)
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    check_no_patient_data(node, _patient_identifiers([base]), caplog)


# ------------------------------------------------- regressions: what the fuzzing found


def _store_bytes(node: RunningNode, base: Base, dataset: bytes, path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(BytesIO(base.data), stop_before_pixels=True)
    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), JPEGBaseline8Bit)
    path.write_bytes(meta + dataset)
    assoc = _associate(_storage_scu(), node.port)
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


@pytest.mark.usefixtures("send_raw_bytes")
def test_an_element_whose_value_cannot_be_decoded_is_not_understood(
    node_factory: Callable[..., RunningNode], scp_bases: list[Base], tmp_path: Path
) -> None:
    """Found by 'VR of (0028,0004) CS -> b'FD'': 12 bytes are no whole number of 8-byte floats,
    and pydicom raised (BytesLengthException) when the selection first read Photometric
    Interpretation, in the middle of storing: 0x0110 processing failure, with a traceback
    that quoted the value in the log. Now the structure check finds it first (an FD value is
    a whole number of 8-byte floats): 0xC210, refused and audited by tag."""
    node = node_factory()
    base = scp_bases[0]
    data = bytearray(base.data)
    photometric = next(f for f in base.fields if f.tag == 0x00280004)
    data[photometric.offset + 4 : photometric.offset + 6] = b"FD"
    answer = _store_bytes(node, base, bytes(data[base.dataset_at :]), tmp_path / "fd.dcm")
    assert answer.Status == 0xC210 and answer.ErrorComment.startswith("cannot understand")
    with node.database.session() as session:
        refused = session.scalars(select(AuditEvent).where(AuditEvent.kind == "instance.refused"))
        assert [e.message for e in refused] == [
            "refused: damaged dataset: Photometric Interpretation (0028,0004) FD of 12 bytes is "
            "no whole number of 8-byte values"
        ]


@pytest.mark.usefixtures("send_raw_bytes")
def test_a_patient_id_read_as_the_character_set_stays_out_of_the_log(
    node_factory: Callable[..., RunningNode],
    scp_bases: list[Base],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by a tag changed to (0008,0005): pydicom warned "Unknown encoding '<Patient ID>'"
    into the log. pydicom's warnings are now redacted ('…') wherever they quote a value."""
    caplog.set_level(logging.INFO)
    node = node_factory()
    base = scp_bases[0]
    data = bytearray(base.data)
    patient_id = next(f for f in base.fields if f.tag == 0x00100020)
    data[patient_id.offset : patient_id.offset + 4] = b"\x08\x00\x05\x00"
    answer = _store_bytes(node, base, bytes(data[base.dataset_at :]), tmp_path / "charset.dcm")
    assert answer.Status in (0x0000, 0xC210)
    assert any("Unknown encoding '…'" in r.getMessage() for r in caplog.records)
    check_no_patient_data(node, _patient_identifiers([base]), caplog)
