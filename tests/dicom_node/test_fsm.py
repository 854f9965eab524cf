"""The upper layer's state machine (dicom_node/fsm.py) against PS3.8 Table 9-10, state by event,
and the listener (dicom_node/upper.py) on a real socket doing what the table says."""

from __future__ import annotations

import socket
import struct

import pytest

from pneumonode.dicom_node.dimse import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION
from pneumonode.dicom_node.fsm import (
    ACTIONS,
    EVENTS,
    STATES,
    TRANSITIONS,
    Action,
    Event,
    InvalidEventError,
    State,
    StateMachine,
    action_for,
    pdu_event,
)
from pneumonode.dicom_node.pdu import AssociateRQ, ae_title_field
from pneumonode.dicom_node.pdu_items import (
    APPLICATION_CONTEXT,
    PresentationContextRQ,
    UserInformation,
)

S, E, A = State, Event, Action

#: The events of a PDU arriving (Evt19: one unrecognised or invalid).
PDU_EVENTS = (E.EVT3, E.EVT4, E.EVT6, E.EVT10, E.EVT12, E.EVT13, E.EVT16, E.EVT19)
#: Where a PDU can arrive: every state but Sta1 (no connection) and Sta4 (not connected yet).
STATES_WITH_A_CONNECTION = [state for state in State if state not in (S.STA1, S.STA4)]
#: PS3.8 Table 9-10: the PDUs each state expects, and what they lead to. Every other PDU in
#: that state aborts the association (A-ABORT PDUs are listed apart: AA-2 or AA-3).
EXPECTED = {
    (S.STA2, E.EVT6): A.AE_6,
    (S.STA5, E.EVT3): A.AE_3,
    (S.STA5, E.EVT4): A.AE_4,
    (S.STA6, E.EVT10): A.DT_2,
    (S.STA6, E.EVT12): A.AR_2,
    (S.STA7, E.EVT10): A.AR_6,
    (S.STA7, E.EVT12): A.AR_8,
    (S.STA7, E.EVT13): A.AR_3,
    (S.STA10, E.EVT13): A.AR_10,
    (S.STA11, E.EVT13): A.AR_3,
}


@pytest.mark.parametrize("state", STATES_WITH_A_CONNECTION)
@pytest.mark.parametrize("event", [e for e in PDU_EVENTS if e is not E.EVT16])
def test_an_unexpected_pdu_aborts_in_every_state(state: State, event: Event) -> None:
    """Table 9-10: a PDU a state does not expect is answered with an A-ABORT: AA-1 before the
    association (Sta2), AA-8 while there is one (provider source, A-P-ABORT to the user), and
    in Sta13, where it no longer exists, ignored (AA-6) or aborted again (AA-7)."""
    action = action_for(state, event)
    if (state, event) in EXPECTED:
        assert action is EXPECTED[state, event]
    elif state is S.STA2:
        assert action is A.AA_1
    elif state is S.STA13:
        assert action is (A.AA_7 if event in (E.EVT6, E.EVT19) else A.AA_6)
    else:
        assert action is A.AA_8
    machine = StateMachine(state, requestor=False)
    assert machine.event(event) is action
    if action in (A.AA_1, A.AA_6, A.AA_7, A.AA_8):
        assert machine.state is S.STA13  # then the peer closes within the ARTIM timeout


@pytest.mark.parametrize("state", STATES_WITH_A_CONNECTION)
def test_a_peer_abort_closes_and_a_closed_connection_ends_every_state(state: State) -> None:
    """A-ABORT PDU (Evt16): AA-2 without an association (Sta2, Sta13), else AA-3 (A-ABORT
    indication); the connection closing (Evt17): AA-5 in Sta2, AR-5 in Sta13, else AA-4.
    Every one ends in Sta1."""
    outside = state in (S.STA2, S.STA13)
    assert action_for(state, E.EVT16) is (A.AA_2 if outside else A.AA_3)
    closed = {S.STA2: A.AA_5, S.STA13: A.AR_5}.get(state, A.AA_4)
    assert action_for(state, E.EVT17) is closed
    for event in (E.EVT16, E.EVT17):
        machine = StateMachine(state, requestor=True)
        machine.event(event)
        assert machine.state is S.STA1


def test_the_artim_timer_and_local_aborts() -> None:
    """Evt18 (ARTIM expired) only runs in Sta2 and Sta13: AA-2, close. A local A-ABORT request
    (Evt15) is AA-1 wherever there is an association or a request under way, AA-2 in Sta4."""
    assert {s for s, _ in TRANSITIONS[E.EVT18].items()} == {S.STA2, S.STA13}
    assert set(TRANSITIONS[E.EVT18].values()) == {A.AA_2}
    assert action_for(S.STA4, E.EVT15) is A.AA_2
    for state in (S.STA3, *[s for s in State if S.STA5 <= s <= S.STA12]):
        assert action_for(state, E.EVT15) is A.AA_1


def test_every_state_event_and_action_is_described_and_used() -> None:
    assert set(STATES) == set(State) and len(State) == 13
    assert set(EVENTS) == set(Event) and len(Event) == 19
    assert set(TRANSITIONS) == set(Event)
    used = {action for row in TRANSITIONS.values() for action in row.values()}
    assert used == set(ACTIONS) == set(Action)
    for description, following in ACTIONS.values():
        assert description and all(state in STATES for state in following)


def test_an_event_that_cannot_happen_is_refused() -> None:
    """No PDU arrives in Sta1 (no connection); a P-DATA request needs an association."""
    with pytest.raises(InvalidEventError, match="Evt10"):
        action_for(S.STA1, E.EVT10)
    machine = StateMachine(S.STA2, requestor=False)
    with pytest.raises(InvalidEventError):
        machine.event(E.EVT9)
    assert machine.state is S.STA2  # unchanged


def test_the_acceptor_walks_from_connection_to_release() -> None:
    machine = StateMachine(requestor=False)
    steps = [
        (E.EVT5, A.AE_5, S.STA2),  # connection: ARTIM started
        (E.EVT6, A.AE_6, S.STA3),  # A-ASSOCIATE-RQ, acceptable to the provider
        (E.EVT7, A.AE_7, S.STA6),  # accepted: A-ASSOCIATE-AC
        (E.EVT10, A.DT_2, S.STA6),  # P-DATA-TF
        (E.EVT9, A.DT_1, S.STA6),  # our response
        (E.EVT12, A.AR_2, S.STA8),  # A-RELEASE-RQ
        (E.EVT14, A.AR_4, S.STA13),  # A-RELEASE-RP, ARTIM started
        (E.EVT17, A.AR_5, S.STA1),  # the peer closed
    ]
    for event, action, state in steps:
        assert machine.event(event) is action
        assert machine.state is state
    assert [step[2] for step in machine.history] == [step[1] for step in steps]


def test_ae6_rejects_for_the_provider_and_ae8_for_the_user() -> None:
    provider = StateMachine(S.STA2, requestor=False)
    assert provider.event(E.EVT6, acceptable=False) is A.AE_6
    assert provider.state is S.STA13  # A-ASSOCIATE-RJ sent, ARTIM started
    user = StateMachine(S.STA2, requestor=False)
    user.event(E.EVT6)
    assert user.event(E.EVT8) is A.AE_8
    assert user.state is S.STA13


@pytest.mark.parametrize("requestor", [True, False])
def test_a_release_collision_takes_each_side_its_way(requestor: bool) -> None:
    """AR-8: the association-requestor goes to Sta9, answers (AR-9, Sta11) and then takes the
    acceptor's A-RELEASE-RP (AR-3); the acceptor goes to Sta10, takes the requestor's
    A-RELEASE-RP (AR-10, Sta12) and answers (AR-4, Sta13)."""
    machine = StateMachine(S.STA6, requestor=requestor)
    assert machine.event(E.EVT11) is A.AR_1  # our A-RELEASE-RQ
    assert machine.event(E.EVT12) is A.AR_8  # theirs
    if requestor:
        assert machine.state is S.STA9
        assert machine.event(E.EVT14) is A.AR_9
        assert machine.event(E.EVT13) is A.AR_3
        assert machine.state is S.STA1
    else:
        assert machine.state is S.STA10
        assert machine.event(E.EVT13) is A.AR_10
        assert machine.event(E.EVT14) is A.AR_4
        assert machine.state is S.STA13


def test_pdu_types_map_to_their_events() -> None:
    assert [pdu_event(kind) for kind in range(1, 8)] == [
        E.EVT6,
        E.EVT3,
        E.EVT4,
        E.EVT10,
        E.EVT12,
        E.EVT13,
        E.EVT16,
    ]
    assert pdu_event(0x00) is pdu_event(0x08) is pdu_event(0xFF) is E.EVT19


# --- the listener on a socket ---------------------------------------------------------------


def _associate_rq() -> bytes:
    return AssociateRQ(
        ae_title_field("PNEUMONODE"),
        ae_title_field("ECHOSCU"),
        APPLICATION_CONTEXT,
        [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_VR_LITTLE_ENDIAN])],
        UserInformation(max_length=16_384),
    ).encode()


def _pdu(kind: int, body: bytes = bytes(4)) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _read_all(sock: socket.socket) -> bytes:
    """What the listener sent until it closed (a reset, when it closes with our PDU unread, is
    a close too)."""
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _on_the_wire(action: Action, reason: int) -> bytes:
    """What the listener sends for ``action`` (then closes): an A-ABORT for the abort actions
    (from the service provider, with ``reason``), an A-RELEASE-RP for AR-2 (answered at once,
    AR-4), nothing for AA-2 and AA-3."""
    if action in (A.AA_1, A.AA_8):
        return _pdu(0x07, bytes([0, 0, 2, reason]))
    if action is A.AR_2:
        return _pdu(0x06)
    assert action in (A.AA_2, A.AA_3), action
    return b""


#: PDUs a peer can send: (type, body, the A-ABORT reason we expect if it is refused)
_PDUS = {
    "A-ASSOCIATE-RQ": (0x01, _associate_rq()[6:], 0x02),
    "A-ASSOCIATE-AC": (0x02, _associate_rq()[6:], 0x02),
    "A-ASSOCIATE-RJ": (0x03, bytes([0, 1, 1, 1]), 0x02),
    "A-RELEASE-RQ": (0x05, bytes(4), 0x02),
    "A-RELEASE-RP": (0x06, bytes(4), 0x02),
    "A-ABORT": (0x07, bytes(4), 0x02),
    "type 0x0A": (0x0A, bytes(4), 0x01),  # unrecognised PDU
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(_PDUS))
def test_the_listener_answers_each_pdu_in_sta6_as_the_table_says(node_factory, name) -> None:
    """An established association (Sta6) gets each PDU type; the listener sends what the
    table's action calls for, and closes."""
    node = node_factory()
    kind, body, reason = _PDUS[name]
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq())
        sock.settimeout(10)
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC: Sta6
        sock.recv(65536)
        sock.sendall(_pdu(kind, body))
        reply = _read_all(sock)
    assert reply == _on_the_wire(action_for(S.STA6, pdu_event(kind)), reason)


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in _PDUS if n != "A-ASSOCIATE-RQ"] + ["P-DATA-TF"])
def test_the_listener_answers_each_first_pdu_in_sta2_as_the_table_says(node_factory, name) -> None:
    """A connection's first PDU (Sta2) that is not an A-ASSOCIATE-RQ: AA-1 (an A-ABORT), or
    for an A-ABORT AA-2 (the connection closed, nothing sent)."""
    node = node_factory()
    kind, body, reason = _PDUS.get(name, (0x04, bytes(8), 0x02))
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_pdu(kind, body))
        reply = _read_all(sock)
    assert reply == _on_the_wire(action_for(S.STA2, pdu_event(kind)), reason)


@pytest.mark.integration
def test_the_network_timeout_is_the_service_users_abort(node_factory) -> None:
    """Silence in Sta6 past the network timeout: we decide to abort, as the service user
    (Evt15: AA-1, an A-ABORT with source 0), and close."""
    node = node_factory(network_timeout=1.0)
    assert action_for(S.STA6, E.EVT15) is A.AA_1
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq())
        sock.settimeout(10)
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC: Sta6
        sock.recv(65536)
        reply = _read_all(sock)
    assert reply == _pdu(0x07, bytes([0, 0, 0, 0]))
