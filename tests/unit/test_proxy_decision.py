"""The proxy's decisions as tables: each row is one request's situation and what the proxy does.

No network and no clock: ``classify`` and ``give_up`` are pure, so every rule of
docs/architecture.md section 5.3 (421, 5xx, read-your-writes 404 and 409, resume, writes
whose outcome is unknown) is a row.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from proxy.decision import (
    Abort,
    Again,
    Answer,
    Answered,
    BodyEnded,
    Context,
    Decision,
    Finish,
    NextReplica,
    Outcome,
    Redirect,
    Relay,
    Unanswered,
    classify,
    give_up,
)

SONG = b"/songs/0b0c8a4e-0000-4000-8000-000000000001"
PLAYLIST = b"/playlists/0b0c8a4e-0000-4000-8000-000000000002"
LEADER = "http://10.0.0.3:8003"
HERE = "http://10.0.0.1:8001"
OLD_LEADER = "http://10.0.0.3:8003"
NEW_LEADER = "http://10.0.0.2:8002"


def context(method: bytes = b"GET", uri: bytes = SONG, **fields: Any) -> Context:
    """A request sent once, to HERE, with LEADER known; ``fields`` override."""
    values: dict[str, Any] = {
        "leader": LEADER, "tried": frozenset({HERE}), "replica": "node 1 (here)", "url": HERE,
        **fields}
    return Context(method, uri, **values)


def again_on_new_leader(**fields: Any) -> Context:
    """A write whose first attempt's outcome is unknown on the old leader, now sent to the
    new one."""
    values: dict[str, Any] = {
        "unknown_on": frozenset({OLD_LEADER}), "tried": frozenset({OLD_LEADER, NEW_LEADER}),
        "url": NEW_LEADER, "replica": "node 2 (new)", **fields}
    return context(b"DELETE", PLAYLIST, **values)


def rows(*table: tuple[str, Outcome, Context, Decision]) -> Any:
    return [pytest.param(outcome, ctx, decision, id=name) for name, outcome, ctx, decision in table]


# ---------------------------------------------------------------- an answer arrived


@pytest.mark.parametrize(("outcome", "ctx", "expected"), rows(
    # reads
    ("read 200 relayed", Answered(200), context(), Relay()),
    ("read 206 relayed", Answered(206), context(), Relay()),
    ("read 304 relayed", Answered(304), context(), Relay()),
    ("read 400 relayed", Answered(400), context(), Relay()),
    ("read 416 relayed", Answered(416), context(), Relay()),
    ("read 421 relayed", Answered(421), context(), Relay()),
    ("read 499 relayed", Answered(499), context(), Relay()),
    ("read 500 next", Answered(500), context(), NextReplica("answered 500")),
    ("read 502 next", Answered(502), context(), NextReplica("answered 502")),
    ("read 503 next", Answered(503), context(), NextReplica("answered 503")),
    ("read 504 next", Answered(504), context(), NextReplica("answered 504")),
    ("HEAD 503 next", Answered(503), context(b"HEAD"), NextReplica("answered 503")),
    ("OPTIONS 500 next", Answered(500), context(b"OPTIONS"), NextReplica("answered 500")),
    ("read 500 from the leader next", Answered(500),
     context(fell_back=True, tried=frozenset({HERE, LEADER})), NextReplica("answered 500")),
    # read-your-writes: a record a follower may not have yet is asked of the leader, once
    ("404 song to leader", Answered(404), context(), Redirect(LEADER)),
    ("404 song stream to leader", Answered(404), context(uri=SONG + b"/stream"),
     Redirect(LEADER)),
    ("404 song chunk to leader", Answered(404), context(uri=SONG + b"/chunks/3"),
     Redirect(LEADER)),
    ("404 song with query to leader", Answered(404), context(uri=SONG + b"?x=1"),
     Redirect(LEADER)),
    ("404 playlist to leader", Answered(404), context(uri=PLAYLIST), Redirect(LEADER)),
    ("HEAD 404 song to leader", Answered(404), context(b"HEAD"), Redirect(LEADER)),
    ("404 after falling back relayed", Answered(404),
     context(fell_back=True, tried=frozenset({HERE, LEADER})), Relay()),
    ("404 from the leader itself relayed", Answered(404),
     context(tried=frozenset({LEADER})), Relay()),
    ("404 with no leader known relayed", Answered(404), context(leader=None), Relay()),
    ("404 list relayed", Answered(404), context(uri=b"/songs"), Relay()),
    ("404 search relayed", Answered(404), context(uri=b"/songs?q=x"), Relay()),
    ("404 unknown path relayed", Answered(404), context(uri=b"/nothing-here"), Relay()),
    ("404 not a uuid relayed", Answered(404), context(uri=b"/songs/not-an-id"), Relay()),
    ("404 other root relayed", Answered(404),
     context(uri=b"/status/0b0c8a4e-0000-4000-8000-000000000001"), Relay()),
    # read your writes: a follower behind the client's write hands the read to the leader
    ("409 behind to leader", Answered(409), context(min_version=True), Redirect(LEADER)),
    ("409 behind from the leader relayed", Answered(409),
     context(min_version=True, tried=frozenset({LEADER}), url=LEADER), Relay()),
    ("409 behind from the leader after falling back relayed", Answered(409),
     context(min_version=True, fell_back=True, tried=frozenset({HERE, LEADER}), url=LEADER),
     Relay()),
    # the leader the read fell back to failed: a follower's 409 is not the answer
    ("409 behind from a follower after the leader failed next", Answered(409),
     context(min_version=True, fell_back=True, tried=frozenset({HERE, LEADER})),
     NextReplica("answered 409 behind, and the leader did not answer")),
    ("409 behind after the leader failed to the one elected since", Answered(409),
     context(min_version=True, fell_back=True, tried=frozenset({HERE, OLD_LEADER}),
             leader=NEW_LEADER), Redirect(NEW_LEADER)),
    ("409 behind with no leader known to the writer", Answered(409),
     context(min_version=True, leader=None, writer=LEADER), Redirect(LEADER)),
    ("409 behind with the leader tried to the writer", Answered(409),
     context(min_version=True, tried=frozenset({HERE, LEADER}), writer=NEW_LEADER),
     Redirect(NEW_LEADER)),
    ("409 behind from the writer itself with no leader known next", Answered(409),
     context(min_version=True, leader=None, writer=HERE), NextReplica(
         "answered 409 behind, and no leader is known")),
    ("409 behind with no leader or writer known next", Answered(409),
     context(min_version=True, leader=None),
     NextReplica("answered 409 behind, and no leader is known")),
    # a follower behind the account of the client's session (the gate's 409 behind)
    ("409 behind the session's account to leader", Answered(409), context(),
     Redirect(LEADER)),
    ("409 without a min version from the leader relayed", Answered(409),
     context(tried=frozenset({LEADER}), url=LEADER), Relay()),
    ("409 without a min version from a follower after the leader failed next",
     Answered(409), context(fell_back=True, tried=frozenset({HERE, LEADER})),
     NextReplica("answered 409 behind, and the leader did not answer")),
    # writes: the leader's answer is the outcome, but for a 421, a 5xx not its own, and a
    # 404 or 507 from a new leader for a write whose outcome is unknown on the old one
    ("write 201 relayed", Answered(201), context(b"POST", b"/playlists"), Relay()),
    ("write 204 relayed", Answered(204), context(b"DELETE", PLAYLIST), Relay()),
    ("write 404 relayed", Answered(404), context(b"PATCH", SONG), Relay()),
    ("write 409 relayed", Answered(409), context(b"PUT", PLAYLIST), Relay()),
    ("write 413 relayed", Answered(413), context(b"POST", b"/songs"), Relay()),
    ("write 422 relayed", Answered(422), context(b"POST", b"/songs"), Relay()),
    ("write 500 of the replica relayed", Answered(500), context(b"POST", b"/playlists"),
     Relay()),
    ("write 503 of the replica relayed", Answered(503), context(b"PATCH", SONG), Relay()),
    ("write 502 not the replica's again", Answered(502, from_app=False),
     context(b"POST", b"/playlists"),
     Again("node 1 (here) answered 502 without the replica's own answer", unknown=True,
           pause=True)),
    ("write 200 not the replica's relayed", Answered(200, from_app=False),
     context(b"POST", b"/playlists"), Relay()),
    ("write 421 to the named leader", Answered(421), context(b"POST", b"/playlists"),
     Redirect(None)),
    ("DELETE 421 to the named leader", Answered(421), context(b"DELETE", SONG),
     Redirect(None)),
    ("write second 421 again later", Answered(421),
     context(b"POST", b"/playlists", redirected=True),
     Again("node 1 (here) does not lead either", pause=True)),
    ("write 404 from a new leader after an unknown outcome again later", Answered(404),
     again_on_new_leader(),
     Again("node 2 (new) answered 404 to a write that may have been applied elsewhere",
           pause=True)),
    ("write 404 from the leader of the unknown outcome relayed", Answered(404),
     again_on_new_leader(url=OLD_LEADER), Relay()),
    ("write 507 from a new leader after an unknown outcome again later", Answered(507),
     again_on_new_leader(),
     Again("node 2 (new) answered 507 to a write that may have been applied elsewhere",
           pause=True)),
    ("write 507 from the leader of the unknown outcome relayed", Answered(507),
     again_on_new_leader(url=OLD_LEADER), Relay()),
    ("write 507 relayed", Answered(507), context(b"POST", b"/songs"), Relay()),
    ("write 204 from a new leader after an unknown outcome relayed", Answered(204),
     again_on_new_leader(), Relay()),
    ("write 409 from a new leader after an unknown outcome relayed", Answered(409),
     again_on_new_leader(), Relay()),
    # a resume: only the exact missing bytes of the same ETag continue the response
    ("resume fits", Answered(206), context(committed=True, sent=10_000),
     Relay(resumed=True)),
    ("resume refused", Answered(200, mismatch="answered 200, not 206"),
     context(committed=True, sent=10_000),
     NextReplica("cannot resume: answered 200, not 206", close=True)),
    ("resume other etag", Answered(206, mismatch='ETag "e2" differs from "e1"'),
     context(committed=True), NextReplica('cannot resume: ETag "e2" differs from "e1"',
                                          close=True)),
    ("resume 503 refused", Answered(503, mismatch="answered 503, not 206"),
     context(committed=True), NextReplica("cannot resume: answered 503, not 206", close=True)),
    ("resume 404 refused, not redirected", Answered(404, mismatch="answered 404, not 206"),
     context(committed=True), NextReplica("cannot resume: answered 404, not 206", close=True)),
))
def test_an_answer(outcome: Outcome, ctx: Context, expected: Decision) -> None:
    assert classify(outcome, ctx) == expected


@pytest.mark.parametrize(("method", "code", "redirected"), itertools.product(
    [b"POST", b"PUT", b"PATCH", b"DELETE"],
    [200, 201, 204, 400, 403, 404, 409, 413, 415, 421, 422, 500, 502, 503, 504],
    [False, True],
))
def test_a_write_answer_of_the_replica_is_the_outcome_unless_it_is_a_421(
    method: bytes, code: int, redirected: bool
) -> None:
    decision = classify(Answered(code), context(method, PLAYLIST, redirected=redirected))

    if code != 421:
        assert decision == Relay()
    elif redirected:
        assert isinstance(decision, Again) and decision.pause and not decision.unknown
    else:
        assert decision == Redirect(None)


@pytest.mark.parametrize(("method", "code"), itertools.product(
    [b"POST", b"PUT", b"PATCH", b"DELETE"], [500, 502, 503, 504]))
def test_a_write_5xx_that_is_not_the_replicas_own_is_sent_again(method: bytes, code: int
                                                                ) -> None:
    decision = classify(Answered(code, from_app=False), context(method, PLAYLIST))

    assert isinstance(decision, Again) and decision.unknown and decision.pause


@pytest.mark.parametrize(("method", "code", "fell_back"), itertools.product(
    [b"GET", b"HEAD", b"POST", b"DELETE"], [200, 206, 404, 421, 500, 503], [False, True]))
def test_a_fitting_resume_is_relayed_whatever_its_request(
    method: bytes, code: int, fell_back: bool
) -> None:
    ctx = context(method, SONG, committed=True, sent=1, fell_back=fell_back)

    assert classify(Answered(code), ctx) == Relay(resumed=True)


# ---------------------------------------------------------------- no answer came


@pytest.mark.parametrize(("outcome", "ctx", "expected"), rows(
    ("read refused next", Unanswered("ConnectionRefusedError", unsent=True), context(),
     NextReplica("ConnectionRefusedError")),
    ("read lost next", Unanswered("ConnectionLost"), context(), NextReplica("ConnectionLost")),
    ("read timed out next", Unanswered("CancelledError"), context(),
     NextReplica("CancelledError")),
    ("resume lost next", Unanswered("ConnectionLost"), context(committed=True, sent=5),
     NextReplica("ConnectionLost")),
    ("write refused again, not applied", Unanswered("ConnectionRefusedError", unsent=True),
     context(b"POST", b"/playlists"), Again("ConnectionRefusedError")),
    ("write not sent again, not applied", Unanswered("RequestNotSent", unsent=True),
     context(b"POST", PLAYLIST + b"/items"), Again("RequestNotSent")),
    ("upload lost again, unknown", Unanswered("ConnectionLost"),
     context(b"POST", b"/songs"), Again("ConnectionLost", unknown=True)),
    ("create lost again, unknown", Unanswered("ConnectionLost"),
     context(b"POST", b"/playlists"), Again("ConnectionLost", unknown=True)),
    ("write timed out again, unknown", Unanswered("CancelledError"),
     context(b"DELETE", PLAYLIST), Again("CancelledError", unknown=True)),
    ("write superseded again, unknown", Unanswered("node 2 (x) leads now"),
     context(b"POST", PLAYLIST + b"/items"), Again("node 2 (x) leads now", unknown=True)),
))
def test_no_answer(outcome: Outcome, ctx: Context, expected: Decision) -> None:
    assert classify(outcome, ctx) == expected


# ---------------------------------------------------------------- a relayed body ended


@pytest.mark.parametrize(("outcome", "ctx", "expected"), rows(
    ("whole body finished", BodyEnded(None, remaining=0), context(committed=True),
     Finish()),
    ("whole unresumable body finished", BodyEnded(None), context(committed=True), Finish()),
    ("whole write answer finished", BodyEnded(None), context(b"POST", committed=True),
     Finish()),
    ("clean end short of the promise aborted", BodyEnded(None, remaining=100),
     context(committed=True, sent=900),
     Abort("node 1 (here) ended the body 900 bytes in")),
    ("cut before any byte next", BodyEnded("ConnectionLost"), context(),
     NextReplica("ConnectionLost")),
    ("write answer cut before any byte again", BodyEnded("ConnectionLost"),
     context(b"PUT", PLAYLIST), Again("ConnectionLost", unknown=True)),
    ("create answer cut before any byte again", BodyEnded("ConnectionLost"),
     context(b"POST", b"/playlists"), Again("ConnectionLost", unknown=True)),
    ("cut mid-body resumed", BodyEnded("ConnectionLost", remaining=10),
     context(committed=True, sent=90), NextReplica("ConnectionLost")),
    ("stalled mid-body resumed", BodyEnded("UpstreamStalled", remaining=10),
     context(committed=True, sent=90), NextReplica("UpstreamStalled")),
    ("cut after the last byte finished", BodyEnded("ConnectionLost", remaining=0),
     context(committed=True, sent=100), Finish()),
    ("cut mid-body, unresumable, aborted", BodyEnded("ConnectionLost"),
     context(committed=True, sent=90),
     Abort("node 1 (here) failed mid-body (ConnectionLost) and the response cannot be"
           " resumed")),
    ("write answer cut mid-body aborted", BodyEnded("ConnectionLost"),
     context(b"POST", b"/playlists", committed=True),
     Abort("node 1 (here) failed mid-body (ConnectionLost) and the response cannot be"
           " resumed")),
))
def test_a_body_ending(outcome: Outcome, ctx: Context, expected: Decision) -> None:
    assert classify(outcome, ctx) == expected


# ---------------------------------------------------------------- no replica left


@pytest.mark.parametrize(("write", "committed", "failures", "expected"), [
    pytest.param(False, False, [], Answer(503, "unavailable",
                                          "no replica could answer: no healthy replica"),
                 id="read, nothing tried"),
    pytest.param(False, False, ["node 1: a", "node 2: b", "node 3: c"],
                 Answer(503, "unavailable",
                        "no replica could answer: node 1: a; node 2: b; node 3: c"),
                 id="read, all failed"),
    pytest.param(True, False, [], Answer(503, "no_leader",
                                         "no leader elected within 2.5 s; retry shortly"),
                 id="write, no leader"),
    pytest.param(True, False, ["node 3: lost", "node 2: lost"],
                 Answer(503, "unavailable", "no leader confirmed this write within 2.5 s"
                        " (node 3: lost; node 2: lost); retry shortly"),
                 id="write, leaders failed"),
    pytest.param(False, True, ["node 1: a", "node 2: b"], Abort("node 1: a; node 2: b"),
                 id="read mid-body"),
    pytest.param(False, True, [], Abort("no replica left"), id="read mid-body, none left"),
])
def test_giving_up(write: bool, committed: bool, failures: list[str],
                   expected: Decision) -> None:
    assert give_up(write=write, committed=committed, failures=failures,
                   write_hold=2.5) == expected


def test_no_decision_answers_a_write_that_it_may_or_may_not_have_been_applied() -> None:
    """The old 502 upstream_failed is gone: every way a write can end is in this product."""
    outcomes: list[Outcome] = [
        *(Answered(code, from_app=app) for code in (200, 404, 421, 500, 502, 503)
          for app in (True, False)),
        Unanswered("lost"), Unanswered("refused", unsent=True), BodyEnded("lost"),
    ]
    contexts = [context(b"POST", b"/playlists", redirected=r) for r in (False, True)] + [
        again_on_new_leader()]

    for outcome, ctx in itertools.product(outcomes, contexts):
        decision = classify(outcome, ctx)
        assert not (isinstance(decision, Answer) and decision.status == 502), (outcome, ctx)
