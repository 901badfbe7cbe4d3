"""The proxy's decisions as tables: each row is one request's situation and what the proxy does.

No network and no clock: ``classify`` and ``give_up`` are pure, so every rule of
docs/architecture.md section 5.3 (421, 5xx, read-your-writes 404, resume, writes that may
have been applied) is a row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from proxy.decision import (
    Abort,
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
    repeatable,
)

SONG = b"/songs/0b0c8a4e-0000-4000-8000-000000000001"
PLAYLIST = b"/playlists/0b0c8a4e-0000-4000-8000-000000000002"
LEADER = "http://10.0.0.3:8003"
HERE = "http://10.0.0.1:8001"
MAYBE_APPLIED = ("the leader failed while handling this POST; it may or may not have been"
                 " applied: ")


def context(method: bytes = b"GET", uri: bytes = SONG, **fields: Any) -> Context:
    """A request sent once, to HERE, with LEADER known; ``fields`` override."""
    values: dict[str, Any] = {
        "leader": LEADER, "tried": frozenset({HERE}), "replica": "node 1 (here)", **fields}
    return Context(method, uri, **values)


def rows(*table: tuple[str, Outcome, Context, Decision]) -> Any:
    return [pytest.param(outcome, ctx, decision, id=name) for name, outcome, ctx, decision in table]


# ---------------------------------------------------------------- an answer arrived


@pytest.mark.parametrize(("outcome", "ctx", "expected"), rows(
    # reads
    ("read 200 relayed", Answered(200), context(), Relay()),
    ("read 206 relayed", Answered(206), context(), Relay()),
    ("read 304 relayed", Answered(304), context(), Relay()),
    ("read 400 relayed", Answered(400), context(), Relay()),
    ("read 409 relayed", Answered(409), context(), Relay()),
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
    # writes: only a first 421 is the proxy's to handle
    ("write 201 relayed", Answered(201), context(b"POST", b"/playlists"), Relay()),
    ("write 204 relayed", Answered(204), context(b"DELETE", PLAYLIST), Relay()),
    ("write 404 relayed", Answered(404), context(b"PATCH", SONG), Relay()),
    ("write 409 relayed", Answered(409), context(b"PUT", PLAYLIST), Relay()),
    ("write 413 relayed", Answered(413), context(b"POST", b"/songs"), Relay()),
    ("write 500 relayed", Answered(500), context(b"POST", b"/playlists"), Relay()),
    ("write 503 relayed", Answered(503), context(b"PATCH", SONG), Relay()),
    ("write 421 to the named leader", Answered(421), context(b"POST", b"/playlists"),
     Redirect(None)),
    ("DELETE 421 to the named leader", Answered(421), context(b"DELETE", SONG),
     Redirect(None)),
    ("write second 421 relayed", Answered(421),
     context(b"POST", b"/playlists", redirected=True), Relay()),
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
def test_a_write_answer_is_the_leaders_unless_it_is_a_first_421(
    method: bytes, code: int, redirected: bool
) -> None:
    decision = classify(Answered(code), context(method, PLAYLIST, redirected=redirected))

    assert decision == (Redirect(None) if code == 421 and not redirected else Relay())


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
    ("write refused next", Unanswered("ConnectionRefusedError", unsent=True),
     context(b"POST", b"/playlists", repeatable=False),
     NextReplica("ConnectionRefusedError")),
    ("write not sent next", Unanswered("RequestNotSent", unsent=True),
     context(b"POST", PLAYLIST + b"/items", repeatable=False), NextReplica("RequestNotSent")),
    ("write lost, repeatable, next", Unanswered("ConnectionLost"),
     context(b"POST", b"/songs", repeatable=True), NextReplica("ConnectionLost")),
    ("write lost, not repeatable, 502", Unanswered("ConnectionLost"),
     context(b"POST", b"/playlists", repeatable=False),
     Answer(502, "upstream_failed", MAYBE_APPLIED + "ConnectionLost")),
    ("write superseded, not repeatable, 502", Unanswered("node 2 (x) leads now"),
     context(b"POST", PLAYLIST + b"/items", repeatable=False),
     Answer(502, "upstream_failed", MAYBE_APPLIED + "node 2 (x) leads now")),
    ("write superseded, repeatable, next", Unanswered("node 2 (x) leads now"),
     context(b"PATCH", PLAYLIST, repeatable=True), NextReplica("node 2 (x) leads now")),
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
    ("write answer cut before any byte, repeatable, next", BodyEnded("ConnectionLost"),
     context(b"PUT", PLAYLIST, repeatable=True), NextReplica("ConnectionLost")),
    ("write answer cut before any byte, not repeatable, 502", BodyEnded("ConnectionLost"),
     context(b"POST", b"/playlists", repeatable=False),
     Answer(502, "upstream_failed", MAYBE_APPLIED + "ConnectionLost")),
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
     context(b"POST", b"/playlists", committed=True, repeatable=False),
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
    pytest.param(True, False, ["node 3: lost"],
                 Answer(503, "unavailable", "no replica could answer: node 3: lost"),
                 id="write, leader failed"),
    pytest.param(False, True, ["node 1: a", "node 2: b"], Abort("node 1: a; node 2: b"),
                 id="read mid-body"),
    pytest.param(False, True, [], Abort("no replica left"), id="read mid-body, none left"),
])
def test_giving_up(write: bool, committed: bool, failures: list[str],
                   expected: Decision) -> None:
    assert give_up(write=write, committed=committed, failures=failures,
                   write_hold=2.5) == expected


# ---------------------------------------------------------------- which requests may repeat


def _no_body() -> Mapping[str, object]:
    raise AssertionError("the body was read")


@pytest.mark.parametrize(("method", "uri", "fields", "expected"), [
    (b"GET", SONG, None, True),
    (b"HEAD", SONG, None, True),
    (b"OPTIONS", b"/songs", None, True),
    (b"PUT", PLAYLIST, None, True),
    (b"PATCH", SONG, None, True),
    (b"DELETE", PLAYLIST + b"/items/x", None, True),
    (b"POST", b"/songs", None, True),
    (b"POST", b"/songs/", None, True),
    (b"POST", b"/songs?title=x", None, True),
    (b"POST", b"/playlists", {"name": "x", "id": "0b0c8a4e-0000-4000-8000-000000000003"},
     True),
    (b"POST", b"/playlists/", {"id": "x"}, True),
    (b"POST", b"/playlists", {"name": "x"}, False),
    (b"POST", b"/playlists", {}, False),
    (b"POST", PLAYLIST + b"/items", None, False),
    (b"POST", b"/songs/x/other", None, False),
    (b"POST", b"/anything", None, False),
])
def test_which_requests_may_be_sent_twice(
    method: bytes, uri: bytes, fields: Mapping[str, object] | None, expected: bool
) -> None:
    body = _no_body if fields is None else lambda: fields  # read only by a playlist create

    assert repeatable(method, uri, body) is expected
