"""The capture triggers under whatsmeow's own SQLite and statements (neonize in a subprocess).

Offline, connect() fails at the dial but leaves the client registered, so whatsmeow's contact and
chat-settings store writes still run: enough to prove the triggers compile in Go's SQLite, do not break
whatsmeow's transactions, and that the captured delta restores what whatsmeow wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from session_node import capture, restore, snapshot, store

J1 = "15550001111:7@s.whatsapp.net"

WORKER = """
import sys
from neonize.client import NewClient
from neonize.exc import NeonizeError
from neonize.utils.jid import build_jid

client = NewClient(sys.argv[1], uuid="capture-test")
try:
    client.connect()
except NeonizeError:
    pass  # offline: expected, the client stays registered
peer = build_jid("15550009999")
client.contact.put_contact_name(peer, "Full Name", "First")
client.contact.put_contact_name(peer, "Renamed", "First")
client.chat_settings.put_pinned(peer, True)
print("ok")
"""


def test_whatsmeow_writes_are_captured_and_restored(source, device, tmp_path: Path) -> None:
    device(source.worker, J1)
    with snapshot.take_snapshot(source.path) as snap:
        base = snap.read()
        capture.ack(source.supervisor, snap.covers_seq)
    source.worker.close()  # neonize's process owns the writes now; this one only observes
    version = capture.data_version(source.supervisor)

    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(source.path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]

    assert capture.data_version(source.supervisor) != version
    logged = [(tbl, k2) for tbl, _k1, k2, _k3, _k4 in source.log()]
    assert ("whatsmeow_contacts", "15550009999@s.whatsapp.net") in logged
    assert ("whatsmeow_chat_settings", "15550009999@s.whatsapp.net") in logged
    batch = capture.drain(source.supervisor)
    assert not batch.hot  # contacts and chat settings can wait for the batch timer
    target = restore.rebuild_store(tmp_path / "restored" / store.STORE_FILE, [base], [capture.encode(batch.delta)])
    assert store.diff_tables(source.path, target) == []
    assert store.dump_tables(target)["whatsmeow_chat_settings"][0][3] == 1  # pinned
