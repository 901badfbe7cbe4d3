"""The proxy's rules as pure functions: what one replica's answer means for a client's request.

``classify`` sees plain data (the request, what the client has already received, how the
attempt ended) and returns a Decision; resource.py sends, waits, relays and acts on it.
Every write carries an Idempotency-Key, so a write whose outcome is unknown is sent again
(Again), never answered "it may or may not have been applied".
"""
# test-case-name: tests.unit.test_proxy_decision

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import attrs

from distpotify import subsonicmethods

# After this many replicas failed one read the client gets its answer; a write is tried
# until --write-hold passes (docs/architecture.md section 5.3).
MAX_FAILED = 3
READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
# A new leader's refusals that depend on what it holds, not on the request: a record it
# lacks (404) or a disk it cannot write (507). After an attempt whose fate is unknown on
# another replica they are no answer: that replica may have applied the write.
_NOT_HERE_YET = frozenset({404, 507})
# Reads of one record that a lagging follower may not have yet (read-your-writes).
_RECORD_PATH = re.compile(rb"^/(songs|playlists)/[0-9a-f-]{36}(/|\?|$)")


def is_write(method: bytes, uri: bytes) -> bool:
    """Whether a request writes, and so goes to the leader. A Subsonic call (``/rest/...``)
    writes by its method's name, whatever its HTTP method: clients send writes as GETs
    (``/rest/star.view?id=..``) and, with the formPost extension, reads as POSTs; OPTIONS
    never writes. Anything else: every method but GET, HEAD and OPTIONS."""
    name = None if method == b"OPTIONS" else subsonicmethods.method_of_uri(uri)
    if name is not None:
        return name in subsonicmethods.WRITES
    return method not in READ_METHODS


@attrs.frozen
class Context:
    """What the exchange knows of a request when one of its attempts ends."""

    method: bytes
    uri: bytes
    # the client has the status line and headers: this attempt continues (resumes) a body
    committed: bool = False
    # body bytes the client has received so far
    sent: int = 0
    # a write already followed a 421 / a read already went to the leader after a 404
    redirected: bool = False
    fell_back: bool = False
    # the leader's URL as the view knows it now, and the URLs this request has been sent to
    leader: str | None = None
    tried: Collection[str] = ()
    # the replica of this attempt, as log lines and error messages name it, and its URL
    replica: str = ""
    url: str = ""
    # a write: the replicas where an earlier attempt ended with its outcome unknown
    unknown_on: Collection[str] = ()
    # a read: it carries X-Distpotify-Min-Version (the proxy's, or the client's own), and
    # the URL of the replica that made that version, when the view knows it
    min_version: bool = False
    writer: str | None = None

    @property
    def write(self) -> bool:
        return is_write(self.method, self.uri)


# How an attempt ended: the input of classify.


@attrs.frozen
class Answered:
    """The replica's status line and headers arrived; ``mismatch`` says why they cannot
    continue the client's response (a resume only: Resume.mismatch), None when they can.
    ``from_app``: the answer is the replica's own (X-Served-By and a JSON body), not one made
    by something between (or an error page): a 5xx without it leaves a write's fate unknown."""

    code: int
    mismatch: str | None = None
    from_app: bool = True


@attrs.frozen
class Unanswered:
    """No answer came: refused, lost, timed out, or cancelled because another replica now
    leads. ``unsent`` when the request certainly never reached the replica."""

    reason: str
    unsent: bool = False


@attrs.frozen
class BodyEnded:
    """A relayed body ended: whole (``error`` None, the stream's ResponseDone) or not.

    ``remaining`` is how many bytes of a resumable response the client still lacks, None
    when the response cannot be resumed (or nothing reached the client yet).
    """

    error: str | None
    remaining: int | None = None


Outcome = Answered | Unanswered | BodyEnded


# What to do: the output of classify.


@attrs.frozen
class Relay:
    """Send this answer's body to the client: its status and headers first, unless
    ``resumed`` (the body continues the one the client is already receiving)."""

    resumed: bool = False


@attrs.frozen
class NextReplica:
    """This replica failed the request; send it to another (the same request, or the rest of
    the body). ``close``: close the answer's connection unread (a refused resume can be a whole
    song), else read its small body so the connection goes back to the pool."""

    reason: str
    close: bool = False


@attrs.frozen
class Again:
    """A write the leader has not answered with its real outcome: send it again, with the
    same Idempotency-Key, to whichever replica leads, while --write-hold lasts. ``unknown``:
    this attempt may have been applied (the replica is remembered, for the 404 rule);
    ``pause``: the replica that answered may still be the one the view says leads, so wait
    a moment before asking again."""

    reason: str
    unknown: bool = False
    pause: bool = False


@attrs.frozen
class Redirect:
    """Ask another replica without counting a failure: the one at ``to``; None for the leader
    that a 421 names in its body, or else whichever replica is elected next."""

    to: str | None


@attrs.frozen
class Finish:
    """The client has the whole response: end it."""


@attrs.frozen
class Abort:
    """Tear the client's connection: it must not take the short body it has for the whole."""

    why: str


@attrs.frozen
class Answer:
    """Answer the client with the proxy's own JSON error."""

    status: int
    code: str
    message: str


Decision = Relay | NextReplica | Again | Redirect | Finish | Abort | Answer


def classify(outcome: Outcome, context: Context) -> Decision:
    """What one attempt's end means for the request (docs/architecture.md section 5.3, as a
    table)."""
    if isinstance(outcome, Answered):
        return _answered(outcome, context)
    if isinstance(outcome, Unanswered):
        return _failed(outcome.reason, context, certain=outcome.unsent)
    return _body_ended(outcome, context)


def _answered(answer: Answered, context: Context) -> Decision:
    code = answer.code
    if context.committed:
        if answer.mismatch is not None:
            return NextReplica(f"cannot resume: {answer.mismatch}", close=True)
        return Relay(resumed=True)
    if context.write:
        return _write_answered(answer, context)
    if code >= 500:
        return NextReplica(f"answered {code}")
    if code == 409:
        # A follower behind: it has not applied the client's write yet (the version the read
        # carries), or the account, or the newest session generation, of the client's session
        # (a genuine session it cannot check yet: the gate). The leader has it, and so does
        # the replica that made the write (the same one, unless the view knows no leader for
        # a moment: an election, or its /status late under load); else another replica may.
        for holder in (context.leader, context.writer):
            if holder is not None and holder not in context.tried:
                return Redirect(holder)
        if context.leader is None:
            return NextReplica("answered 409 behind, and no leader is known")
        if context.url != context.leader:
            # The leader was asked and did not answer (it failed as the read fell back to
            # it): a follower's 409 is not the read's answer; the next replica, or a 503.
            return NextReplica("answered 409 behind, and the leader did not answer")
        return Relay()  # the leader is behind the version too: a client's own, not ours
    if (code == 404 and not context.fell_back and _RECORD_PATH.match(context.uri)
            and context.leader is not None and context.leader not in context.tried):
        return Redirect(context.leader)
    return Relay()


def _write_answered(answer: Answered, context: Context) -> Decision:
    """The leader's answer is the write's outcome, but for these: a 421 (follow it once, then
    wait for the view to name the leader), a 5xx that is not the replica's own answer (its
    fate is unknown), and a 404 or 507 from a new leader for a write whose fate is unknown
    on the old one (the old leader may have applied it, and earlier writes it depends on,
    which the new leader has not received; a new leader whose disk is full cannot tell
    either: neither is a definite answer)."""
    code = answer.code
    if code == 421:
        if not context.redirected:
            return Redirect(None)
        return Again(f"{context.replica} does not lead either", pause=True)
    if code >= 500 and not answer.from_app:
        return Again(f"{context.replica} answered {code} without the replica's own answer",
                     unknown=True, pause=True)
    if (code in _NOT_HERE_YET and context.unknown_on
            and context.url not in context.unknown_on):
        return Again(f"{context.replica} answered {code} to a write that may have been"
                     " applied elsewhere", pause=True)
    return Relay()


def _body_ended(end: BodyEnded, context: Context) -> Decision:
    if end.error is None:
        if end.remaining:
            return Abort(f"{context.replica} ended the body {context.sent} bytes in")
        return Finish()
    if not context.committed:
        return _failed(end.error, context, certain=False)
    if end.remaining is None:
        return Abort(f"{context.replica} failed mid-body ({end.error})"
                     " and the response cannot be resumed")
    if end.remaining == 0:
        return Finish()
    return NextReplica(end.error)


def _failed(reason: str, context: Context, *, certain: bool) -> NextReplica | Again:
    """The request failed before its answer started: a read goes to the next replica; a
    write goes again to the leader under its key (applied once however often it is sent)."""
    if context.write:
        return Again(reason, unknown=not certain)
    return NextReplica(reason)


def give_up(*, write: bool, committed: bool, failures: Sequence[str], write_hold: float
            ) -> Abort | Answer:
    """No replica is left to try (MAX_FAILED failed a read, or --write-hold passed for a
    write): what the client gets."""
    if committed:
        return Abort("; ".join(failures) or "no replica left")
    if write and not failures:
        return Answer(503, "no_leader",
                      f"no leader elected within {write_hold:g} s; retry shortly")
    detail = "; ".join(failures) or "no healthy replica"
    if write:
        return Answer(503, "unavailable", f"no leader confirmed this write within"
                      f" {write_hold:g} s ({detail}); retry shortly")
    return Answer(503, "unavailable", f"no replica could answer: {detail}")
