"""The leader's tombstone watermark with a Clock: what it waits for, and what it frees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from distpotify.model import Op, Version
from distpotify.replication.purge import TombstonePurger
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import run_now
from tests.unit.test_push import FakeClient, heartbeat, setup, write

TTL = 60.0


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    return MetadataDB(tmp_path / "m.sqlite3", node_id=3)


class Refusing(FakeClient):
    """Refuses pushes to the replicas named in ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing: set[str] = set()

    def push_ops(self, base: str, source: str, ops: Sequence[Op]) -> Deferred[Version]:
        if base in self.refusing:
            return fail(ConnectionRefusedError("refused"))
        return super().push_ops(base, source, ops)


def purger_for(
    db: MetadataDB,
) -> tuple[TombstonePurger, Refusing, Clock, Callable[..., None]]:
    pusher, _, membership, clock = setup(db)
    client = pusher.client = Refusing()
    db._now = clock.seconds  # the oplog's times on the test's clock
    db.begin_leading(2)
    purger = TombstonePurger(store=MetadataStore(db, run_now), pusher=pusher,
                             membership=membership, leading=lambda: True, clock=clock, ttl=TTL)

    def followers_at(*heads: Version) -> None:
        for node, head in enumerate(heads, start=1):
            membership.heartbeat_received(heartbeat(node, head))
        pusher.wake()

    return purger, client, clock, followers_at


def write_and_delete(db: MetadataDB, n: int) -> list[Op]:
    """``n`` playlists written, then deleted: ``n`` tombstones."""
    made = write(db, n)
    return made + db.write([Change("playlists", op.key, {"deleted": 1}) for op in made])


def advance(purger: TombstonePurger) -> None:
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
