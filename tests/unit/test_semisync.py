"""Semi-synchronous acknowledgement with a Clock: acks resolve waiters, the timeout degrades."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Membership
from distpotify.model import ZERO, Version
from distpotify.replication.push import Pusher
from distpotify.replication.semisync import SemiSync
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import run_now
from tests.unit.test_push import FakeClient

V1, V2, V3 = Version(2, 3, 1), Version(2, 3, 2), Version(2, 3, 3)


class Head:
    def __init__(self) -> None:
        self.version = ZERO

    def __call__(self) -> Version:
        return self.version


def heartbeat(node: int, state: str = "ACTIVE", head: Version = ZERO) -> Heartbeat:
    return Heartbeat(cluster="c", node=node, epoch=2, role="follower", state=state,
                     http=f"http://n{node}", amp=f"n{node}:9000", head=head)


def setup(replicas: int = 1, followers: int = 2) -> tuple[SemiSync, Head, Membership, Clock]:
    clock = Clock()
    membership = Membership(node_id=3, clock=clock, failure_timeout=0.75)
    for node in range(1, followers + 1):
        membership.heartbeat_received(heartbeat(node))
    head = Head()
    semisync = SemiSync(replicas=replicas, timeout=0.25, clock=clock, head=head,
                        membership=membership)
    return semisync, head, membership, clock


def timers(clock: Clock) -> list[object]:
    """The semi-sync timeouts pending (the peer table's failure timers aside)."""
    return [call for call in clock.getDelayedCalls()
            if getattr(call.func, "__name__", "") == "_timed_out"]


def fired(d: Deferred[None]) -> bool:
    results: list[object] = []
    d.addBoth(results.append)
    return bool(results) and results[0] is None


def test_a_write_is_acknowledged_when_a_follower_acknowledges_its_version() -> None:
    semisync, head, _, clock = setup()
    head.version = V2
    d = semisync.acknowledged()

    semisync.follower_acked(1, V1)
    assert not fired(d)
    semisync.follower_acked(1, V2)

    assert fired(d)
    assert semisync.status() == {"sync_replicas": 1, "timeout_s": 0.25, "waiting": 0,
                                 "replicated": 1, "timeout": 0, "alone": 0}
    assert timers(clock) == []


def test_a_batch_past_the_version_covers_it() -> None:
    semisync, head, _, _ = setup()
    head.version = V1
    first = semisync.acknowledged()
    head.version = V2
    second = semisync.acknowledged()

    semisync.follower_acked(2, V3)

    assert fired(first) and fired(second)
    assert semisync.counters.replicated == 2


def test_two_replicas_need_two_different_followers() -> None:
    semisync, head, _, _ = setup(replicas=2)
    head.version = V1
    d = semisync.acknowledged()

    semisync.follower_acked(1, V1)
    semisync.follower_acked(1, V2)
    assert not fired(d)
    semisync.follower_acked(2, V1)

    assert fired(d)


def test_no_acknowledgement_within_the_timeout_answers_anyway_as_degraded() -> None:
    semisync, head, _, clock = setup()
    head.version = V1
    d = semisync.acknowledged()

    clock.advance(0.249)
    assert not fired(d)
    clock.advance(0.001)

    assert fired(d)
    assert (semisync.counters.replicated, semisync.counters.timeout) == (0, 1)
    semisync.follower_acked(1, V1)  # too late: changes nothing
    assert semisync.counters.replicated == 0


def test_a_lone_survivor_answers_at_once_as_degraded() -> None:
    semisync, head, membership, clock = setup(followers=1)
    clock.advance(1.0)  # the only follower falls silent
    assert membership.live_peers() == []
    head.version = V1

    with capturedLogs() as events:
        for _ in range(100):
            assert fired(semisync.acknowledged())
    assert (semisync.counters.alone, semisync.status()["waiting"]) == (100, 0)
    # The operator hears of it, the first time and every hundredth, as of timeouts.
    warned = [e["count"] for e in events if "too few followers" in e.get("log_format", "")]
    assert warned == [1, 100]


def test_an_empty_joiner_is_no_follower_to_wait_for() -> None:
    semisync, head, membership, _ = setup(followers=0)
    membership.heartbeat_received(heartbeat(1, state="JOINING"))
    head.version = V1

    assert fired(semisync.acknowledged())
    assert semisync.counters.alone == 1


def test_zero_replicas_is_asynchronous() -> None:
    semisync, head, _, clock = setup(replicas=0)
    head.version = V1

    assert fired(semisync.acknowledged())
    assert (semisync.counters.replicated, semisync.counters.timeout,
            semisync.counters.alone) == (0, 0, 0)
    assert timers(clock) == []


def test_what_a_follower_held_already_covers_a_write_that_changed_nothing() -> None:
    semisync, head, _, _ = setup()
    semisync.follower_acked(1, V2)
    head.version = V2  # a duplicate upload: no new op, the head is already held

    assert fired(semisync.acknowledged())


def test_a_follower_that_went_down_no_longer_counts_for_what_it_held() -> None:
    semisync, head, membership, clock = setup()
    semisync.follower_acked(1, V2)
    clock.advance(1.0)  # both followers silent: down
    membership.heartbeat_received(heartbeat(1))  # back, perhaps with a wiped disk
    head.version = V2

    d = semisync.acknowledged()

    assert not fired(d)
    semisync.follower_acked(1, V2)
    assert fired(d)


def test_a_cancelled_wait_is_forgotten() -> None:
    semisync, head, _, clock = setup()
    head.version = V1
    d = semisync.acknowledged()
    d.addErrback(lambda _: None)

    d.cancel()

    assert semisync.status()["waiting"] == 0
    assert timers(clock) == []


def test_the_pusher_reports_each_applied_batch(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "m.sqlite3", node_id=3)
    db.begin_leading(2)
    clock = Clock()
    membership = Membership(node_id=3, clock=clock, failure_timeout=0.75)
    membership.heartbeat_received(heartbeat(1))
    semisync = SemiSync(replicas=1, timeout=0.25, clock=clock, head=db.cached_head,
                        membership=membership)
    pusher = Pusher(store=MetadataStore(db, run_now), client=FakeClient(),  # type: ignore[arg-type]
                    membership=membership, clock=clock, source="http://n3",
                    leading=lambda: True, on_ack=semisync.follower_acked)
    db.write([Change("playlists", "00000001-0000-4000-8000-000000000000", {"name": "a"})])
    d = semisync.acknowledged()

    pusher.wake()

    assert fired(d)
    assert semisync.counters.replicated == 1
