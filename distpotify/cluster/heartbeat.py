"""Heartbeats: the UDP datagram a replica sends each heartbeat_interval (docs/architecture.md 3.1).

The codec of the JSON body (sealed with the cluster key by seal.py), the receiving
DatagramProtocol that drops and counts anything hostile or unauthentic, the sending loop that
never dies (with the cache of unicast peers' resolved names), and the multicast / unicast
listening helpers.
"""
# test-case-name: tests.unit.test_heartbeat

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.defer import TimeoutError as LookupTimedOut
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IListeningPort,
    IMulticastTransport,
    IReactorCore,
    IReactorMulticast,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.cluster.seal import FRESH, OVERHEAD, STALE, Forged, NotSealed, ReplayGuard, Sealer
from distpotify.cluster.trust import AuthFailures
from distpotify.config import ReplicaConfig
from distpotify.model import Version
from distpotify.periodic import Periodic
from distpotify.wire import ROLES, STATES

# The JSON body, and the whole sealed datagram: well under the 1472 bytes a UDP payload may
# have on an Ethernet MTU (1452 over IPv6), so a heartbeat is never fragmented.
MAX_BODY = 1024
MAX_DATAGRAM = MAX_BODY + OVERHEAD
# Version.encode() gives the leader id five digits and the epoch ten; larger values would
# break the string order of versions, so they are not valid on the wire either.
MAX_NODE_ID = 99_999
MAX_EPOCH = 9_999_999_999
# Authentic bodies remembered with what they decode to: a replica's heartbeat says the same
# thing ten times a second until its head, role or state changes, so most are not parsed.
KNOWN_BODIES = 32
# A peer's heartbeat brings ours forward when ours is due within this share of an interval.
IN_STEP = 0.5

Address = tuple[str, int]
# A host name to one IPv4 address, as IReactorCore.resolve does it (without blocking).
Resolve = Callable[[str], "Deferred[str]"]


class MalformedHeartbeat(ValueError):
    """A datagram (or an announcement) that is not a valid heartbeat; the message says why."""


@attrs.frozen
class Heartbeat:
    """One replica's announcement: who it is, what it does, where to reach it."""

    cluster: str
    node: int
    epoch: int
    role: str
    state: str
    http: str
    amp: str
    head: Version


def split_address(text: str) -> Address:
    """``HOST:PORT`` (IPv6 as ``[::1]:9001``) to ``(host, port)``; MalformedHeartbeat if not."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise MalformedHeartbeat(f"not HOST:PORT: {text!r}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise MalformedHeartbeat(f"port out of range in {text!r}")
    return host, number


def format_address(host: str, port: int) -> str:
    """The inverse of split_address: brackets around IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode(heartbeat: Heartbeat) -> bytes:
    """The body: compact JSON; MalformedHeartbeat if it would not fit in MAX_BODY bytes."""
    datagram = json.dumps(
        {
            "cluster": heartbeat.cluster,
            "node": heartbeat.node,
            "epoch": heartbeat.epoch,
            "role": heartbeat.role,
            "state": heartbeat.state,
            "http": heartbeat.http,
            "amp": heartbeat.amp,
            "head": heartbeat.head.encode(),
        },
        separators=(",", ":"),
    ).encode("ascii")
    if len(datagram) > MAX_BODY:
        raise MalformedHeartbeat(f"heartbeat of {len(datagram)} bytes exceeds {MAX_BODY}")
    return datagram


def decode(datagram: bytes) -> Heartbeat:
    """Parse and validate one body; every way it can be wrong raises MalformedHeartbeat.

    Unknown keys are ignored, so a newer replica may add fields without being dropped.
    """
    if len(datagram) > MAX_BODY:
        raise MalformedHeartbeat(f"body of {len(datagram)} bytes exceeds {MAX_BODY}")
    try:
        text = datagram.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedHeartbeat("not UTF-8") from None
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise MalformedHeartbeat(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise MalformedHeartbeat("not a JSON object")
    http = _text(body, "http")
    if not http.startswith(("http://", "https://")):
        raise MalformedHeartbeat(f"http is not an http(s) URL: {http!r}")
    amp = _text(body, "amp")
    split_address(amp)
    head = _text(body, "head")
    try:
        version = Version.decode(head) if head.isascii() else None
    except ValueError:
        version = None
    if version is None:
        raise MalformedHeartbeat(f"head is not a version: {head!r}")
    return Heartbeat(
        cluster=_text(body, "cluster"),
        node=_integer(body, "node", 1, MAX_NODE_ID),
        epoch=_integer(body, "epoch", 0, MAX_EPOCH),
        role=_choice(body, "role", ROLES),
        state=_choice(body, "state", STATES),
        http=http,
        amp=amp,
        head=version,
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise MalformedHeartbeat(f"missing {name}")
    return body[name]


def _text(body: dict[str, Any], name: str) -> str:
    value = _field(body, name)
    if not isinstance(value, str) or not value:
        raise MalformedHeartbeat(f"{name} must be a non-empty string")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = _field(body, name)
    # bool is a subclass of int, and true is not a node id.
    if type(value) is not int or not low <= value <= high:
        raise MalformedHeartbeat(f"{name} must be an integer in {low}..{high}")
    return value


def _choice(body: dict[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = _field(body, name)
    if not isinstance(value, str) or value not in allowed:
        raise MalformedHeartbeat(f"{name} must be one of {sorted(allowed)}")
    return value


class HeartbeatProtocol(DatagramProtocol):
    """Receives heartbeats: hands authentic, fresh, valid ones from other nodes to
    ``on_heartbeat``.

    The seal is checked first (``sealer``), then the body is parsed (or, the same as one
    parsed lately, looked up), then ``guard`` refuses replays. The very datagram this
    protocol sent last (looped back by multicast) is ours without a look at it. Everything
    else is counted in ``counters`` (shown by /status) and dropped; a forged, replayed or
    stale one is also reported to ``failures`` under its source address.
    No datagram can make this raise. A datagram naming our node id from another address goes
    to ``on_duplicate_node``: two processes share an id, which the operator must fix.
    """

    log = Logger()

    def __init__(
        self,
        *,
        cluster: str,
        node_id: int,
        http: str,
        amp: str,
        sealer: Sealer,
        guard: ReplayGuard,
        failures: AuthFailures,
        on_heartbeat: Callable[[Heartbeat], object],
        on_duplicate_node: Callable[[Heartbeat, Address], object],
    ) -> None:
        self._cluster = cluster
        self._node_id = node_id
        self._http = http
        self._amp = amp
        self._sealer = sealer
        self._guard = guard
        self._failures = failures
        self._on_heartbeat = on_heartbeat
        self._on_duplicate_node = on_duplicate_node
        self._duplicates_logged: set[tuple[str, str]] = set()
        self._sent: bytes | None = None  # the last datagram sent
        self._known: dict[bytes, Heartbeat] = {}  # authentic bodies and their heartbeats
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "received",
                "accepted",
                "own",
                "malformed",
                "oversized",
                "forged",
                "replayed",
                "stale",
                "foreign",
                "duplicate_node",
                "errors",
                "sent",
                "send_errors",
            ),
            0,
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.counters["received"] += 1
        try:
            self._received(datagram, addr)
        except Exception:
            self.counters["errors"] += 1
            self.log.failure("heartbeat from {addr} not handled", addr=addr)

    def _received(self, datagram: bytes, addr: Address) -> None:
        if datagram == self._sent:
            # Our own, looped back: only we (or someone replaying it, to the same effect)
            # could send these bytes, which the full check below would call ours too.
            self.counters["own"] += 1
            return
        if len(datagram) > MAX_DATAGRAM:
            self.counters["oversized"] += 1
            return
        try:
            envelope = self._sealer.open(datagram)
        except NotSealed:
            self.counters["malformed"] += 1
            return
        except Forged:
            self.counters["forged"] += 1
            self._failures.record(addr[0], "heartbeat_forged")
            return
        try:
            heartbeat = self._decode(envelope.body)
        except MalformedHeartbeat:
            self.counters["malformed"] += 1
            return
        if heartbeat.cluster != self._cluster:
            self.counters["foreign"] += 1
        elif heartbeat.node != self._node_id:
            verdict = self._guard.check(heartbeat.node, envelope)
            if verdict == FRESH:
                self.counters["accepted"] += 1
                self._on_heartbeat(heartbeat)
            else:
                self.counters[verdict] += 1
                skew = f"{self._guard.skew(envelope):+.1f}s" if verdict == STALE else ""
                self._failures.record(addr[0], f"heartbeat_{verdict}", skew)
        elif (heartbeat.http, heartbeat.amp) == (self._http, self._amp):
            # Our own datagram, looped back by multicast (or listed in --peers).
            self.counters["own"] += 1
        else:
            self.counters["duplicate_node"] += 1
            claimant = (heartbeat.http, heartbeat.amp)
            if claimant not in self._duplicates_logged:
                self._duplicates_logged.add(claimant)
                self.log.critical(
                    "another process announces node id {node_id}: http={http} amp={amp}"
                    " from {addr}; node ids must be unique",
                    node_id=heartbeat.node,
                    http=heartbeat.http,
                    amp=heartbeat.amp,
                    addr=addr,
                )
            self._on_duplicate_node(heartbeat, addr)

    def _decode(self, body: bytes) -> Heartbeat:
        """``decode``, for an authentic body; one seen lately is not parsed again."""
        heartbeat = self._known.get(body)
        if heartbeat is None:
            heartbeat = decode(body)
            if len(self._known) >= KNOWN_BODIES:
                self._known.clear()
            self._known[body] = heartbeat
        return heartbeat

    def send(self, datagram: bytes, address: Address) -> None:
        """Write one datagram; raises if not listening or if the address is unusable."""
        if self.transport is None:
            raise RuntimeError("the heartbeat protocol is not listening")
        cast(IUDPTransport, self.transport).write(datagram, address)
        self._sent = datagram
        self.counters["sent"] += 1


@attrs.define
class _Name:
    """What is known of one peer's host name: its last address and the lookup under way."""

    address: str | None = None
    next_lookup: float = 0.0
    pending: Deferred[str] | None = None
    failing: bool = False


class PeerAddresses:
    """Unicast peers given by host name, as the IP addresses a UDP socket can write to.

    A datagram goes only to an IP address, and a peer's address changes when its container
    is replaced, so each name is looked up in the background, cached, and looked up again
    every ``refresh`` seconds; nothing here waits for an answer. A name that does not
    resolve (yet: a peer that starts after us) is logged once and retried every ``retry``
    seconds, and gets no datagram until it resolves; a name that stops resolving keeps its
    last address, as a DNS hiccup must not silence a live peer. IP literals are used as given.
    """

    log = Logger()

    def __init__(
        self,
        *,
        resolve: Resolve,
        clock: IReactorTime,
        refresh: float = 5.0,
        retry: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._resolve = resolve
        self._clock = clock
        self._refresh = refresh
        self._retry = retry
        self._timeout = timeout
        self._names: dict[str, _Name] = {}
        self._literals: dict[str, bool] = {}  # host -> whether it is an IP address

    def resolved(self, address: Address) -> Address | None:
        """``address`` with its host as an IP address; None while the name is unresolved.

        Starts a lookup when the cached answer is due for a refresh; never waits for it.
        """
        host, port = address
        literal = self._literals.get(host)
        if literal is None:
            literal = self._literals[host] = _is_ip_literal(host)
        if literal:
            return address
        name = self._names.setdefault(host, _Name())
        if name.pending is None and self._clock.seconds() >= name.next_lookup:
            self._look_up(host, name)
        return None if name.address is None else (name.address, port)

    def stop(self) -> None:
        """Abandon the lookups under way (their answers, if any, are ignored)."""
        for name in self._names.values():
            if name.pending is not None:
                name.pending.cancel()

    def _look_up(self, host: str, name: _Name) -> None:
        lookup: Deferred[str] = maybeDeferred(self._resolve, host)
        name.pending = lookup
        lookup.addTimeout(self._timeout, self._clock)
        lookup.addCallbacks(
            self._found, self._not_found, callbackArgs=(host, name), errbackArgs=(host, name)
        )

    def _found(self, address: str, host: str, name: _Name) -> None:
        name.pending = None
        name.next_lookup = self._clock.seconds() + self._refresh
        if not _is_ip_literal(address):
            self._not_found(Failure(DNSLookupError(f"{host} gave {address!r}")), host, name)
            return
        if name.failing or address != name.address:
            previously = "" if name.address in (None, address) else f" (was {name.address})"
            self.log.info(
                "heartbeat peer {host} resolves to {address}{previously}",
                host=host, address=address, previously=previously,
            )
        name.failing = False
        name.address = address

    def _not_found(self, failure: Failure, host: str, name: _Name) -> None:
        name.pending = None
        name.next_lookup = self._clock.seconds() + self._retry
        if failure.check(CancelledError) or name.failing:
            return
        name.failing = True
        reason = (
            f"no answer in {self._timeout}s" if failure.check(LookupTimedOut)
            else failure.getErrorMessage()
        )
        self.log.warn(
            "cannot resolve heartbeat peer {host}: {reason}; {meanwhile}, retrying every"
            " {retry}s", host=host, reason=reason, retry=self._retry,
            meanwhile="nothing is sent to it" if name.address is None
            else f"still sending to {name.address}",
        )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _no_resolver(host: str) -> Deferred[str]:
    return fail(DNSLookupError(f"{host}: no name resolver (give HeartbeatSender one)"))


class HeartbeatSender:
    """Sends ``announcement()``, sealed by ``seal``, to every ``destinations()`` address every
    ``interval`` (one datagram, one counter, for all of them).

    ``peer_beat`` brings the next beat forward to a peer's, when it is nearly due: see there.
    ``beat`` catches and logs everything itself, one failure per destination when it starts
    and when it ends, not ten times a second: a replica that stops heartbeating is declared
    dead by its peers. Destinations given by host name go through PeerAddresses, with
    ``resolve`` (by default the clock's own, when the clock is the reactor).
    """

    log = Logger()

    def __init__(
        self,
        *,
        protocol: HeartbeatProtocol,
        announcement: Callable[[], Heartbeat],
        seal: Callable[[bytes], bytes],
        destinations: Callable[[], Iterable[Address]],
        interval: float,
        clock: IReactorTime,
        resolve: Resolve | None = None,
    ) -> None:
        self._protocol = protocol
        self._announcement = announcement
        self._seal = seal
        self._destinations = destinations
        self._interval = interval
        self._loop = Periodic(self.beat, interval, clock, name="heartbeats", first=0)
        self._failing: set[Address | None] = set()
        self._encoded: tuple[Heartbeat | None, bytes] = (None, b"")  # the last body made
        if resolve is None:
            resolve = (
                cast(IReactorCore, clock).resolve if IReactorCore.providedBy(clock)
                else _no_resolver
            )
        self.addresses = PeerAddresses(resolve=resolve, clock=clock)

    def start(self) -> None:
        if not self._loop.running:
            self._loop.startService()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stopService()
        self.addresses.stop()

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def peer_beat(self) -> None:
        """A peer's heartbeat just arrived: if ours is due within half an interval, it goes
        now, and the next one an interval from now. The replicas' beats fall into step this
        way (the first due sends, the others answer at once, and all count from there), so
        a replica wakes about twice an interval (the first beat, then the answers) instead
        of three times (its own timer and once per peer, at unrelated moments): an idle
        replica's CPU time is mostly those wake-ups. A beat is never later than its
        interval, and at most half an interval early."""
        if self.running:
            self._loop.run_early(self._interval * IN_STEP)

    def changed(self) -> None:
        """The announcement changed in what peers act on (our state, our role): say so now,
        not up to an interval later. A leader deciding whether a follower can hold a write
        (semi-sync, the push) must not see it JOINING after it said ACTIVE to a client."""
        if self.running:
            self.beat()

    def beat(self) -> None:
        """Send one heartbeat to every destination; never raises."""
        try:
            datagram = self._seal(self._body(self._announcement()))
            destinations = [
                resolved for address in self._destinations()
                if (resolved := self.addresses.resolved(address)) is not None
            ]
        except Exception:
            self._failed(None, "cannot build the heartbeat")
            return
        self._recovered(None)
        for address in destinations:
            try:
                self._protocol.send(datagram, address)
            except Exception:
                self._protocol.counters["send_errors"] += 1
                self._failed(address, "cannot send the heartbeat to {address}")
            else:
                self._recovered(address)

    def _body(self, announcement: Heartbeat) -> bytes:
        """``encode``, made again only when the announcement changes (its head, a role)."""
        if announcement != self._encoded[0]:
            self._encoded = (announcement, encode(announcement))
        return self._encoded[1]

    def _failed(self, key: Address | None, message: str) -> None:
        if key not in self._failing:
            self._failing.add(key)
            self.log.failure(message, address=key)

    def _recovered(self, key: Address | None) -> None:
        if key in self._failing:
            self._failing.discard(key)
            self.log.info("heartbeats flow again to {address}", address=key or "all")


def destinations(config: ReplicaConfig) -> tuple[Address, ...]:
    """Where this replica's heartbeats go: the multicast group, or each unicast peer (host
    names as given: HeartbeatSender resolves them)."""
    if config.heartbeat == "unicast":
        return config.peers
    return ((config.multicast_group, config.multicast_port),)


def listen_multicast(
    reactor: IReactorMulticast, config: ReplicaConfig, protocol: HeartbeatProtocol
) -> Deferred[IMulticastTransport]:
    """Join the heartbeat group on --multicast-interface with --multicast-ttl.

    The Deferred fails (and nothing stays bound) when the interface cannot do multicast.
    Loopback stays on so replicas on one host hear each other; our own datagrams come
    back and are counted as ``own``.
    """
    port = reactor.listenMulticast(config.multicast_port, protocol, listenMultiple=True)
    port.setTTL(config.multicast_ttl)
    port.setLoopbackMode(True)

    def joined(_: object) -> IMulticastTransport:
        return cast(IMulticastTransport, port)

    def failed(failure: Any) -> Any:
        port.stopListening()
        return failure

    d: Deferred[Any] = port.setOutgoingInterface(config.multicast_interface)
    d.addCallback(lambda _: port.joinGroup(config.multicast_group, config.multicast_interface))
    d.addCallback(joined)
    d.addErrback(failed)
    return d


def listen_unicast(
    reactor: IReactorUDP, config: ReplicaConfig, protocol: HeartbeatProtocol
) -> IListeningPort:
    """Listen for unicast heartbeats on the heartbeat port (--multicast-port) of --host."""
    # IReactorUDP declares maxPacketSize without its default (8192) of the reactors.
    port: IListeningPort = cast(Any, reactor).listenUDP(
        config.multicast_port, protocol, interface=config.host
    )
    return port

