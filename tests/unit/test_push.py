"""The leader's push queue with a Clock: order, batches, durable cursors, backoff, hand-off."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Membership
from distpotify.model import Op, Version
from distpotify.replication.client import MAX_BATCH_BYTES, batch_body, op_text
from distpotify.replication.push import BATCH, CURSOR_EVERY, Pusher, cursor_key, fit_batch
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import run_now
from tests.helpers.sqlite import full_database

ZERO = Version(0, 0, 0)


class FakeClient:
    """Records pushes; answers with the last version sent, or fails while ``down``."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Op]]] = []
        self.down = False
        self.answer: Version | None = None  # the head the follower answers, if not the batch's

    def push_ops(self, base: str, source: str, ops: Sequence[Op],
                 texts: Sequence[str] | None = None) -> Deferred[Version]:
        if self.down:
            return fail(ConnectionRefusedError("refused"))
        # The texts the leader encoded once for every link are the ops as sent.
        assert texts is None or list(texts) == [op_text(op) for op in ops]
        self.batches.append((base, list(ops)))
        return succeed(self.answer or ops[-1].version)


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "m.sqlite3", node_id=3)
    database.begin_leading(2)
    return database


def heartbeat(node: int, head: Version = ZERO) -> Heartbeat:
    return Heartbeat(cluster="c", node=node, epoch=2, role="follower", state="ACTIVE",
                     http=f"http://n{node}", amp=f"n{node}:9000", head=head)


def setup(db: MetadataDB, leading: bool = True) -> tuple[Pusher, FakeClient, Membership, Clock]:
    clock = Clock()
    membership = Membership(node_id=3, clock=clock, failure_timeout=0.75)
    client = FakeClient()
    pusher = Pusher(store=MetadataStore(db, run_now), client=client,  # type: ignore[arg-type]
                    membership=membership, clock=clock, source="http://n3",
                    leading=lambda: leading)
    return pusher, client, membership, clock


def write(db: MetadataDB, n: int) -> list[Op]:
    return db.write([Change("playlists", f"{i:08x}-0000-4000-8000-000000000000",
                            {"name": str(i)}) for i in range(n)])


def test_ops_go_to_every_active_follower_in_version_order_and_batches(db: MetadataDB) -> None:
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    membership.heartbeat_received(heartbeat(2))
    ops = write(db, BATCH + 20)

    pusher.wake()

    for base in ("http://n1", "http://n2"):
        sent = [op for b, batch in client.batches if b == base for op in batch]
        assert sent == ops
        assert [len(batch) for b, batch in client.batches if b == base] == [BATCH, 20]
    # The cursor is made durable at once, then at most once every CURSOR_EVERY seconds
    # (one fsynced commit per follower per batch cost two of a write's three commits).
    assert db.get_meta(cursor_key(1)) == ops[BATCH - 1].version.encode()
    clock.advance(CURSOR_EVERY)
    assert db.get_meta(cursor_key(1)) == ops[-1].version.encode()
    assert db.get_meta(cursor_key(2)) == ops[-1].version.encode()


def test_a_joining_replica_with_data_gets_pushes(db: MetadataDB) -> None:
    pusher, client, membership, _ = setup(db)
    first = write(db, 2)
    more = write(db, 3)
    membership.heartbeat_received(
        Heartbeat(cluster="c", node=1, epoch=2, role="follower", state="JOINING",
                  http="http://n1", amp="n1:9000", head=first[-1].version))

    pusher.wake()

    assert [op for _, batch in client.batches for op in batch] == more


def test_empty_joining_replicas_get_nothing(db: MetadataDB) -> None:
    pusher, client, membership, _ = setup(db)
    membership.heartbeat_received(
        Heartbeat(cluster="c", node=1, epoch=2, role="follower", state="JOINING",
                  http="http://n1", amp="n1:9000", head=ZERO))
    write(db, 3)

    pusher.wake()

    assert client.batches == []


def test_failed_push_is_retried_with_backoff_on_the_clock(db: MetadataDB) -> None:
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    client.down = True
    ops = write(db, 5)

    pusher.wake()
    clock.advance(0.05)
    clock.advance(0.1)
    client.down = False
    assert client.batches == []
    clock.advance(0.2)

    assert [op for _, batch in client.batches for op in batch] == ops
    assert pusher.links[1].last_error is None


def test_a_follower_back_from_down_gets_every_hint_past_its_cursor(db: MetadataDB) -> None:
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    first = write(db, 2)
    pusher.wake()
    clock.advance(1.0)  # silent: DOWN
    hints = write(db, 4)
    pusher.wake()
    assert [op for _, b in client.batches for op in b] == first

    membership.heartbeat_received(heartbeat(1, head=first[-1].version))

    assert [op for _, b in client.batches for op in b] == first + hints


def test_a_new_leader_starts_from_the_lower_of_cursor_and_announced_head(
    db: MetadataDB,
) -> None:
    ops = write(db, 6)
    db.set_meta(cursor_key(1), ops[4].version.encode())
    _, client, membership, _ = setup(db)

    membership.heartbeat_received(heartbeat(1, head=ops[1].version))

    assert [op for _, b in client.batches for op in b] == ops[2:]


def test_no_push_while_not_leading(db: MetadataDB) -> None:
    pusher, client, membership, _ = setup(db, leading=False)
    membership.heartbeat_received(heartbeat(1))
    write(db, 2)

    pusher.wake()

    assert client.batches == []


def test_a_follower_answering_a_higher_head_still_gets_every_batch(db: MetadataDB) -> None:
    """Rows from anti-entropy or another leader can put a follower's head past ops of ours
    it has never seen: the cursor follows what was sent, not the head it answers."""
    pusher, client, membership, _ = setup(db)
    client.answer = Version(9, 9, 9)
    membership.heartbeat_received(heartbeat(1))
    ops = write(db, 2 * BATCH + 5)

    pusher.wake()

    assert [op for _, batch in client.batches for op in batch] == ops


class ResyncClient(FakeClient):
    """Also records the followers told to take a new snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.resyncs: list[tuple[str, Version]] = []

    def resync(self, base: str, source: str, cursor: Version) -> Deferred[str]:
        self.resyncs.append((base, cursor))
        return succeed("SNAPSHOT")


def joining(node: int, head: Version) -> Heartbeat:
    return Heartbeat(cluster="c", node=node, epoch=2, role="follower", state="JOINING",
                     http=f"http://n{node}", amp=f"n{node}:9000", head=head)


def test_a_follower_below_the_oplog_floor_is_told_to_take_a_new_snapshot(
    db: MetadataDB,
) -> None:
    pusher, _, membership, clock = setup(db)
    client = pusher.client = ResyncClient()
    ops = write(db, 10)
    db.compact_oplog(ops[5].version)  # the ops up to ops[5] are gone
    db.set_meta(cursor_key(1), ops[2].version.encode())

    membership.heartbeat_received(heartbeat(1, ops[2].version))
    pusher.wake()

    assert client.resyncs == [("http://n1", ops[2].version)] and client.batches == []
    assert db.get_meta(cursor_key(1)) is None  # its next cursor is its snapshot's head
    assert pusher.links[1].resyncs == 1

    # While it takes the snapshot (JOINING, the same head) it is only looked at.
    membership.heartbeat_received(joining(1, ops[2].version))
    clock.advance(5)
    assert len(client.resyncs) == 1

    # Installed: pushes resume from the snapshot's head.
    membership.heartbeat_received(joining(1, ops[7].version))
    clock.advance(1)
    assert [op for _, batch in client.batches for op in batch] == ops[8:]


def test_a_follower_at_the_floor_is_caught_up_by_cursor(db: MetadataDB) -> None:
    pusher, _, membership, _ = setup(db)
    client = pusher.client = ResyncClient()
    ops = write(db, 10)
    db.compact_oplog(ops[5].version)

    membership.heartbeat_received(heartbeat(1, ops[5].version))
    pusher.wake()

    assert client.resyncs == []
    assert [op for _, batch in client.batches for op in batch] == ops[6:]


def test_batches_are_cut_to_what_a_follower_takes(db: MetadataDB) -> None:
    pusher, client, membership, _ = setup(db)
    membership.heartbeat_received(heartbeat(1))
    ops = db.write([Change("playlists", f"{i:08x}-0000-4000-8000-000000000000",
                           {"name": str(i) * 20_000}) for i in range(120)])

    pusher.wake()

    sizes = [len(batch_body("http://n3", batch)) for _, batch in client.batches]
    assert [op for _, batch in client.batches for op in batch] == ops
    assert len(sizes) > 1 and max(sizes) <= MAX_BATCH_BYTES


def test_fit_batch_keeps_the_longest_run_that_fits_exactly() -> None:
    ops = [Op(Version(1, 1, n), "playlists", f"{n:08x}-0000-4000-8000-000000000000",
              {"name": "x" * 100}) for n in range(1, 11)]
    limit = len(batch_body("s", ops[:4]))

    assert fit_batch(ops, "s", limit) == ops[:4]
    assert fit_batch(ops, "s", limit - 1) == ops[:3]
    assert fit_batch(ops, "s", 10) == ops[:1]  # one op too large is sent alone
    assert fit_batch(ops, "s") == ops


def test_links_at_one_cursor_share_one_read_of_the_ops(db: MetadataDB) -> None:
    """Every follower keeping up waits at the same cursor: one read (and one encoding) of
    the ops past it serves all their links, while it is in flight."""
    reads: list[tuple[Any, ...]] = []
    held: list[Deferred[Any]] = []

    def runner(method: Callable[..., Any], *args: Any) -> Deferred[Any]:
        reads.append((method.__name__, *args[1:]))
        held.append(Deferred())
        held[-1].addCallback(lambda _: method(*args))
        return held[-1]

    pusher, client, membership, _ = setup(db)
    pusher.store = MetadataStore(db, runner)
    membership.heartbeat_received(heartbeat(1))
    membership.heartbeat_received(heartbeat(2))
    ops = write(db, 3)
    while any(name == "get_meta" for name, *_ in reads):  # each link's durable cursor: none
        at = next(i for i, (name, *_) in enumerate(reads) if name == "get_meta")
        del reads[at]
        held.pop(at).callback(None)

    assert reads == [("encoded_batch_after", ZERO)]
    held.pop().callback(None)

    assert client.batches == [("http://n1", ops), ("http://n2", ops)]


def test_a_batch_body_from_encoded_ops_is_the_json_of_the_batch() -> None:
    ops = [Op(Version(1, 1, n), "playlists", f"{n:08x}-0000-4000-8000-000000000000",
              {"name": "é\"x"}) for n in range(1, 4)]
    expected = json.dumps({"source": "http://é", "ops": [op.to_json() for op in ops]},
                          separators=(",", ":")).encode()

    assert batch_body("http://é", ops, [op_text(op) for op in ops]) == expected
    assert batch_body("http://é", ops) == expected


@pytest.fixture
def logged() -> Iterator[Sequence[LogEvent]]:
    with capturedLogs() as events:
        yield events


def one_full_disk_warning(events: Sequence[LogEvent], what: str) -> bool:
    """A full disk is an operator's condition, not a bug: one line, without a traceback."""
    warned = [text for text in (formatEvent(e) for e in events
                                if e.get("log_level") == LogLevel.warn)
              if "the disk is full" in text]
    return (not [e for e in events if "log_failure" in e] and len(warned) == 1
            and f"was not {what}: the disk is full" in warned[0])


def test_a_cursor_not_stored_for_a_full_disk_is_one_warning_and_is_stored_later(
    db: MetadataDB, monkeypatch: pytest.MonkeyPatch, logged: Sequence[LogEvent]
) -> None:
    """The pushes go on, and a later batch stores the cursor once there is room."""
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    store_meta = MetadataDB.set_meta

    def full(self: MetadataDB, name: str, value: str) -> None:
        raise full_database()

    monkeypatch.setattr(MetadataDB, "set_meta", full)
    first = write(db, 3)
    pusher.wake()
    monkeypatch.setattr(MetadataDB, "set_meta", store_meta)
    clock.advance(CURSOR_EVERY)
    membership.heartbeat_received(heartbeat(1, first[-1].version))  # still up
    more = write(db, 2)
    pusher.wake()

    assert [op for _, batch in client.batches for op in batch] == first + more
    assert one_full_disk_warning(logged, "stored")
    assert db.get_meta(cursor_key(1)) == more[-1].version.encode()


def test_a_cursor_not_forgotten_for_a_full_disk_is_one_warning(
    db: MetadataDB, monkeypatch: pytest.MonkeyPatch, logged: Sequence[LogEvent]
) -> None:
    """A joiner's old cursor left behind is older than its snapshot: harmless."""
    pusher, _, _, _ = setup(db)
    db.set_meta(cursor_key(1), write(db, 1)[0].version.encode())

    def full(self: MetadataDB, name: str) -> None:
        raise full_database()

    monkeypatch.setattr(MetadataDB, "delete_meta", full)
    forgotten = pusher.forget_follower(1)

    assert forgotten.called and forgotten.result is None
    assert one_full_disk_warning(logged, "forgotten")


def test_a_resync_whose_cursor_cannot_be_forgotten_for_a_full_disk_goes_on(
    db: MetadataDB, monkeypatch: pytest.MonkeyPatch, logged: Sequence[LogEvent]
) -> None:
    """The follower below the oplog floor is told to take a snapshot all the same, and the
    link looks in later: no crash of the link, one warning."""
    pusher, _, membership, _ = setup(db)
    client = pusher.client = ResyncClient()
    ops = write(db, 10)
    db.compact_oplog(ops[5].version)
    db.set_meta(cursor_key(1), ops[2].version.encode())

    def full(self: MetadataDB, name: str) -> None:
        raise full_database()

    monkeypatch.setattr(MetadataDB, "delete_meta", full)
    membership.heartbeat_received(heartbeat(1, ops[2].version))
    pusher.wake()

    assert client.resyncs == [("http://n1", ops[2].version)]
    link = pusher.links[1]
    assert link.resyncs == 1 and link.cursor is None and link._retry is not None
    assert one_full_disk_warning(logged, "forgotten")


def test_a_follower_back_below_its_cursor_is_pushed_from_its_head(db: MetadataDB) -> None:
    """Found by the random lab run: a follower whose data directory was lost came back (it
    founded a cluster alone, then met ours) announcing a head below the cursor the leader
    kept for it. Pushing on from that cursor left out every op between, for anti-entropy
    to find minutes later."""
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    first = write(db, 3)
    pusher.wake()
    assert pusher.links[1].cursor == first[-1].version
    clock.advance(1.0)  # silent: DOWN
    more = write(db, 2)
    client.batches.clear()

    with capturedLogs() as events:
        membership.heartbeat_received(heartbeat(1, head=first[0].version))

    assert [op for _, b in client.batches for op in b] == first[1:] + more
    assert pusher.links[1].cursor == more[-1].version
    assert any("is back at head" in formatEvent(e) and e["log_level"] == LogLevel.warn
               for e in events)


def test_a_cursor_rewound_while_a_batch_is_on_its_way_stays_rewound(db: MetadataDB) -> None:
    """The acknowledgement of a batch sent before the follower came back lower must not
    move the cursor past the ops it lacks."""
    pusher, client, membership, _ = setup(db)
    membership.heartbeat_received(heartbeat(1))
    first = write(db, 3)
    pusher.wake()
    answers: list[Deferred[Version]] = []
    sent: list[list[Op]] = []

    def push_ops(base: str, source: str, ops: Sequence[Op], texts: Any = None
                 ) -> Deferred[Version]:
        sent.append(list(ops))
        answers.append(Deferred())
        return answers[-1]

    client.push_ops = push_ops  # type: ignore[method-assign]
    more = write(db, 2)
    pusher.wake()  # the batch of ``more`` is on its way
    assert sent == [more]

    pusher.links[1].rewind(first[0].version)
    answers[0].callback(more[-1].version)

    # Acknowledged, the batch does not move the cursor past the ops the follower lacks:
    # the next batch starts from the head it came back with.
    assert sent[1:] == [first[1:] + more]
    assert pusher.links[1].cursor == first[0].version


def test_a_follower_heard_again_at_or_past_its_cursor_keeps_it(db: MetadataDB) -> None:
    """A head past the cursor (rows another leader wrote) is no reason to move it: the
    follower may still lack ops of ours below that head."""
    pusher, client, membership, clock = setup(db)
    membership.heartbeat_received(heartbeat(1))
    first = write(db, 3)
    pusher.wake()
    clock.advance(1.0)  # DOWN
    client.batches.clear()
    last = first[-1].version

    membership.heartbeat_received(heartbeat(1, head=Version(last.epoch + 1, 2, 1)))

    assert client.batches == []
    assert pusher.links[1].cursor == first[-1].version
