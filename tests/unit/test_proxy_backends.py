"""The proxy's backend view with a Clock: who leads, who reads, health with a maximum age."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from proxy.backends import Backend, BackendView

pytestmark = pytest.mark.timeout(30)


class Replicas:
    """Scripted /status answers by URL; ``hang`` leaves a poll unanswered."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}
        self.down: set[str] = set()
        self.hang: set[str] = set()
        self.asked: list[str] = []
        self.hanging: list[Deferred[dict[str, Any]]] = []

    def add(self, node_id: int, role: str = "follower", **fields: Any) -> str:
        url = f"http://127.0.0.1:800{node_id}"
        self.status[url] = {"node_id": node_id, "role": role, "state": "ACTIVE", "epoch": 1,
                            "peers": [], **fields}
        return url

    def fetch(self, url: str) -> Deferred[dict[str, Any]]:
        self.asked.append(url)
        if url in self.hang:
            d: Deferred[dict[str, Any]] = Deferred()
            self.hanging.append(d)
            return d
        if url in self.down:
            return fail(ConnectionRefusedError())
        return succeed(dict(self.status[url]))


@pytest.fixture
def replicas() -> Replicas:
    r = Replicas()
    r.add(1)
    r.add(2)
    r.add(3, role="leader")
    return r


def make_view(replicas: Replicas, clock: Clock, urls: list[str] | None = None) -> BackendView:
    view = BackendView(urls or list(replicas.status), replicas.fetch, clock,
                       poll_interval=0.25, health_max_age=0.5, check_timeout=0.3)
    view.poll_all()
    return view


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def node(backend: Backend | None) -> int | None:
    return None if backend is None else backend.node_id


def test_the_leader_is_the_replica_that_says_so() -> None:
    replicas, clock = Replicas(), Clock()
    replicas.add(1, role="leader")
    replicas.add(2)
    view = make_view(replicas, clock)

    assert node(view.leader()) == 1
    assert [b.node_id for b in view.readers()] == [2]


def test_of_two_claimed_leaders_the_highest_epoch_then_node_id_wins(replicas: Replicas) -> None:
    replicas.status["http://127.0.0.1:8001"].update(role="leader", epoch=2)

    view = make_view(replicas, Clock())

    assert node(view.leader()) == 1
    assert [b.node_id for b in view.readers()] == [2, 3]


def test_equal_epochs_are_decided_by_node_id(replicas: Replicas) -> None:
    replicas.status["http://127.0.0.1:8001"]["role"] = "leader"

    assert node(make_view(replicas, Clock()).leader()) == 3


def test_joining_and_unreachable_replicas_do_not_read(replicas: Replicas) -> None:
    replicas.status["http://127.0.0.1:8001"]["state"] = "JOINING"
    replicas.down.add("http://127.0.0.1:8002")

    view = make_view(replicas, Clock())

    assert view.readers() == []
    assert node(result(view.choose_reader())) == 3


def test_readers_take_turns(replicas: Replicas) -> None:
    view = make_view(replicas, Clock())

    chosen = [node(result(view.choose_reader())) for _ in range(4)]

    assert chosen == [1, 2, 1, 2]


def test_choosing_skips_excluded_replicas_and_falls_back_to_the_leader(
    replicas: Replicas,
) -> None:
    view = make_view(replicas, Clock())
    urls = sorted(replicas.status)

    assert node(result(view.choose_reader({urls[0]}))) == 2
    assert node(result(view.choose_reader({urls[0], urls[1]}))) == 3
    assert result(view.choose_reader(set(urls))) is None


def test_a_fresh_status_is_trusted_without_asking_again(replicas: Replicas) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    clock.advance(0.4)
    asked = len(replicas.asked)

    result(view.choose_reader())

    assert len(replicas.asked) == asked


def test_a_stale_status_is_checked_before_the_replica_is_chosen(replicas: Replicas) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    clock.advance(0.6)

    chosen = result(view.choose_reader())

    assert node(chosen) == 1
    assert replicas.asked[-1] == "http://127.0.0.1:8001"


def test_a_stale_replica_that_does_not_answer_its_check_in_time_is_passed_over(
    replicas: Replicas,
) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    clock.advance(0.6)
    replicas.hang.add("http://127.0.0.1:8001")

    d = view.choose_reader()
    assert not d.called
    clock.advance(0.3)

    assert node(result(d)) == 2


def test_a_replica_marked_down_by_a_request_is_avoided_until_it_answers_again(
    replicas: Replicas,
) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    first = view.backends["http://127.0.0.1:8001"]

    view.mark_down(first, "connection refused")

    assert [node(result(view.choose_reader())) for _ in range(3)] == [2, 2, 2]
    view.poll_all()
    assert first.healthy


def test_an_answer_asked_before_a_failure_does_not_revive_the_replica(
    replicas: Replicas,
) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    url = "http://127.0.0.1:8001"
    replicas.hang.add(url)
    view.poll(view.backends[url])
    view.mark_down(view.backends[url], "reset")

    replicas.hanging[0].callback(dict(replicas.status[url]))

    assert not view.backends[url].healthy


def test_polls_in_flight_are_shared(replicas: Replicas) -> None:
    view = make_view(replicas, Clock())
    replicas.hang.add("http://127.0.0.1:8001")
    backend = view.backends["http://127.0.0.1:8001"]
    asked = len(replicas.asked)

    first, second = view.poll(backend), view.poll(backend)
    replicas.hanging[0].callback(dict(replicas.status["http://127.0.0.1:8001"]))

    assert len(replicas.asked) == asked + 1
    assert result(first) is True and result(second) is True


def test_polling_runs_every_interval_and_survives_failures(replicas: Replicas) -> None:
    clock = Clock()
    view = BackendView(list(replicas.status), replicas.fetch, clock, poll_interval=0.25)
    view.start()
    replicas.down.add("http://127.0.0.1:8002")
    clock.pump([0.25] * 4)

    assert replicas.asked.count("http://127.0.0.1:8001") == 5
    assert not view.backends["http://127.0.0.1:8002"].healthy
    view.stop()


def test_an_unanswered_poll_times_out_and_marks_the_replica_unhealthy(
    replicas: Replicas,
) -> None:
    clock = Clock()
    view = make_view(replicas, clock)
    url = "http://127.0.0.1:8003"
    replicas.hang.add(url)

    view.poll(view.backends[url])
    clock.advance(0.3)

    assert not view.backends[url].healthy
    assert view.leader() is None
    assert "Timeout" in (view.backends[url].last_error or "")


def agent_wrapped(*reasons: Exception) -> Callable[[Deferred[Any]], None]:
    """A canceller that fails as the Agent does when no answer had begun: the cancellation
    wrapped in ResponseNeverReceived."""
    return lambda d: d.errback(ResponseNeverReceived([Failure(r) for r in reasons]))


@pytest.mark.parametrize("wrapped", [True, False])
def test_a_poll_that_timed_out_says_so_in_words(replicas: Replicas, wrapped: bool) -> None:
    clock = Clock()
    url = "http://127.0.0.1:8003"
    asked: list[Deferred[Any]] = []

    def fetch(_: str) -> Deferred[Any]:
        asked.append(Deferred(agent_wrapped(CancelledError()) if wrapped else None))
        return asked[-1]

    view = BackendView([url], fetch, clock, check_timeout=0.3)
    with capturedLogs() as events:
        view.poll_all()
        clock.advance(0.3)

    assert view.backends[url].last_error == "TimeoutError: no answer to /status in 0.3 s"
    assert [formatEvent(e) for e in events] == [
        "http://127.0.0.1:8003 is unreachable: TimeoutError: no answer to /status in 0.3 s"]


def test_a_poll_the_http_client_failed_says_why_in_words(replicas: Replicas) -> None:
    clock = Clock()
    url = "http://127.0.0.1:8003"
    lost = ResponseNeverReceived([Failure(ConnectionLost("the other side closed it"))])
    view = BackendView([url], lambda _: fail(lost), clock, check_timeout=0.3)

    view.poll_all()

    assert view.backends[url].last_error == (
        "ResponseNeverReceived: the connection ended before an answer: Connection to the"
        " other side was lost in a non-clean fashion: the other side closed it.")


def test_a_malformed_status_is_a_failed_poll(replicas: Replicas) -> None:
    replicas.status["http://127.0.0.1:8001"] = {"hello": "world"}  # type: ignore[dict-item]

    view = make_view(replicas, Clock())

    assert not view.backends["http://127.0.0.1:8001"].healthy


def test_peers_listed_by_a_replica_join_the_view(replicas: Replicas) -> None:
    new = replicas.add(4)
    replicas.status["http://127.0.0.1:8003"]["peers"] = [
        {"node_id": 4, "http": new, "role": "follower", "state": "ACTIVE"},
        {"node_id": 1, "http": "http://localhost:8001", "role": "follower", "state": "ACTIVE"},
    ]

    view = make_view(replicas, Clock(), urls=sorted(replicas.status)[:3])

    assert new in view.backends and not view.backends[new].configured
    assert view.backends[new].healthy
    assert "http://localhost:8001" not in view.backends  # node 1 is known by another address
    assert [b.node_id for b in view.readers()] == [1, 2, 4]


def test_a_peer_listed_by_another_address_before_its_own_answer_is_one_replica(
        replicas: Replicas) -> None:
    # Node 3 answers first and lists node 1 by its advertised name, which reaches node 1
    # too; node 1's own answer comes later. Two addresses of node 1 would make two readers
    # of it (and of a leader, a reader while it leads).
    node_1 = "http://127.0.0.1:8001"
    replicas.status["http://localhost:8001"] = replicas.status[node_1]
    replicas.status["http://127.0.0.1:8003"]["peers"] = [
        {"node_id": 1, "http": "http://localhost:8001", "role": "follower", "state": "ACTIVE"},
    ]
    replicas.hang.add(node_1)

    view = make_view(replicas, Clock(), urls=sorted(replicas.status)[:3])
    replicas.hanging[0].callback(dict(replicas.status[node_1]))

    assert "http://localhost:8001" not in view.backends
    assert [b.url for b in view.readers()] == [node_1, "http://127.0.0.1:8002"]


def test_the_leader_a_follower_names_joins_the_view() -> None:
    replicas, clock = Replicas(), Clock()
    follower = replicas.add(1, leader_id=2, leader_http="http://127.0.0.1:8002")
    replicas.add(2, role="leader")

    view = make_view(replicas, clock, urls=[follower])

    assert node(view.leader()) == 2


def test_waiting_for_a_leader_ends_when_one_is_elected(replicas: Replicas) -> None:
    clock = Clock()
    replicas.status["http://127.0.0.1:8003"]["role"] = "candidate"
    view = make_view(replicas, clock)
    view.start()

    d = view.leader_within(clock.seconds() + 5)
    clock.advance(1.0)
    assert not d.called
    replicas.status["http://127.0.0.1:8002"].update(role="leader", epoch=2)
    clock.advance(0.25)

    assert node(result(d)) == 2
    view.stop()


def test_waiting_for_a_leader_gives_up_at_the_deadline(replicas: Replicas) -> None:
    clock = Clock()
    replicas.status["http://127.0.0.1:8003"]["role"] = "candidate"
    view = make_view(replicas, clock)
    view.start()

    d = view.leader_within(clock.seconds() + 2)
    clock.pump([0.25] * 7)
    assert not d.called
    clock.pump([0.25] * 2)

    assert result(d) is None
    view.stop()


def test_cancelling_a_wait_for_a_leader_leaves_nothing_behind(replicas: Replicas) -> None:
    clock = Clock()
    replicas.status["http://127.0.0.1:8003"]["role"] = "candidate"
    view = make_view(replicas, clock)

    d = view.leader_within(clock.seconds() + 5)
    d.addErrback(lambda _: None)
    d.cancel()

    assert clock.getDelayedCalls() == []


def test_a_new_leader_is_announced_to_whoever_waits_on_the_old_one(replicas: Replicas) -> None:
    view = make_view(replicas, Clock())
    old = view.backends["http://127.0.0.1:8003"]
    replaced = view.leader_replaced(old)
    view.poll_all()
    assert not replaced.called

    replicas.status["http://127.0.0.1:8002"].update(role="leader", epoch=2)
    view.poll_all()

    assert node(result(replaced)) == 2


def test_a_write_sent_where_a_421_pointed_goes_to_the_leader_once_that_replica_stops(
        replicas: Replicas) -> None:
    """The view says node 3 leads; the write went to node 2, which a 421 named, and node 2
    stops answering: the write goes to node 3 at the next poll, not after the write
    timeout."""
    view = make_view(replicas, Clock())
    to_node_2 = view.leader_replaced(view.backends["http://127.0.0.1:8002"])

    replicas.down.add("http://127.0.0.1:8002")
    view.poll_all()

    assert node(result(to_node_2)) == 3


def test_snapshot_reports_every_backend(replicas: Replicas) -> None:
    clock = Clock()
    replicas.down.add("http://127.0.0.1:8002")
    view = make_view(replicas, clock)
    clock.advance(0.1)

    snapshot = view.snapshot()

    assert snapshot["leader"] == {"node_id": 3, "http": "http://127.0.0.1:8003", "epoch": 1}
    assert snapshot["readers"] == ["http://127.0.0.1:8001"]
    assert [b["node_id"] for b in snapshot["backends"]] == [1, 3, None]  # by node id
    down = snapshot["backends"][2]
    assert (down["http"], down["healthy"]) == ("http://127.0.0.1:8002", False)
    assert "ConnectionRefused" in down["last_error"]
    assert snapshot["backends"][0]["status_age_ms"] == 100


def peers(*up_active: int, down: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """A /status peer list: the given node ids up and ACTIVE, ``down`` ones silent."""
    return ([{"node_id": n, "up": True, "state": "ACTIVE"} for n in up_active]
            + [{"node_id": n, "up": False, "state": "ACTIVE"} for n in down])


def test_of_two_claimed_leaders_the_one_that_sees_the_majority_wins() -> None:
    """Node 1, cut off from 2 and 3, elected itself with a higher epoch; the proxy, which
    still reaches all three, follows node 3, whose view holds three ACTIVE replicas."""
    replicas, clock = Replicas(), Clock()
    replicas.add(1, role="leader", epoch=5, peers=peers(down=(2, 3)))
    replicas.add(2, epoch=4, peers=peers(3, down=(1,)))
    replicas.add(3, role="leader", epoch=4, peers=peers(2, down=(1,)))

    view = make_view(replicas, clock)

    assert node(view.leader()) == 3
    assert {b["node_id"]: b["active_view"] for b in view.snapshot()["backends"]} == {
        1: 1, 2: 2, 3: 2}


def test_only_up_and_active_peers_count_in_a_leaders_view() -> None:
    replicas, clock = Replicas(), Clock()
    replicas.add(1, role="leader", epoch=5,
                 peers=[{"node_id": 2, "up": True, "state": "JOINING"},
                        {"node_id": 3, "up": "yes", "state": "ACTIVE"}, "garbage"])
    replicas.add(2, role="leader", epoch=4, peers=peers(down=(1,)))

    view = make_view(replicas, clock)

    # Both see only themselves: the higher epoch decides.
    assert node(view.leader()) == 1


def test_leaders_with_equal_views_are_decided_by_epoch_then_node_id() -> None:
    replicas, clock = Replicas(), Clock()
    replicas.add(1, role="leader", epoch=6, peers=peers(3))
    replicas.add(2, role="leader", epoch=6, peers=peers(3))
    replicas.add(3, peers="not a list")

    assert node(make_view(replicas, clock).leader()) == 2


def test_a_leader_whose_view_grows_takes_the_writes() -> None:
    """A partition heals: the replica that was cut off sees the others again."""
    replicas, clock = Replicas(), Clock()
    replicas.add(1, role="leader", epoch=5, peers=peers(down=(2, 3)))
    replicas.add(3, role="leader", epoch=4, peers=peers(2, down=(1,)))
    view = make_view(replicas, clock)
    assert node(view.leader()) == 3
    replaced = view.leader_replaced(view.leader())  # type: ignore[arg-type]

    replicas.status["http://127.0.0.1:8001"]["peers"] = peers(2, 3)
    view.poll_all()

    assert node(view.leader()) == 1 and node(result(replaced)) == 1
