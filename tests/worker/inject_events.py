"""Run in a subprocess by test_worker_neonize: feed real neonize event payloads through the
worker's registered handlers, the same way Go's callback does (``Event.execute`` with a pointer
and a size), and let the worker's EventWriter report to the file given as argv[2].

Offline, WhatsApp never sends PairSuccess, LoggedOut or StreamReplaced, so this is the only way
to exercise those handlers against the real neonize classes.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

from neonize.events import (
    EVENT_TO_INT,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    PairStatusEv,
    StreamReplacedEv,
)
from neonize.proto.Neonize_pb2 import JID

from session_node import worker


def deliver(session: worker.NeonizeSession, message: object) -> None:
    data = message.SerializePartialToString()  # type: ignore[attr-defined]
    buf = ctypes.create_string_buffer(data, len(data) or 1)
    session.client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[type(message)])


def main() -> None:
    store, events_path = sys.argv[1], sys.argv[2]
    stop = worker.StopSignal()
    fd = os.open(events_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ctx = worker.Context(
        worker.parse_args(["--store", store, "--session", "inject"]),
        worker.EventWriter(fd, stop),
        stop,
        worker.LeaseGuard(None),
    )
    session = worker.NeonizeSession(ctx)  # NewClient touches nothing in Go; no connect() here
    qr = ctypes.create_string_buffer(b"2@qrdata,more")
    session.client._NewClient__onQr(0, ctypes.addressof(qr))  # what Go calls for a QR code
    jid = JID(User="15550001111", Device=7, Server="s.whatsapp.net")
    deliver(session, PairStatusEv(ID=jid, Status=PairStatusEv.SUCCESS, Platform="smbi"))
    deliver(session, PairStatusEv(Status=PairStatusEv.ERROR, Error="pairing rejected"))
    deliver(session, ConnectedEv())
    deliver(session, ConnectFailureEv(Reason=8, Message="internal server error"))
    deliver(session, DisconnectedEv())
    deliver(session, StreamReplacedEv())
    deliver(session, LoggedOutEv(Reason=2, OnConnect=True))  # after a stop: reported, first reason kept
    print(json.dumps({"reason": stop.reason, "code": stop.code}))


if __name__ == "__main__":
    main()
