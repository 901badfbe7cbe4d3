"""Heartbeat codec, the receiving protocol against hostile datagrams, the sender loop and its
cache of resolved peer names, and the multicast / unicast listening helpers, all without a
network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface import implementer

from distpotify.cluster.heartbeat import (
    MAX_DATAGRAM,
    Heartbeat,
    HeartbeatProtocol,
    HeartbeatSender,
    MalformedHeartbeat,
    PeerAddresses,
    decode,
    destinations,
    encode,
    format_address,
    listen_multicast,
    listen_unicast,
    split_address,
)
from distpotify.config import ReplicaConfig
from distpotify.model import Version

CLUSTER = "test-cluster"
GROUP = ("239.255.77.77", 7946)


def heartbeat(**changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "cluster": CLUSTER,
        "node": 2,
        "epoch": 4,
        "role": "follower",
        "state": "ACTIVE",
        "http": "http://127.0.0.1:8002",
        "amp": "127.0.0.1:9002",
        "head": Version(4, 3, 17),
    }
    fields.update(changes)
    return Heartbeat(**fields)


def datagram(**changes: Any) -> bytes:
    """A valid datagram's JSON with some fields replaced (or removed, with ...)."""
    body: dict[str, Any] = json.loads(encode(heartbeat()))
    for name, value in changes.items():
        if value is ...:
            del body[name]
        else:
            body[name] = value
    return json.dumps(body).encode()


class FakeDatagramTransport:
    def __init__(self, refuse: set[tuple[str, int]] | None = None) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.refuse = refuse or set()

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr in self.refuse:
            raise OSError("network is unreachable")
        self.written.append((data, addr))


class Receiver:
    """A listening HeartbeatProtocol for node 1 and what reached its callbacks."""

    def __init__(self) -> None:
        self.heard: list[Heartbeat] = []
        self.duplicates: list[tuple[Heartbeat, Any]] = []
        self.protocol = HeartbeatProtocol(
            cluster=CLUSTER,
            node_id=1,
            http="http://127.0.0.1:8001",
            amp="127.0.0.1:9001",
            on_heartbeat=self.heard.append,
            on_duplicate_node=lambda hb, addr: self.duplicates.append((hb, addr)),
        )
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]

    def receive(self, data: bytes) -> None:
        self.protocol.datagramReceived(data, ("127.0.0.1", 7946))


# -- codec


def test_heartbeat_round_trips_through_encode_and_decode() -> None:
    original = heartbeat(role="leader", epoch=9, head=Version(9, 2, 123456))
    assert decode(encode(original)) == original


def test_encoded_heartbeat_is_compact_json_with_the_design_fields() -> None:
    data = encode(heartbeat())
    assert b" " not in data
    assert set(json.loads(data)) == {
        "cluster", "node", "epoch", "role", "state", "http", "amp", "head",
    }
    assert json.loads(data)["head"] == "0000000004-00003-000000000017"


def test_decode_ignores_unknown_fields_from_newer_replicas() -> None:
    assert decode(datagram(extra={"anything": 1})) == heartbeat()


def test_encode_refuses_a_heartbeat_larger_than_a_datagram() -> None:
    with pytest.raises(MalformedHeartbeat):
        encode(heartbeat(http="http://" + "h" * MAX_DATAGRAM))


HOSTILE = {
    "truncated": encode(heartbeat())[:-7],
    "empty": b"",
    "huge": b'{"cluster":"' + b"x" * 5000 + b'"}',
    "not_utf8": b'{"cluster":"\xff\xfe"}',
    "not_json": b"hello, is this the leader?",
    "json_array": b"[1, 2, 3]",
    "json_string": b'"heartbeat"',
    "nan_epoch": datagram().replace(b'"epoch": 4', b'"epoch": NaN'),
    "duplicate_key": datagram()[:-1] + b', "node": 3}',
    "deep_nesting": b"[" * 600 + b"]" * 400,
    "missing_node": datagram(node=...),
    "node_as_text": datagram(node="2"),
    "node_as_bool": datagram(node=True),
    "node_zero": datagram(node=0),
    "node_too_large": datagram(node=100_000),
    "epoch_negative": datagram(epoch=-1),
    "epoch_float": datagram(epoch=4.0),
    "epoch_null": datagram(epoch=None),
    "role_unknown": datagram(role="king"),
    "role_not_text": datagram(role=["leader"]),
    "state_lowercase": datagram(state="active"),
    "cluster_empty": datagram(cluster=""),
    "cluster_number": datagram(cluster=7),
    "http_not_url": datagram(http="ftp://x"),
    "amp_without_port": datagram(amp="127.0.0.1"),
    "amp_port_out_of_range": datagram(amp="127.0.0.1:70000"),
    "head_not_version": datagram(head="latest"),
    "head_unicode_digits": datagram(head="\u0661" * 10 + "-00003-000000000017"),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_decode_rejects_hostile_datagrams_with_one_exception_type(data: bytes) -> None:
    with pytest.raises(MalformedHeartbeat):
        decode(data)


def test_split_and_format_address_handle_ipv6() -> None:
    assert split_address("[::1]:9001") == ("::1", 9001)
    assert format_address("::1", 9001) == "[::1]:9001"
    assert split_address(format_address("10.0.0.2", 9002)) == ("10.0.0.2", 9002)


# -- receiving


def test_valid_heartbeat_from_another_node_reaches_the_callback() -> None:
    receiver = Receiver()
    receiver.receive(encode(heartbeat()))
    assert receiver.heard == [heartbeat()]
    assert receiver.protocol.counters["accepted"] == 1


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_datagram_is_counted_and_dropped_without_raising(data: bytes) -> None:
    receiver = Receiver()
    receiver.receive(data)
    counters = receiver.protocol.counters
    assert receiver.heard == []
    assert counters["malformed"] + counters["oversized"] == 1
    assert counters["errors"] == 0


def test_oversized_datagram_is_counted_apart_from_malformed_ones() -> None:
    receiver = Receiver()
    receiver.receive(b" " * (MAX_DATAGRAM + 1))
    assert receiver.protocol.counters["oversized"] == 1
    assert receiver.protocol.counters["malformed"] == 0


def test_heartbeat_from_another_cluster_is_counted_and_ignored() -> None:
    receiver = Receiver()
    receiver.receive(encode(heartbeat(cluster="someone-else")))
    assert receiver.heard == []
    assert receiver.protocol.counters["foreign"] == 1


def test_own_looped_back_heartbeat_is_ignored() -> None:
    receiver = Receiver()
    receiver.receive(encode(heartbeat(node=1, http="http://127.0.0.1:8001", amp="127.0.0.1:9001")))
    assert receiver.heard == []
    assert receiver.duplicates == []
    assert receiver.protocol.counters["own"] == 1


def test_another_process_with_our_node_id_is_reported_as_duplicate() -> None:
    receiver = Receiver()
    intruder = heartbeat(node=1, http="http://10.0.0.9:8001", amp="10.0.0.9:9001")
    with capturedLogs() as events:
        receiver.receive(encode(intruder))
        receiver.receive(encode(intruder))
    assert [hb for hb, _ in receiver.duplicates] == [intruder, intruder]
    assert receiver.heard == []
    assert receiver.protocol.counters["duplicate_node"] == 2
    assert sum("node ids must be unique" in event["log_format"] for event in events) == 1


def test_failing_callback_is_counted_and_does_not_escape() -> None:
    receiver = Receiver()
    receiver.protocol._on_heartbeat = lambda hb: 1 / 0
    receiver.receive(encode(heartbeat()))
    assert receiver.protocol.counters["errors"] == 1


# -- sending


class Sender:
    def __init__(
        self, targets: tuple[tuple[str, int], ...] = (GROUP,), resolve: Any = None
    ) -> None:
        self.clock = Clock()
        self.receiver = Receiver()
        self.announce: Any = heartbeat
        self.sender = HeartbeatSender(
            protocol=self.receiver.protocol,
            announcement=lambda: self.announce(),
            destinations=lambda: targets,
            interval=0.1,
            clock=self.clock,
            resolve=resolve,
        )

    @property
    def written(self) -> list[tuple[bytes, tuple[str, int]]]:
        return self.receiver.transport.written


def test_sender_sends_at_once_and_every_interval() -> None:
    sender = Sender()
    sender.sender.start()
    assert sender.written == [(encode(heartbeat()), GROUP)]
    sender.clock.advance(0.1)
    sender.clock.advance(0.1)
    assert len(sender.written) == 3
    assert sender.receiver.protocol.counters["sent"] == 3


def test_sender_loop_survives_an_exception_in_the_announcement() -> None:
    sender = Sender()
    calls = []

    def flaky() -> Heartbeat:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("status not ready")
        return heartbeat()

    sender.announce = flaky
    sender.sender.start()
    sender.clock.advance(0.1)
    sender.clock.advance(0.1)
    assert sender.sender.running
    assert len(calls) == 3
    assert len(sender.written) == 2


def test_sender_keeps_sending_to_other_peers_when_one_fails() -> None:
    bad, good = ("10.0.0.2", 7946), ("10.0.0.3", 7946)
    sender = Sender(targets=(bad, good))
    sender.receiver.transport.refuse.add(bad)
    with capturedLogs() as events:
        sender.sender.start()
        for _ in range(5):
            sender.clock.advance(0.1)
    assert [addr for _, addr in sender.written] == [good] * 6
    assert sender.sender.running
    assert sender.receiver.protocol.counters["send_errors"] == 6
    assert sum(event.get("log_failure") is not None for event in events) == 1


def test_sender_stops_when_asked() -> None:
    sender = Sender()
    sender.sender.start()
    sender.sender.stop()
    sender.clock.advance(1)
    assert len(sender.written) == 1
    assert sender.clock.getDelayedCalls() == []


# -- listening


def config(**changes: Any) -> ReplicaConfig:
    return ReplicaConfig(node_id=1, data_dir=Path("/nonexistent"), **changes)


@attrs.define
class FakeMulticastPort:
    join_result: Deferred[None]
    calls: list[tuple[Any, ...]] = attrs.field(factory=list)

    def setTTL(self, ttl: int) -> None:
        self.calls.append(("setTTL", ttl))

    def setLoopbackMode(self, mode: bool) -> None:
        self.calls.append(("setLoopbackMode", mode))

    def setOutgoingInterface(self, addr: str) -> Deferred[int]:
        self.calls.append(("setOutgoingInterface", addr))
        return succeed(1)

    def joinGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        self.calls.append(("joinGroup", addr, interface))
        return self.join_result

    def stopListening(self) -> None:
        self.calls.append(("stopListening",))


class FakeMulticastReactor:
    def __init__(self, join_result: Deferred[None]) -> None:
        self.port = FakeMulticastPort(join_result)
        self.listened: list[tuple[Any, ...]] = []

    def listenMulticast(self, port: int, protocol: Any, listenMultiple: bool = False) -> Any:
        self.listened.append((port, protocol, listenMultiple))
        return self.port


def test_listen_multicast_joins_the_group_on_the_configured_interface_and_ttl() -> None:
    reactor = FakeMulticastReactor(succeed(None))
    protocol = Receiver().protocol
    cfg = config(multicast_interface="10.1.0.5", multicast_ttl=1, multicast_port=7999)
    d = listen_multicast(reactor, cfg, protocol)  # type: ignore[arg-type]
    ports: list[Any] = []
    d.addCallback(ports.append)
    assert ports == [reactor.port]
    assert reactor.listened == [(7999, protocol, True)]
    assert set(reactor.port.calls) == {
        ("setTTL", 1),
        ("setLoopbackMode", True),
        ("setOutgoingInterface", "10.1.0.5"),
        ("joinGroup", "239.255.77.77", "10.1.0.5"),
    }


def test_listen_multicast_unbinds_and_fails_when_the_group_cannot_be_joined() -> None:
    reactor = FakeMulticastReactor(fail(OSError("no multicast on this interface")))
    d = listen_multicast(reactor, config(), Receiver().protocol)  # type: ignore[arg-type]
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures[0].check(OSError)
    assert ("stopListening",) in reactor.port.calls


def test_listen_unicast_binds_the_heartbeat_port_on_the_host() -> None:
    class FakeUDPReactor:
        def listenUDP(self, port: int, protocol: Any, interface: str = "") -> str:
            self.args = (port, protocol, interface)
            return "port"

    reactor = FakeUDPReactor()
    protocol = Receiver().protocol
    cfg = config(host="10.1.0.5", multicast_port=7999)
    assert listen_unicast(reactor, cfg, protocol) == "port"  # type: ignore[arg-type]
    assert reactor.args == (7999, protocol, "10.1.0.5")


def test_destinations_are_the_group_or_every_unicast_peer() -> None:
    assert destinations(config()) == (GROUP,)
    peers = (("10.0.0.2", 7946), ("10.0.0.3", 7946))
    assert destinations(config(heartbeat="unicast", peers=peers)) == peers


def test_sender_logs_when_a_failing_destination_recovers() -> None:
    peer = ("10.0.0.2", 7946)
    sender = Sender(targets=(peer,))
    sender.receiver.transport.refuse.add(peer)
    with capturedLogs() as events:
        sender.sender.start()
        sender.clock.advance(0.1)
        sender.receiver.transport.refuse.clear()
        sender.clock.advance(0.1)
        sender.clock.advance(0.1)
    assert [addr for _, addr in sender.written] == [peer, peer]
    assert sum("flow again" in (event.get("log_format") or "") for event in events) == 1


# -- unicast peers given by name


class FakeResolver:
    """Answers from ``names`` (at once, or never for names in ``silent``); counts lookups."""

    def __init__(self, **names: str) -> None:
        self.names = {name.replace("_", "-"): address for name, address in names.items()}
        self.silent: set[str] = set()
        self.lookups: list[str] = []
        self.unanswered: list[Deferred[str]] = []

    def __call__(self, host: str) -> Deferred[str]:
        self.lookups.append(host)
        if host in self.silent:
            d: Deferred[str] = Deferred()
            self.unanswered.append(d)
            return d
        if host in self.names:
            return succeed(self.names[host])
        return fail(DNSLookupError(f"{host} not found"))


def beats(sender: Sender, seconds: float) -> None:
    for _ in range(round(seconds / 0.1)):
        sender.clock.advance(0.1)


def warnings_about(events: list[Any], host: str) -> int:
    return sum(
        "cannot resolve" in (event.get("log_format") or "") and event.get("host") == host
        for event in events
    )


def test_peer_names_are_resolved_and_datagrams_go_to_their_addresses() -> None:
    resolver = FakeResolver(backend2="10.0.0.2", backend3="10.0.0.3")
    sender = Sender(targets=(("backend2", 7946), ("backend3", 7947)), resolve=resolver)
    sender.sender.start()
    assert [addr for _, addr in sender.written] == [("10.0.0.2", 7946), ("10.0.0.3", 7947)]


def test_ip_literals_are_never_looked_up() -> None:
    resolver = FakeResolver()
    sender = Sender(targets=(("10.0.0.2", 7946), ("::1", 7946)), resolve=resolver)
    sender.sender.start()
    beats(sender, 1)
    assert resolver.lookups == []
    assert {addr for _, addr in sender.written} == {("10.0.0.2", 7946), ("::1", 7946)}


def test_resolved_names_are_cached_between_refreshes() -> None:
    resolver = FakeResolver(backend2="10.0.0.2")
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    sender.sender.start()
    beats(sender, 4.9)
    assert resolver.lookups == ["backend2"]
    assert len(sender.written) == 50


def test_a_replaced_peer_is_found_at_its_new_address_after_a_refresh() -> None:
    resolver = FakeResolver(backend2="10.0.0.2")
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        resolver.names["backend2"] = "10.0.0.9"
        beats(sender, 5.1)
    addresses = [addr for _, addr in sender.written]
    assert addresses[0] == ("10.0.0.2", 7946)
    assert addresses[-1] == ("10.0.0.9", 7946)
    assert resolver.lookups == ["backend2", "backend2"]
    assert any(event.get("previously") == " (was 10.0.0.2)" for event in events)


def test_a_peer_that_does_not_resolve_yet_is_retried_and_logged_once() -> None:
    resolver = FakeResolver(backend3="10.0.0.3")
    sender = Sender(targets=(("backend2", 7946), ("backend3", 7946)), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        beats(sender, 3.3)
    assert {addr for _, addr in sender.written} == {("10.0.0.3", 7946)}
    # about once a second (33 beats), and one lookup for backend3 within its refresh
    assert 3 <= resolver.lookups.count("backend2") <= 4
    assert resolver.lookups.count("backend3") == 1
    assert warnings_about(events, "backend2") == 1
    assert sender.sender.running


def test_a_peer_that_starts_later_gets_heartbeats_once_its_name_resolves() -> None:
    resolver = FakeResolver()
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        beats(sender, 2)
        resolver.names["backend2"] = "10.0.0.2"
        beats(sender, 1.05)
    assert sender.written and {addr for _, addr in sender.written} == {("10.0.0.2", 7946)}
    assert sum(event.get("address") == "10.0.0.2" and "resolves to" in event["log_format"]
               for event in events) == 1


def test_a_name_that_stops_resolving_keeps_its_last_address() -> None:
    resolver = FakeResolver(backend2="10.0.0.2")
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        del resolver.names["backend2"]
        beats(sender, 8)
    assert len(sender.written) == 81
    assert {addr for _, addr in sender.written} == {("10.0.0.2", 7946)}
    assert warnings_about(events, "backend2") == 1
    assert any(event.get("meanwhile") == "still sending to 10.0.0.2" for event in events)


def test_a_slow_lookup_never_delays_the_other_peers() -> None:
    resolver = FakeResolver(backend3="10.0.0.3")
    resolver.silent.add("backend2")
    sender = Sender(targets=(("backend2", 7946), ("backend3", 7946)), resolve=resolver)
    sender.sender.start()
    beats(sender, 1)
    assert [addr for _, addr in sender.written] == [("10.0.0.3", 7946)] * 11
    assert resolver.lookups.count("backend2") == 1  # one lookup at a time per name

    resolver.unanswered[0].callback("10.0.0.2")
    sender.clock.advance(0.1)
    assert ("10.0.0.2", 7946) in [addr for _, addr in sender.written[-2:]]


def test_a_lookup_that_never_answers_times_out_and_is_retried() -> None:
    resolver = FakeResolver()
    resolver.silent.add("backend2")
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        beats(sender, 10)
        assert resolver.lookups == ["backend2"]
        beats(sender, 1.2)
    assert resolver.lookups == ["backend2", "backend2"]
    assert [event["reason"] for event in events if "reason" in event] == ["no answer in 10.0s"]


def test_a_resolver_that_raises_does_not_stop_the_sender() -> None:
    def broken(host: str) -> Deferred[str]:
        raise RuntimeError("resolver exploded")

    sender = Sender(targets=(("backend2", 7946), ("10.0.0.3", 7946)), resolve=broken)
    with capturedLogs() as events:
        sender.sender.start()
        beats(sender, 2)
    assert sender.sender.running
    assert [addr for _, addr in sender.written] == [("10.0.0.3", 7946)] * 21
    assert warnings_about(events, "backend2") == 1


def test_stopping_the_sender_abandons_lookups_silently() -> None:
    resolver = FakeResolver()
    resolver.silent.add("backend2")
    sender = Sender(targets=(("backend2", 7946),), resolve=resolver)
    with capturedLogs() as events:
        sender.sender.start()
        sender.sender.stop()
    assert sender.clock.getDelayedCalls() == []
    assert resolver.unanswered[0].called
    assert warnings_about(events, "backend2") == 0


def test_sender_resolves_with_the_reactor_when_it_is_given_one() -> None:
    @implementer(IReactorCore)
    class ResolvingClock(Clock):
        def resolve(self, name: str, timeout: Any = (1, 3, 11, 45)) -> Deferred[str]:
            return succeed({"backend2": "10.0.0.2"}[name])

    receiver = Receiver()
    sender = HeartbeatSender(
        protocol=receiver.protocol, announcement=heartbeat,
        destinations=lambda: [("backend2", 7946)], interval=0.1, clock=ResolvingClock(),
    )
    sender.start()
    assert [addr for _, addr in receiver.transport.written] == [("10.0.0.2", 7946)]


def test_without_a_resolver_names_are_reported_not_fatal() -> None:
    sender = Sender(targets=(("backend2", 7946), GROUP))
    with capturedLogs() as events:
        sender.sender.start()
        beats(sender, 1)
    assert {addr for _, addr in sender.written} == {GROUP}
    assert warnings_about(events, "backend2") == 1


def test_an_answer_that_is_not_an_address_is_a_failed_lookup() -> None:
    clock = Clock()
    addresses = PeerAddresses(resolve=lambda host: succeed("not-an-ip"), clock=clock)
    assert addresses.resolved(("backend2", 7946)) is None
    clock.advance(1)
    assert addresses.resolved(("backend2", 7946)) is None
