"""The DICOM upper layer state machine (PS3.8 9.2): its 13 states, 19 events and the actions of
its state transition table (Table 9-10), as pynetdicom's ``fsm.py`` has them, with a small
``StateMachine`` that steps through them.

The table is the single source of truth for what an event calls for: the listener
(``upper.py``, with ``admission.py`` for Sta2 and Sta13) and the requestor look the action up
here and then carry it out; they do not decide for themselves which PDU is unexpected. What the
actions do (send which PDU, start which timer) is in ``ACTIONS``; the code that does it is in
the roles. The ARTIM timer runs in ``admission.py`` (Sta2: until the A-ASSOCIATE-RQ is complete;
Sta13: until the peer closes after our A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT).

A (state, event) pair not in the table cannot happen (a PDU cannot arrive before the connection
exists) or is a local user's mistake: ``StateMachine.event`` raises ``InvalidEventError`` for
it, as pynetdicom does.
"""

from __future__ import annotations

import threading
from collections import deque
from enum import StrEnum

__all__ = [
    "ACTIONS",
    "EVENTS",
    "STATES",
    "TRANSITIONS",
    "Action",
    "Event",
    "InvalidEventError",
    "State",
    "StateMachine",
    "action_for",
    "pdu_event",
]


class State(StrEnum):
    """PS3.8 Table 9-10's states (descriptions in ``STATES``)."""

    STA1 = "Sta1"
    STA2 = "Sta2"
    STA3 = "Sta3"
    STA4 = "Sta4"
    STA5 = "Sta5"
    STA6 = "Sta6"
    STA7 = "Sta7"
    STA8 = "Sta8"
    STA9 = "Sta9"
    STA10 = "Sta10"
    STA11 = "Sta11"
    STA12 = "Sta12"
    STA13 = "Sta13"


class Event(StrEnum):
    """PS3.8 Table 9-10's events (descriptions in ``EVENTS``)."""

    EVT1 = "Evt1"
    EVT2 = "Evt2"
    EVT3 = "Evt3"
    EVT4 = "Evt4"
    EVT5 = "Evt5"
    EVT6 = "Evt6"
    EVT7 = "Evt7"
    EVT8 = "Evt8"
    EVT9 = "Evt9"
    EVT10 = "Evt10"
    EVT11 = "Evt11"
    EVT12 = "Evt12"
    EVT13 = "Evt13"
    EVT14 = "Evt14"
    EVT15 = "Evt15"
    EVT16 = "Evt16"
    EVT17 = "Evt17"
    EVT18 = "Evt18"
    EVT19 = "Evt19"


class Action(StrEnum):
    """PS3.8 Tables 9-6 to 9-9's actions (what each does, and the next state: ``ACTIONS``)."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"


S, E, A = State, Event, Action

STATES: dict[State, str] = {
    S.STA1: "Idle",
    S.STA2: "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)",
    S.STA3: "Awaiting local A-ASSOCIATE response primitive (from local user)",
    S.STA4: "Awaiting transport connection opening to complete (from local transport service)",
    S.STA5: "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    S.STA6: "Association established and ready for data transfer",
    S.STA7: "Awaiting A-RELEASE-RP PDU",
    S.STA8: "Awaiting local A-RELEASE response primitive (from local user)",
    S.STA9: "Release collision requestor side; awaiting A-RELEASE response (from local user)",
    S.STA10: "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    S.STA11: "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    S.STA12: "Release collision acceptor side; awaiting A-RELEASE response primitive",
    S.STA13: "Awaiting transport connection close indication (association no longer exists)",
}

EVENTS: dict[Event, str] = {
    E.EVT1: "A-ASSOCIATE request (local user)",
    E.EVT2: "Transport connect confirmation (local transport service)",
    E.EVT3: "A-ASSOCIATE-AC PDU (received on transport connection)",
    E.EVT4: "A-ASSOCIATE-RJ PDU (received on transport connection)",
    E.EVT5: "Transport connection indication (local transport service)",
    E.EVT6: "A-ASSOCIATE-RQ PDU (received on transport connection)",
    E.EVT7: "A-ASSOCIATE response primitive (accept)",
    E.EVT8: "A-ASSOCIATE response primitive (reject)",
    E.EVT9: "P-DATA request primitive",
    E.EVT10: "P-DATA-TF PDU (received on transport connection)",
    E.EVT11: "A-RELEASE request primitive",
    E.EVT12: "A-RELEASE-RQ PDU (received on transport connection)",
    E.EVT13: "A-RELEASE-RP PDU (received on transport connection)",
    E.EVT14: "A-RELEASE response primitive",
    E.EVT15: "A-ABORT request primitive",
    E.EVT16: "A-ABORT PDU (received on transport connection)",
    E.EVT17: "Transport connection closed indication (local transport service)",
    E.EVT18: "ARTIM timer expired (association reject/release timer)",
    E.EVT19: "Unrecognized or invalid PDU received",
}

#: Action -> (what it does, the next state; two where the standard gives a choice: AE-6 goes to
#: Sta3 if the request is acceptable to the service provider, else Sta13; AR-8 to Sta9 for the
#: association-requestor, else Sta10).
ACTIONS: dict[Action, tuple[str, tuple[State, ...]]] = {
    A.AE_1: ("Issue TRANSPORT CONNECT request primitive to local transport service", (S.STA4,)),
    A.AE_2: ("Send A-ASSOCIATE-RQ PDU", (S.STA5,)),
    A.AE_3: ("Issue A-ASSOCIATE confirmation (accept) primitive", (S.STA6,)),
    A.AE_4: (
        "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection",
        (S.STA1,),
    ),
    A.AE_5: ("Issue transport connection response primitive; start ARTIM timer", (S.STA2,)),
    A.AE_6: (
        "Stop ARTIM timer; if A-ASSOCIATE-RQ acceptable by service provider, issue A-ASSOCIATE "
        "indication primitive (Sta3), otherwise send A-ASSOCIATE-RJ PDU and start ARTIM (Sta13)",
        (S.STA3, S.STA13),
    ),
    A.AE_7: ("Send A-ASSOCIATE-AC PDU", (S.STA6,)),
    A.AE_8: ("Send A-ASSOCIATE-RJ PDU and start ARTIM timer", (S.STA13,)),
    A.DT_1: ("Send P-DATA-TF PDU", (S.STA6,)),
    A.DT_2: ("Send P-DATA indication primitive", (S.STA6,)),
    A.AR_1: ("Send A-RELEASE-RQ PDU", (S.STA7,)),
    A.AR_2: ("Issue A-RELEASE indication primitive", (S.STA8,)),
    A.AR_3: (
        "Issue A-RELEASE confirmation primitive, and close transport connection",
        (S.STA1,),
    ),
    A.AR_4: ("Issue A-RELEASE-RP PDU and start ARTIM timer", (S.STA13,)),
    A.AR_5: ("Stop ARTIM timer", (S.STA1,)),
    A.AR_6: ("Issue P-DATA indication", (S.STA7,)),
    A.AR_7: ("Issue P-DATA-TF PDU", (S.STA8,)),
    A.AR_8: (
        "Issue A-RELEASE indication (release collision): association-requestor Sta9, "
        "otherwise Sta10",
        (S.STA9, S.STA10),
    ),
    A.AR_9: ("Send A-RELEASE-RP PDU", (S.STA11,)),
    A.AR_10: ("Issue A-RELEASE confirmation primitive", (S.STA12,)),
    A.AA_1: (
        "Send A-ABORT PDU (service-user source) and start (or restart if already started) "
        "ARTIM timer",
        (S.STA13,),
    ),
    A.AA_2: ("Stop ARTIM timer if running; close transport connection", (S.STA1,)),
    A.AA_3: (
        "Issue A-ABORT indication (service-user initiated) or A-P-ABORT indication "
        "(service-provider initiated), and close transport connection",
        (S.STA1,),
    ),
    A.AA_4: ("Issue A-P-ABORT indication primitive", (S.STA1,)),
    A.AA_5: ("Stop ARTIM timer", (S.STA1,)),
    A.AA_6: ("Ignore PDU", (S.STA13,)),
    A.AA_7: ("Send A-ABORT PDU", (S.STA13,)),
    A.AA_8: (
        "Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and start "
        "ARTIM timer",
        (S.STA13,),
    ),
}

# The rows of Table 9-10 for the PDUs an established association must not get: AA-1 in Sta2
# (the requestor has not associated yet), AA-6/AA-7 in Sta13 (it no longer exists), AA-8 in
# every other state in which a PDU can arrive.
_STATES_WITH_A_PEER = (
    S.STA3,
    S.STA5,
    S.STA6,
    S.STA7,
    S.STA8,
    S.STA9,
    S.STA10,
    S.STA11,
    S.STA12,
)


def _unexpected(sta13: Action, **expected: Action) -> dict[State, Action]:
    """A row of the table for a PDU: AA-1 in Sta2, AA-8 in the states with a peer, ``sta13`` in
    Sta13, except in the states named in ``expected`` (``STA5=A.AE_3``)."""
    row = {S.STA2: A.AA_1, **dict.fromkeys(_STATES_WITH_A_PEER, A.AA_8), S.STA13: sta13}
    row.update({State[name]: action for name, action in expected.items()})
    return row


#: PS3.8 Table 9-10: event -> {state: action}; a state missing from an event's row cannot see it.
TRANSITIONS: dict[Event, dict[State, Action]] = {
    E.EVT1: {S.STA1: A.AE_1},
    E.EVT2: {S.STA4: A.AE_2},
    E.EVT3: _unexpected(A.AA_6, STA5=A.AE_3),
    E.EVT4: _unexpected(A.AA_6, STA5=A.AE_4),
    E.EVT5: {S.STA1: A.AE_5},
    E.EVT6: _unexpected(A.AA_7, STA2=A.AE_6),
    E.EVT7: {S.STA3: A.AE_7},
    E.EVT8: {S.STA3: A.AE_8},
    E.EVT9: {S.STA6: A.DT_1, S.STA8: A.AR_7},
    E.EVT10: _unexpected(A.AA_6, STA6=A.DT_2, STA7=A.AR_6),
    E.EVT11: {S.STA6: A.AR_1},
    E.EVT12: _unexpected(A.AA_6, STA6=A.AR_2, STA7=A.AR_8),
    E.EVT13: _unexpected(A.AA_6, STA7=A.AR_3, STA10=A.AR_10, STA11=A.AR_3),
    E.EVT14: {S.STA8: A.AR_4, S.STA9: A.AR_9, S.STA12: A.AR_4},
    E.EVT15: {S.STA4: A.AA_2, **dict.fromkeys(_STATES_WITH_A_PEER, A.AA_1)},
    E.EVT16: {S.STA2: A.AA_2, **dict.fromkeys(_STATES_WITH_A_PEER, A.AA_3), S.STA13: A.AA_2},
    E.EVT17: {
        S.STA2: A.AA_5,
        S.STA4: A.AA_4,
        **dict.fromkeys(_STATES_WITH_A_PEER, A.AA_4),
        S.STA13: A.AR_5,
    },
    E.EVT18: {S.STA2: A.AA_2, S.STA13: A.AA_2},
    E.EVT19: _unexpected(A.AA_7),
}

#: PDU type (PS3.8 9.3.1) -> the event of its arrival; any other type is Evt19.
_PDU_EVENTS = {
    0x01: E.EVT6,  # A-ASSOCIATE-RQ
    0x02: E.EVT3,  # A-ASSOCIATE-AC
    0x03: E.EVT4,  # A-ASSOCIATE-RJ
    0x04: E.EVT10,  # P-DATA-TF
    0x05: E.EVT12,  # A-RELEASE-RQ
    0x06: E.EVT13,  # A-RELEASE-RP
    0x07: E.EVT16,  # A-ABORT
}


def pdu_event(kind: int) -> Event:
    """The event of a PDU of type ``kind`` arriving: Evt19 for an unrecognised type."""
    return _PDU_EVENTS.get(kind, E.EVT19)


class InvalidEventError(Exception):
    """An event that cannot happen in the state it came in (no action in Table 9-10)."""


def action_for(state: State, event: Event) -> Action:
    """The action Table 9-10 gives ``event`` in ``state``; raises ``InvalidEventError``."""
    action = TRANSITIONS[event].get(state)
    if action is None:
        raise InvalidEventError(f"{event} ({EVENTS[event]}) cannot happen in {state}")
    return action


class StateMachine:
    """One association's state, moved by ``event``: thread-safe (a shutdown may abort from
    another thread while the association's own thread reads)."""

    def __init__(self, state: State = S.STA1, *, requestor: bool) -> None:
        self.state = state
        self.requestor = requestor
        #: the last transitions (state, event, action), for a log
        self.history: deque[tuple[State, Event, Action]] = deque(maxlen=32)
        self._lock = threading.Lock()

    def event(self, event: Event, *, acceptable: bool = True) -> Action:
        """Move on ``event``; returns the action the caller must carry out. ``acceptable``
        chooses AE-6's next state: whether the service provider accepts the A-ASSOCIATE-RQ."""
        with self._lock:
            action = action_for(self.state, event)
            choices = ACTIONS[action][1]
            if action == A.AE_6:
                following = choices[0] if acceptable else choices[1]
            elif action == A.AR_8:
                following = choices[0] if self.requestor else choices[1]
            else:
                (following,) = choices
            self.history.append((self.state, event, action))
            self.state = following
            return action

    def __repr__(self) -> str:
        return f"StateMachine({self.state}, {STATES[self.state]})"
