"""The leader's tombstone watermark with a Clock: what it waits for, and what it frees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.model import Op, Version
from distpotify.replication.purge import Purger
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import run_now
from tests.unit.test_push import FakeClient, heartbeat, setup, write

TTL = 60.0
KEY_TTL = 30.0


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    return MetadataDB(tmp_path / "m.sqlite3", node_id=3)


class Refusing(FakeClient):
    """Refuses pushes to the replicas named in ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing: set[str] = set()

    def push_ops(self, base: str, source: str, ops: Sequence[Op],
                 texts: Sequence[str] | None = None) -> Deferred[Version]:
        if base in self.refusing:
            return fail(ConnectionRefusedError("refused"))
        return super().push_ops(base, source, ops, texts)


def purger_for(
    db: MetadataDB,
) -> tuple[Purger, Refusing, Clock, Callable[..., None]]:
    pusher, _, membership, clock = setup(db)
    client = pusher.client = Refusing()
    db._now = clock.seconds  # the oplog's times on the test's clock
    db.begin_leading(2)
    purger = Purger(store=MetadataStore(db, run_now), pusher=pusher,
                             membership=membership, leading=lambda: True, clock=clock, ttl=TTL,
                    key_ttl=KEY_TTL)

    def followers_at(*heads: Version) -> None:
        for node, head in enumerate(heads, start=1):
            membership.heartbeat_received(heartbeat(node, head))
        pusher.wake()

    return purger, client, clock, followers_at


def write_and_delete(db: MetadataDB, n: int) -> list[Op]:
    """``n`` playlists written, then deleted: ``n`` tombstones."""
    made = write(db, n)
    return made + db.write([Change("playlists", op.key, {"deleted": 1}) for op in made])


def advance(purger: Purger) -> None:
    done = Deferred.fromCoroutine(purger.advance())
    assert done.called


def test_tombstones_older_than_the_ttl_and_acknowledged_by_all_are_purged(
    db: MetadataDB,
) -> None:
    purger, client, clock, followers_at = purger_for(db)
    followers_at(Version(0, 0, 0), Version(0, 0, 0))
    ops = write_and_delete(db, 3)
    followers_at(Version(0, 0, 0), Version(0, 0, 0))  # pushed: both cursors at ops[-1]

    advance(purger)
    assert purger.watermarks == 0 and db.tombstones() == 3  # nothing older than the ttl yet

    clock.advance(TTL + 1)
    followers_at(ops[-1].version, ops[-1].version)
    advance(purger)

    assert purger.watermarks == 1 and db.tombstones() == 0
    assert db.purge_watermark() == ops[-1].version
    assert len(db.ops_after(Version(0, 0, 0))) == len(ops) + 1  # the oplog keeps every op
    pushed = [op for _, batch in client.batches for op in batch]
    assert pushed[-1].entity == "purges"  # the watermark replicates like any write


def test_a_lagging_follower_holds_the_watermark_back(db: MetadataDB) -> None:
    purger, client, clock, followers_at = purger_for(db)
    followers_at(Version(0, 0, 0), Version(0, 0, 0))
    early = write_and_delete(db, 2)
    followers_at(Version(0, 0, 0), Version(0, 0, 0))
    client.refusing.add("http://n2")  # follower 2 stops taking pushes
    late = write_and_delete(db, 2)
    followers_at(early[-1].version, early[-1].version)
    clock.advance(TTL + 1)

    followers_at(late[-1].version, early[-1].version)
    advance(purger)

    assert db.purge_watermark() == early[-1].version
    assert db.tombstones() == 2  # the late deletes follower 2 has not acknowledged stay


def keyed_writes(db: MetadataDB, n: int) -> list[Op]:
    """``n`` stored outcomes of keyed writes."""
    keys = [IdempotencyKey(f"k{i}", f"{i:064x}") for i in range(n)]
    return db.write([Change("idempotency", key.id,
                            Outcome(204, version=Version(2, 3, 1)).fields(key)) for key in keys])


def test_keys_older_than_their_ttl_expire_without_waiting_for_followers(db: MetadataDB) -> None:
    purger, client, clock, followers_at = purger_for(db)
    client.refusing.update({"http://n1", "http://n2"})  # no follower acknowledges anything
    followers_at(Version(0, 0, 0), Version(0, 0, 0))
    old = keyed_writes(db, 2)
    clock.advance(KEY_TTL + 1)
    keyed_writes(db, 1)

    advance(purger)

    assert purger.key_watermarks == 1 and db.idempotency_keys() == 1
    assert db.key_watermark() == old[-1].version
    assert purger.watermarks == 0  # no tombstone watermark moved with it
    advance(purger)
    assert purger.key_watermarks == 1  # nothing new expired: no second op


def test_a_key_watermark_never_goes_back_so_an_expired_key_stays_gone(tmp_path: Path) -> None:
    """An old leader moved the key watermark past a key and died before replicating that; the
    next leader, not knowing it, wrote a lower mark under a newer version. Both marks meet on
    every replica: the higher stands, the key stays purged where it was, goes where it was
    not, and anti-entropy does not bring it back."""
    key = IdempotencyKey("k", "a" * 64)
    row = Op(Version(5, 1, 10), "idempotency", key.id,
             {"request": key.request, "status": 201, "body": None, "written": "x"})
    higher = Op(Version(5, 1, 20), "purges", "idempotency",
                {"through": Version(5, 1, 15).encode()})
    lower = Op(Version(6, 2, 3), "purges", "idempotency", {"through": Version(5, 1, 8).encode()})
    saw_higher = MetadataDB(tmp_path / "x.sqlite3", node_id=3)
    saw_lower = MetadataDB(tmp_path / "y.sqlite3", node_id=4)
    saw_higher.apply_ops([row, higher])
    saw_lower.apply_ops([row, lower])
    assert (saw_higher.idempotency_keys(), saw_lower.idempotency_keys()) == (0, 1)

    saw_higher.apply_ops([lower])
    saw_lower.apply_ops([higher])
    saw_higher.apply_rows(saw_lower.rows([("idempotency", key.id)]))  # anti-entropy's pull

    for db in (saw_higher, saw_lower):
        assert db.key_watermark() == Version(5, 1, 15)
        assert db.idempotency_keys() == 0
    assert saw_higher.digest() == saw_lower.digest()
