"""The wait for convergence on a made-up clock (no namespaces needed): a join that moves on
pushes the deadline back, up to the join allowance; a stuck one, or none, does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from lab.convergence import JOIN_WINDOW, JoinProgress, Waited, wait
from lab.report import Report

TIMEOUT = 30.0
INTERVAL = 0.25
JOINER = 3


class FakeTime:
    """A clock that moves only when the wait sleeps; the wait never sleeps for real."""

    def __init__(self) -> None:
        self.start = 1000.0
        self.now = self.start

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - self.start


def joining(chunks_done: int, chunks_total: int = 4096) -> JoinProgress:
    return JoinProgress(JOINER, "JOINING", "CHUNKS", chunks_done, chunks_total, 1)


def active(node_id: int = JOINER) -> JoinProgress:
    return JoinProgress(node_id, "ACTIVE", "DONE", 4096, 4096, 1)


def run_wait(time: FakeTime, join: Callable[[float], JoinProgress],
             agreed_from: float | None = None,
             allowance: float = 300.0,
             look: Callable[[], float] | None = None) -> tuple[Waited, list[str]]:
    """The wait on TIME, with node 1 ACTIVE and node JOINER as JOIN says at each moment;
    the replicas agree from AGREED_FROM seconds into the wait (never when None). LOOK, if
    given, is each look (it may move TIME on) and answers the time it ended."""
    said: list[str] = []
    _, waited = wait(
        look=look or (lambda: time.elapsed),
        agreed=lambda at: agreed_from is not None and at >= agreed_from,
        joins=lambda: {1: active(1), JOINER: join(time.elapsed)},
        timeout=TIMEOUT, allowance=allowance, interval=INTERVAL, echo=said.append,
        clock=time.clock, sleep=time.sleep,
    )
    return waited, said


def test_a_join_moving_on_past_the_timeout_extends_the_wait_until_the_replicas_agree() -> None:
    time = FakeTime()

    def join(at: float) -> JoinProgress:  # 40 chunks a second; ACTIVE from 48 s
        return joining(int(at * 40)) if at < 48 else active()

    waited, said = run_wait(time, join, agreed_from=55.0)

    assert waited.agreed and waited.seconds == 55.0
    assert [(e.node_id, e.at, e.until) for e in waited.extensions] == [
        (JOINER, 30.0, 40.0), (JOINER, 40.0, 50.0), (JOINER, 50.0, 60.0)]
    assert waited.extensions[0].before == joining(800)
    assert waited.extensions[0].now == joining(1200)
    assert waited.extensions[-1].now == active()  # a join that ended moved on too
    assert said[0] == ("convergence: node 3 is still joining and moving on (CHUNKS, chunks "
                       "800/4,096, 1 snapshot(s) fetched -> CHUNKS, chunks 1,200/4,096, 1 "
                       "snapshot(s) fetched): waiting until 40 s")
    assert said[-1].startswith("convergence: node 3 has joined (")
    assert waited.waited_for() == (
        "the 30 s timeout extended to 60 s while node 3 joined and moved on (node 3: CHUNKS,"
        " chunks 800/4,096, 1 snapshot(s) fetched -> ACTIVE)")


@pytest.mark.parametrize("stalled_at", [0.0, 15.0], ids=["never-moving", "stalled-early"])
def test_a_join_not_moving_on_in_the_last_window_extends_nothing(stalled_at: float) -> None:
    time = FakeTime()

    waited, said = run_wait(time, lambda at: joining(int(min(at, stalled_at) * 100) + 2310))

    assert not waited.agreed and waited.seconds == TIMEOUT
    assert waited.extensions == () and said == []
    stuck = joining(int(stalled_at * 100) + 2310)
    assert waited.stuck == (stuck,) and waited.moving == ()
    assert waited.why_not() == (
        f"not within 30 s; node 3 still joining, not seen moving on in the last "
        f"{JOIN_WINDOW:.0f} s ({stuck.brief()})")


def test_a_look_longer_than_the_window_still_sees_the_join_it_spanned_move_on() -> None:
    """On a loaded machine one look (whole libraries read) outlasted the timeout while a
    replica finished its join: the joins read after it, both ACTIVE, showed no move, and the
    wait gave up (lab run of seed 2073, beside a make test)."""
    time = FakeTime()

    def look() -> float:
        if time.elapsed == 0:
            time.now += 35.0  # the first look, reading whole libraries slowly
        return time.elapsed

    def join(at: float) -> JoinProgress:  # ACTIVE from 32 s, inside that look
        return joining(int(at * 40)) if at < 32 else active()

    waited, _ = run_wait(time, join, agreed_from=40.0, look=look)

    assert waited.agreed and waited.seconds == 40.0
    assert [(e.node_id, e.at, e.until) for e in waited.extensions] == [(JOINER, 35.0, 45.0)]
    assert waited.extensions[0].before == joining(0) and waited.extensions[0].now == active()


def test_the_join_allowance_caps_the_wait_for_a_join_that_never_ends() -> None:
    time = FakeTime()

    waited, _ = run_wait(time, lambda at: joining(int(at * 10), 10**6), allowance=45.0)

    assert not waited.agreed and waited.seconds == TIMEOUT + 45.0
    assert [e.until for e in waited.extensions] == [40.0, 50.0, 60.0, 70.0, 75.0]
    assert waited.moving == (joining(750, 10**6),)
    assert "node 3 still joining and moving on (CHUNKS, chunks 750/1,000,000, 1 snapshot(s)" \
           " fetched) when the join allowance of 45 s was spent" in waited.why_not()
    assert waited.why_not().startswith("not within 75 s (the 30 s timeout extended to 75 s")


def test_with_no_replica_joining_the_wait_ends_at_the_timeout_as_before() -> None:
    time = FakeTime()

    waited, said = run_wait(time, lambda at: active())

    assert not waited.agreed and waited.seconds == TIMEOUT
    assert waited.extensions == () and said == []
    assert waited.why_not() == "not within 30 s" and waited.waited_for() == ""


def test_replicas_that_agree_before_the_timeout_end_the_wait_at_once() -> None:
    time = FakeTime()

    waited, _ = run_wait(time, lambda at: joining(int(at * 40)), agreed_from=12.0)

    assert waited.agreed and waited.seconds == 12.0 and waited.extensions == ()


def test_a_join_whose_rate_alone_changed_has_not_moved_on() -> None:
    def status(rate: float) -> dict[str, object]:
        return {"state": "JOINING", "role": "follower", "sync": {
            "phase": "CHUNKS", "chunks_done": 2310, "chunks_total": 4096,
            "snapshots_fetched": 1, "bad_snapshots": 0, "mib_per_s": rate, "eta_s": 9.0,
            "waiting_for": None}}

    assert JoinProgress.of(JOINER, status(3.2)) == JoinProgress.of(JOINER, status(1.1)) \
        == joining(2310)
    assert JoinProgress.of(JOINER, None) is None
    assert not JoinProgress.of(1, {"state": "ACTIVE", "sync": {"phase": "DONE"}}).joining


def test_the_report_says_the_deadline_was_extended_and_for_whose_join(tmp_path: Path) -> None:
    time = FakeTime()
    waited, _ = run_wait(time, lambda at: joining(int(at * 40)) if at < 48 else active(),
                         agreed_from=55.0)
    report = Report("random", "2024-01-01T00:00:00+00:00", convergence_timeout=TIMEOUT,
                    join_allowance=300.0, convergence_seconds=waited.seconds,
                    convergence_extensions=[attrs.asdict(e) for e in waited.extensions])

    saved = json.loads(report.save(tmp_path).read_text())

    assert ("convergence: 55.00 s after the workload stopped, every fault repaired (the "
            "deadline extended 3 time(s), to 60 s of at most 330 s, while node 3 joined and "
            "moved on)") in report.table()
    assert [e["until"] for e in saved["convergence_extensions"]] == [40.0, 50.0, 60.0]
    assert saved["convergence_extensions"][0]["now"]["chunks_done"] == 1200
