"""The proxy's view of the replicas: /status polling, health, the leader, round-robin reads.

BackendView decides from what an injected status fetcher answers and what an injected clock
says, so every routing decision is testable with ``Clock``; ``status_fetcher`` is the HTTP edge.
"""
# test-case-name: tests.unit.test_proxy_backends

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from distpotify.httpfailures import cancelled, in_words
from distpotify.keys import ClusterKeys
from distpotify.periodic import Periodic
from distpotify.signing import EMPTY_SHA256, sign
from distpotify.wire import ACTIVE, LEADER
from proxy.config import ConfigError, parse_backends
from proxy.upstream import read_body

log = Logger()

StatusFetcher = Callable[[str], "Deferred[dict[str, Any]]"]


class StatusError(Exception):
    """A /status answer the proxy cannot use."""


@attrs.define(eq=False)
class Backend:
    """One replica as the proxy last saw it; ``url`` is its identity (``http://host:port``)."""

    url: str
    configured: bool = True
    node_id: int | None = None
    role: str | None = None
    state: str | None = None
    epoch: int = 0
    leader_id: int | None = None
    leader_http: str | None = None
    # How many ACTIVE replicas its own /status shows up (itself included): of two claimed
    # leaders, the one whose view holds more is the majority's.
    active_view: int = 0
    healthy: bool = False
    checked_at: float | None = None
    last_error: str | None = None
    polls: int = 0
    poll_failures: int = 0
    forwarded: int = 0
    failures: int = 0
    generation: int = 0
    polling: bool = False
    observers: list[Deferred[bool]] = attrs.field(factory=list, repr=False)

    @property
    def rank(self) -> tuple[int, int, int]:
        """What orders competing leaders: the larger view of ACTIVE replicas, then the
        higher (epoch, node_id)."""
        return (self.active_view, self.epoch, self.node_id or 0)

    def fresh(self, now: float, max_age: float) -> bool:
        """Healthy, by a /status answer at most ``max_age`` seconds old."""
        return self.healthy and self.checked_at is not None and now - self.checked_at <= max_age

    def describe(self) -> str:
        return f"node {self.node_id} ({self.url})" if self.node_id is not None else self.url


class BackendView:
    """Which replicas exist, which are healthy, who leads, and whose turn it is to read."""

    def __init__(
        self,
        urls: Iterable[str],
        fetch: StatusFetcher,
        clock: IReactorTime,
        *,
        poll_interval: float = 0.25,
        health_max_age: float = 0.5,
        check_timeout: float = 0.5,
    ) -> None:
        self.backends: dict[str, Backend] = {url: Backend(url) for url in urls}
        self.health_max_age = health_max_age
        self.poll_interval = poll_interval
        self.check_timeout = check_timeout
        self._fetch = fetch
        self._clock = clock
        self._turn = 0
        self._waiters: dict[Deferred[None], IDelayedCall] = {}
        self._loop = Periodic(self._tick, poll_interval, clock, name="status polling", first=0)
        self._leader_seen: tuple[str, tuple[int, int]] | None = None
        self._leader_watchers: dict[Deferred[Backend], Backend] = {}

    # polling

    def start(self) -> None:
        if not self._loop.running:
            self._loop.startService()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stopService()

    def _tick(self) -> None:
        # Not waited for: one slow replica must not delay the polls of the others.
        self.poll_all()

    def poll_all(self) -> Deferred[list[bool]]:
        """Ask every known replica's /status now; fires once all have answered or failed."""
        polls = [self.poll(backend) for backend in list(self.backends.values())]
        # consumeErrors: a cancelled gathering (refresh's timeout, a client gone) cancels each
        # poll's observer; their CancelledErrors are the gathering's, not unhandled ones.
        return gatherResults(polls, consumeErrors=True)

    def refresh(self) -> Deferred[list[bool]]:
        """poll_all, bounded by the check timeout: for a request that needs a current view."""
        return self.poll_all().addTimeout(self.check_timeout, self._clock).addErrback(
            lambda _: [])

    def poll(self, backend: Backend) -> Deferred[bool]:
        """Ask ``backend``'s /status now, or join the question in flight; fires with health."""

        def forget(d: Deferred[bool]) -> None:
            if d in backend.observers:
                backend.observers.remove(d)

        observer: Deferred[bool] = Deferred(forget)
        backend.observers.append(observer)
        if not backend.polling:
            backend.polling = True
            generation = backend.generation
            d = maybeDeferred(self._fetch, backend.url)
            d.addTimeout(self.check_timeout, self._clock)
            d.addCallbacks(self._answered, self._unanswered,
                           callbackArgs=(backend, generation), errbackArgs=(backend,))
            d.addErrback(lambda f: log.failure("recording a /status answer failed", f))
            d.addBoth(self._polled, backend)
        return observer

    def _polled(self, _: object, backend: Backend) -> None:
        backend.polling = False
        observers, backend.observers = backend.observers, []
        for observer in observers:
            observer.callback(backend.healthy)
        self._changed()

    def _answered(self, status: Any, backend: Backend, generation: int) -> None:
        backend.polls += 1
        if generation != backend.generation:
            return  # asked before a request saw it fail: this answer is older than that news
        try:
            node_id, role, state, epoch = _identity(status)
        except (StatusError, TypeError, ValueError) as e:
            self._unanswered(Failure(StatusError(f"unusable /status: {e}")), backend)
            return
        changed = (node_id, role, state, epoch) != (
            backend.node_id, backend.role, backend.state, backend.epoch)
        if changed or not backend.healthy:
            log.info("{url} is node {node_id}: {role} {state} epoch {epoch}", url=backend.url,
                     node_id=node_id, role=role, state=state, epoch=epoch)
        backend.node_id, backend.role, backend.state, backend.epoch = node_id, role, state, epoch
        backend.leader_id = _optional_int(status.get("leader_id"))
        backend.leader_http = _optional_url(status.get("leader_http"))
        backend.active_view = _active_view(status)
        backend.healthy = True
        backend.checked_at = self._clock.seconds()
        backend.last_error = None
        self._one_address(backend)
        self._discover(status)
        self._note_leader()

    def _unanswered(self, failure: Failure, backend: Backend) -> None:
        backend.polls += 1
        backend.poll_failures += 1
        reason = _describe(failure, self.check_timeout)
        if backend.healthy or backend.last_error is None:
            log.info("{backend} is unreachable: {reason}", backend=backend.describe(),
                     reason=reason)
        backend.healthy = False
        backend.last_error = reason
        self._note_leader()

    def mark_down(self, backend: Backend, reason: str) -> None:
        """A request just failed on ``backend``: avoid it until a later /status answers."""
        backend.generation += 1
        if backend.healthy:
            log.info("{backend} failed a request ({reason}); avoiding it until it answers"
                     " /status again", backend=backend.describe(), reason=reason)
        backend.healthy = False
        backend.last_error = reason
        self._note_leader()
        self._changed()

    def _discover(self, status: dict[str, Any]) -> None:
        """Replicas a replica knows of join the view: peers' addresses and the leader's."""
        known_nodes = {b.node_id for b in self.backends.values() if b.node_id is not None}
        found: list[tuple[Any, Any]] = [
            (peer.get("node_id"), peer.get("http"))
            for peer in status.get("peers") or [] if isinstance(peer, dict)
        ]
        found.append((status.get("leader_id"), status.get("leader_http")))
        for node_id, http in found:
            url = _optional_url(http)
            if url is None or url in self.backends or node_id in known_nodes:
                continue
            self.backends[url] = Backend(url, configured=False)
            log.info("discovered a replica at {url} (node {node_id})", url=url, node_id=node_id)
            self.poll(self.backends[url])

    def _one_address(self, backend: Backend) -> None:
        """A replica known by two addresses (one discovered, named by a peer before the
        replica's own answer told its node id) is one replica: the discovered address goes,
        so that it neither reads twice nor, leading, reads as a follower."""
        for other in list(self.backends.values()):
            if other is backend or other.node_id != backend.node_id:
                continue
            extra = backend if not backend.configured else other if not other.configured else None
            if extra is not None and self.backends.get(extra.url) is extra:
                del self.backends[extra.url]
                log.info("{url} is node {node_id}, known at {kept}: forgotten",
                         url=extra.url, node_id=backend.node_id,
                         kept=(other if extra is backend else backend).url)
                if extra is backend:
                    return

    def _note_leader(self) -> None:
        leader = self.leader()
        seen = (leader.url, (leader.epoch, leader.node_id or 0)) if leader is not None else None
        if seen != self._leader_seen:
            if leader is None:
                log.info("no leader known")
            else:
                log.info("leader is node {node_id} at {url}, epoch {epoch}, seeing {active}"
                         " ACTIVE replicas", node_id=leader.node_id, url=leader.url,
                         epoch=leader.epoch, active=leader.active_view)
            self._leader_seen = seen
        if leader is not None:
            for watcher, old in list(self._leader_watchers.items()):
                if old is not leader:
                    del self._leader_watchers[watcher]
                    watcher.callback(leader)

    def leader_replaced(self, backend: Backend) -> Deferred[Backend]:
        """Fires with the new leader once a replica other than ``backend`` leads."""

        def forget(d: Deferred[Backend]) -> None:
            self._leader_watchers.pop(d, None)

        watcher: Deferred[Backend] = Deferred(forget)
        self._leader_watchers[watcher] = backend
        return watcher

    # choosing

    def leader(self) -> Backend | None:
        """The healthy ACTIVE replica that says it leads: of several, the one whose own
        /status shows the most ACTIVE replicas up (the majority's), then the highest
        (epoch, node_id).

        Two replicas may both claim leadership for a moment (a partition healing, an old
        leader back from SIGSTOP): the lower one steps down as soon as it hears the higher.
        And while a partition lasts, a replica cut off from the others elects itself with a
        higher epoch but lacks the records the majority acknowledged: writes go to the side
        that sees more of the cluster (docs/architecture.md 5.3).
        """
        leaders = [
            b for b in self.backends.values()
            if b.healthy and b.role == LEADER and b.state == ACTIVE and b.node_id is not None
        ]
        return max(leaders, key=lambda b: b.rank, default=None)

    def readers(self) -> list[Backend]:
        """Healthy ACTIVE replicas other than the leader, in a stable order."""
        leader = self.leader()
        return [
            b for url, b in sorted(self.backends.items())
            if b.healthy and b.state == ACTIVE and b is not leader
        ]

    def choose_reader(self, exclude: Collection[str] = ()) -> Deferred[Backend | None]:
        """The next follower in round-robin order whose health is fresh (or freshly checked);
        the leader only when no follower is left; None when no replica is."""
        return Deferred.fromCoroutine(self._choose_reader(exclude))

    def fresh_reader(self, exclude: Collection[str] = ()) -> Backend | None:
        """choose_reader's answer when it needs no health check (the common case), else None."""
        readers = [b for b in self.readers() if b.url not in exclude]
        if not readers:
            return None
        backend = readers[self._turn % len(readers)]
        if not backend.fresh(self._clock.seconds(), self.health_max_age):
            return None
        self._turn += 1
        return backend

    async def _choose_reader(self, exclude: Collection[str]) -> Backend | None:
        readers = [b for b in self.readers() if b.url not in exclude]
        if readers:
            start = self._turn % len(readers)
            self._turn += 1
            for backend in readers[start:] + readers[:start]:
                if await self.ensure_fresh(backend):
                    return backend
        leader = self.leader()
        if leader is not None and leader.url not in exclude and await self.ensure_fresh(leader):
            return leader
        return None

    def leader_within(self, deadline: float) -> Deferred[Backend | None]:
        """The leader, waiting for one (an election) until the clock passes ``deadline``."""
        return Deferred.fromCoroutine(self._leader_within(deadline))

    async def _leader_within(self, deadline: float) -> Backend | None:
        while True:
            leader = self.leader()
            if leader is not None and await self.ensure_fresh(leader):
                return leader
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                return None
            await self._next_change(remaining)

    async def ensure_fresh(self, backend: Backend) -> bool:
        """True if ``backend`` answered /status within health_max_age, or does so now within
        the check timeout; a replica already known to be down is not asked again here."""
        if backend.fresh(self._clock.seconds(), self.health_max_age):
            return True
        if not backend.healthy:
            return False
        d = self.poll(backend).addTimeout(self.check_timeout, self._clock)
        try:
            await d
        except CancelledError:
            raise
        except Exception:
            return False
        return backend.fresh(self._clock.seconds(), self.health_max_age)

    def backend_at(self, url: str) -> Backend:
        """The backend at ``url``, added to the view if a replica just named it."""
        backend = self.backends.get(url)
        if backend is None:
            backend = self.backends[url] = Backend(url, configured=False)
            log.info("discovered a replica at {url} (named as leader)", url=url)
        return backend

    def _next_change(self, timeout: float) -> Deferred[None]:
        """Fires after the next /status answer or failure, or after ``timeout`` seconds."""

        def cancel(d: Deferred[None]) -> None:
            timer = self._waiters.pop(d, None)
            if timer is not None and timer.active():
                timer.cancel()

        waiter: Deferred[None] = Deferred(cancel)
        self._waiters[waiter] = self._clock.callLater(timeout, self._wake, waiter)
        return waiter

    def _wake(self, waiter: Deferred[None]) -> None:
        timer = self._waiters.pop(waiter, None)
        if timer is not None and timer.active():
            timer.cancel()
        waiter.callback(None)

    def _changed(self) -> None:
        for waiter in list(self._waiters):
            self._wake(waiter)

    # reporting

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.seconds()
        leader = self.leader()
        return {
            "leader": None if leader is None else {
                "node_id": leader.node_id, "http": leader.url, "epoch": leader.epoch},
            "readers": [b.url for b in self.readers()],
            "backends": [
                {
                    "http": b.url,
                    "node_id": b.node_id,
                    "role": b.role,
                    "state": b.state,
                    "epoch": b.epoch,
                    "active_view": b.active_view,
                    "healthy": b.healthy,
                    "fresh": b.fresh(now, self.health_max_age),
                    "status_age_ms": None if b.checked_at is None
                    else round((now - b.checked_at) * 1000),
                    "last_error": b.last_error,
                    "configured": b.configured,
                    "polls": b.polls,
                    "poll_failures": b.poll_failures,
                    "forwarded": b.forwarded,
                    "failures": b.failures,
                }
                for b in sorted(self.backends.values(), key=_report_order)
            ],
        }


def _report_order(backend: Backend) -> tuple[bool, int, str]:
    return (backend.node_id is None, backend.node_id or 0, backend.url)


def _identity(status: Any) -> tuple[int, str, str, int]:
    if not isinstance(status, dict):
        raise StatusError("not a JSON object")
    node_id = status.get("node_id")
    if not isinstance(node_id, int) or isinstance(node_id, bool):
        raise StatusError(f"node_id {node_id!r}")
    return node_id, str(status.get("role")), str(status.get("state")), int(
        status.get("epoch") or 0)


def _active_view(status: dict[str, Any]) -> int:
    """ACTIVE replicas a /status shows up: the replica itself and its live peers."""
    peers = status.get("peers")
    up = [p for p in peers if isinstance(p, dict)] if isinstance(peers, list) else []
    return (status.get("state") == ACTIVE) + sum(
        p.get("up") is True and p.get("state") == ACTIVE for p in up)


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_url(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        urls = parse_backends(value)
    except ConfigError:
        return None
    return urls[0] if len(urls) == 1 else None


def _describe(failure: Failure, timeout: float) -> str:
    """Why a poll failed, in words: a poll is cancelled only when it timed out (the Agent
    wraps that cancellation when no answer had begun), and the HTTP clients' other wrappers
    print as lists of Failure reprs (httpfailures.in_words)."""
    if failure.check(defer.TimeoutError) or cancelled(failure):
        return f"TimeoutError: no answer to /status in {timeout:g} s"
    value = failure.value
    text = in_words(failure) or str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


def status_fetcher(agent: IAgent, keys: ClusterKeys | None = None,
                   clock: IReactorTime | None = None) -> StatusFetcher:
    """GET ``<url>/status`` with ``agent`` and parse its JSON (the view adds the timeout);
    signed with the cluster ``keys`` when given (a replica with ``--auth on`` answers an
    unsigned one 401), dated by ``clock``."""

    async def fetch(url: str) -> dict[str, Any]:
        headers = Headers({b"Accept": [b"application/json"]})
        if keys is not None:
            assert clock is not None
            for name, value in sign(keys, b"GET", b"/status", EMPTY_SHA256,
                                    clock.seconds()).items():
                headers.setRawHeaders(name, [value])
        response = await agent.request(b"GET", url.encode() + b"/status", headers)
        body = await read_body(response)
        if response.code != 200:
            raise StatusError(f"/status answered {response.code}")
        value = json.loads(body)
        if not isinstance(value, dict):
            raise StatusError("/status is not a JSON object")
        return value

    return lambda url: Deferred.fromCoroutine(fetch(url))
