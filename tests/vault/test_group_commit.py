"""Group commit: one-chunk records of many sessions share a transaction, yet each is judged
on its own (a stale one is refused alone) and every committed one restores to its bytes."""

from __future__ import annotations

import asyncio

from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import NODE_A, acquire, auth, put, restore

from vault_service.errors import VaultError
from vault_service.storage import engine as engine_mod
from vault_service.storage import records
from vault_service.storage.tokens import Principal
from vault_service.vault import RecordHeader

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA
NODE = Principal("default", "node", "node-a")


async def test_one_batch_judges_each_record_alone(vault) -> None:
    stub, core = vault.sync(), vault.running.vault
    epochs = {}
    for sid in ("a", "b", "c"):
        epochs[sid] = (await acquire(stub, sid, "n1")).lease.epoch
        assert (await put(stub, "n1", sid, epochs[sid], 0, SNAP, sid.encode())).ack.version == 1

    def header(sid: str, base: int, epoch: int | None = None) -> RecordHeader:
        return RecordHeader(sid, "n1", epochs[sid] if epoch is None else epoch, base, DELTA)

    batch = [
        (NODE, header("a", 1), b"a2"),
        (NODE, header("b", 1, epoch=epochs["b"] + 7), b"stale epoch"),
        (NODE, header("a", 2), b"a3"),  # follows a2 inside the same transaction
        (NODE, header("c", 0), b"stale base"),
        (NODE, header("c", 1), b"c2"),
    ]
    results = await asyncio.to_thread(core.commit_many, batch)
    assert results[0] == 2 and results[2] == 3 and results[4] == 2
    assert isinstance(results[1], VaultError) and results[1].reason == "STALE_EPOCH"
    assert isinstance(results[3], VaultError) and results[3].reason == "STALE_VERSION"
    assert (await restore(stub, "a"))[1] == [(1, SNAP, b"a"), (2, DELTA, b"a2"), (3, DELTA, b"a3")]
    assert (await restore(stub, "b"))[1] == [(1, SNAP, b"b")]
    assert (await restore(stub, "c"))[1] == [(1, SNAP, b"c"), (2, DELTA, b"c2")]


async def test_many_sessions_on_one_stream_all_acked_in_order(vault) -> None:
    """Many sessions with a record in flight each: batches form, and every ack is right."""
    stub = vault.sync()
    sessions = [f"s{i}" for i in range(40)]
    epochs = {sid: (await acquire(stub, sid, "n1")).lease.epoch for sid in sessions}
    queue: asyncio.Queue[sync_pb.SyncRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id="n1"))
        while (req := await queue.get()) is not None:
            yield req

    def record(sid: str, base: int) -> sync_pb.SyncRequest:
        data = f"{sid}@{base}".encode()
        chunk = pb.RecordChunk(session_id=sid, base_version=base, lease_epoch=epochs[sid], kind=DELTA, data=data)
        chunk.last = True
        return sync_pb.SyncRequest(chunk=chunk)

    call = stub.Sync(requests(), metadata=auth(NODE_A))
    rounds = 5
    for sid in sessions:
        queue.put_nowait(record(sid, 0))
    acked: dict[str, list[int]] = {sid: [] for sid in sessions}
    while sum(map(len, acked.values())) < rounds * len(sessions):
        resp = await asyncio.wait_for(call.read(), 30)
        assert resp.WhichOneof("message") == "ack", resp
        acked[resp.ack.session_id].append(resp.ack.version)
        if resp.ack.version < rounds:
            queue.put_nowait(record(resp.ack.session_id, resp.ack.version))
    queue.put_nowait(None)
    assert all(v == list(range(1, rounds + 1)) for v in acked.values())
    assert vault.running.sync.committer.largest_batch > 1, "40 sessions in flight never shared a transaction"
    for sid in ("s0", "s39"):
        got = (await restore(stub, sid))[1]
        assert [data for _, _, data in got] == [f"{sid}@{b}".encode() for b in range(rounds)]


async def test_conflict_inside_a_batch_is_retried_whole(vault, monkeypatch) -> None:
    """TiDB's write conflict (9007; SQLite: "database is locked") after the compare-and-sets ran:
    the transaction is rolled back and re-run, and each record lands exactly once."""
    stub, core = vault.sync(), vault.running.vault
    monkeypatch.setattr(engine_mod, "BACKOFF_BASE_S", 0.0001)
    epochs = {}
    for sid in ("a", "b"):
        epochs[sid] = (await acquire(stub, sid, "n1")).lease.epoch
        assert (await put(stub, "n1", sid, epochs[sid], 0, SNAP, sid.encode())).ack.version == 1
    dbapi = core.engine.dialect.loaded_dbapi
    sqlite = core.engine.dialect.name == "sqlite"
    conflict = (
        dbapi.OperationalError("database is locked") if sqlite else dbapi.OperationalError(9007, "Write conflict")
    )
    real, raised = records._chunk_params, []

    def conflicting(f):  # type: ignore[no-untyped-def]
        if len(raised) < 2:
            raised.append(f.rec.session_id)
            raise conflict
        return real(f)

    monkeypatch.setattr(records, "_chunk_params", conflicting)
    batch = [(NODE, RecordHeader(sid, "n1", epochs[sid], 1, DELTA), sid.encode() + b"2") for sid in ("a", "b")]
    assert await asyncio.to_thread(core.commit_many, batch) == [2, 2]
    assert len(raised) == 2
    for sid in ("a", "b"):
        assert (await restore(stub, sid))[1] == [(1, SNAP, sid.encode()), (2, DELTA, sid.encode() + b"2")]
