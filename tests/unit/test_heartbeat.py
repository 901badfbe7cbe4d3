"""Heartbeat codec, the receiving protocol against hostile, forged and replayed datagrams, the
sender loop and its cache of resolved peer names, and the multicast / unicast listening
helpers, all without a network."""

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
    MAX_BODY,
    MAX_DATAGRAM,
    MAX_EPOCH,
    MAX_NODE_ID,
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
from distpotify.cluster.seal import OVERHEAD, ReplayGuard, Sealer
from distpotify.cluster.trust import AuthFailures
from distpotify.config import ReplicaConfig
from distpotify.keys import ClusterKeys
from distpotify.model import Version

CLUSTER = "test-cluster"
GROUP = ("239.255.77.77", 7946)
KEYS = ClusterKeys.generate()
# A UDP payload that an Ethernet MTU carries unfragmented over IPv6 (1500 - 40 - 8).
MTU_PAYLOAD = 1452


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
    """A listening HeartbeatProtocol for node 1 and what reached its callbacks; ``peer``
    seals like another replica of the cluster (node 2's process) does."""

    def __init__(self, clock: Clock | None = None, sealer: Sealer | None = None) -> None:
        self.clock = clock or Clock()
        self.heard: list[Heartbeat] = []
        self.duplicates: list[tuple[Heartbeat, Any]] = []
        self.failures = AuthFailures()
        self.protocol = HeartbeatProtocol(
            cluster=CLUSTER,
            node_id=1,
            http="http://127.0.0.1:8001",
            amp="127.0.0.1:9001",
            sealer=sealer or Sealer(KEYS, self.clock),
            guard=ReplayGuard(self.clock),
            failures=self.failures,
            on_heartbeat=self.heard.append,
            on_duplicate_node=lambda hb, addr: self.duplicates.append((hb, addr)),
        )
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        self.peer = Sealer(KEYS, self.clock)

    def receive(self, data: bytes) -> None:
        """A datagram exactly as given."""
        self.protocol.datagramReceived(data, ("127.0.0.1", 7946))

    def receive_body(self, body: bytes) -> None:
        """A body sealed by ``peer``, as a replica of the cluster sends it."""
        self.receive(self.peer.seal(body))


def opened(datagram: bytes) -> Heartbeat:
    return decode(Sealer(KEYS, Clock()).open(datagram).body)


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


def test_the_largest_legal_heartbeat_stays_well_under_one_mtu() -> None:
    name = ".".join(["h" * 63] * 3) + "." + "d" * 61  # a 253-character host name
    largest = heartbeat(
        cluster="c" * 64, node=MAX_NODE_ID, epoch=MAX_EPOCH, role="candidate", state="JOINING",
        http=f"https://{name}:65535", amp=f"{name}:65535",
        head=Version(MAX_EPOCH, MAX_NODE_ID, 999_999_999_999),
    )

    sealed = Sealer(KEYS, Clock()).seal(encode(largest))

    assert len(sealed) <= MAX_DATAGRAM == MAX_BODY + OVERHEAD
    assert MAX_DATAGRAM <= MTU_PAYLOAD - 300


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
    receiver.receive_body(encode(heartbeat()))
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


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_body_sealed_with_the_cluster_key_is_still_dropped(data: bytes) -> None:
    receiver = Receiver()
    receiver.receive_body(data)
    counters = receiver.protocol.counters
    assert receiver.heard == []
    assert counters["malformed"] + counters["oversized"] == 1
    assert counters["errors"] == 0


# -- authenticity: forged, truncated, altered and replayed datagrams


def test_a_datagram_sealed_with_another_key_is_forged_and_reported_once() -> None:
    receiver = Receiver()
    outsider = Sealer(ClusterKeys.generate(), receiver.clock)
    with capturedLogs() as events:
        for _ in range(3):
            receiver.receive(outsider.seal(encode(heartbeat(role="leader", epoch=99))))

    assert receiver.heard == []
    assert receiver.protocol.counters["forged"] == 3
    assert receiver.failures.snapshot() == {"127.0.0.1": {"heartbeat_forged": 3}}
    lines = [e["log_format"] for e in events if "cluster key mismatch" in e["log_format"]]
    assert len(lines) == 1


def test_an_unsealed_heartbeat_of_the_old_format_is_malformed() -> None:
    receiver = Receiver()
    receiver.receive(encode(heartbeat()))
    assert receiver.heard == []
    assert receiver.protocol.counters["malformed"] == 1


@pytest.mark.parametrize("cut", [1, 7, 32, 33, MAX_BODY])
def test_a_truncated_datagram_is_dropped(cut: int) -> None:
    receiver = Receiver()
    sealed = receiver.peer.seal(encode(heartbeat()))
    receiver.receive(sealed[:-cut])
    counters = receiver.protocol.counters
    assert receiver.heard == []
    assert counters["forged"] + counters["malformed"] == 1


def test_every_altered_byte_makes_the_datagram_forged() -> None:
    receiver = Receiver()
    sealed = receiver.peer.seal(encode(heartbeat()))
    # Past the 4-byte magic (changing which makes it "not ours": malformed).
    for index in range(4, len(sealed)):
        altered = bytearray(sealed)
        altered[index] ^= 0x01
        receiver.receive(bytes(altered))
    assert receiver.heard == []
    assert receiver.protocol.counters["forged"] == len(sealed) - 4


def test_a_body_moved_to_another_envelope_is_forged() -> None:
    receiver = Receiver()
    honest = receiver.peer.seal(encode(heartbeat()))
    other = receiver.peer.seal(encode(heartbeat(role="leader", epoch=99)))
    receiver.receive(honest[:36] + other[36:])
    assert receiver.protocol.counters["forged"] == 1


def test_the_same_datagram_twice_is_a_replay() -> None:
    receiver = Receiver()
    sealed = receiver.peer.seal(encode(heartbeat()))
    receiver.receive(sealed)
    receiver.receive(sealed)
    assert receiver.heard == [heartbeat()]
    assert receiver.protocol.counters["replayed"] == 1
    assert receiver.failures.snapshot() == {"127.0.0.1": {"heartbeat_replayed": 1}}


def test_an_older_counter_of_the_same_boot_is_a_replay() -> None:
    receiver = Receiver()
    old = receiver.peer.seal(encode(heartbeat(role="leader", epoch=7)))
    new = receiver.peer.seal(encode(heartbeat()))
    receiver.receive(new)
    receiver.receive(old)
    assert receiver.heard == [heartbeat()]
    assert receiver.protocol.counters["replayed"] == 1


def test_a_restarted_node_is_heard_and_its_previous_boot_is_a_replay() -> None:
    receiver = Receiver()
    before = receiver.peer.seal(encode(heartbeat(role="leader", epoch=7)))
    receiver.receive(before)
    receiver.clock.advance(2)
    restarted = Sealer(KEYS, receiver.clock)
    receiver.receive(restarted.seal(encode(heartbeat())))
    receiver.receive(before)  # recorded before the restart, sent again
    receiver.receive(receiver.peer.seal(encode(heartbeat(role="leader", epoch=7))))

    assert receiver.heard == [heartbeat(role="leader", epoch=7), heartbeat()]
    assert receiver.protocol.counters["replayed"] == 2


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_a_datagram_sent_too_far_from_our_time_is_stale(skew: float) -> None:
    receiver = Receiver()
    receiver.clock.advance(1000)
    elsewhere = Clock()
    elsewhere.advance(1000 + skew)
    sender = Sealer(KEYS, elsewhere)
    with capturedLogs() as events:
        receiver.receive(sender.seal(encode(heartbeat())))
    assert receiver.heard == []
    assert receiver.protocol.counters["stale"] == 1
    assert any(f"{skew:+.1f}s" in str(e.get("detail")) for e in events)


def test_a_datagram_delayed_within_the_window_is_accepted() -> None:
    receiver = Receiver()
    sealed = receiver.peer.seal(encode(heartbeat()))
    receiver.clock.advance(29)
    receiver.receive(sealed)
    assert receiver.heard == [heartbeat()]


def test_oversized_datagram_is_counted_apart_from_malformed_ones() -> None:
    receiver = Receiver()
    receiver.receive(b" " * (MAX_DATAGRAM + 1))
    assert receiver.protocol.counters["oversized"] == 1
    assert receiver.protocol.counters["malformed"] == 0


def test_heartbeat_from_another_cluster_is_counted_and_ignored() -> None:
    receiver = Receiver()
    receiver.receive_body(encode(heartbeat(cluster="someone-else")))
    assert receiver.heard == []
    assert receiver.protocol.counters["foreign"] == 1


def test_own_looped_back_heartbeat_is_ignored() -> None:
    receiver = Receiver()
    receiver.receive_body(
        encode(heartbeat(node=1, http="http://127.0.0.1:8001", amp="127.0.0.1:9001")))
    assert receiver.heard == []
    assert receiver.duplicates == []
    assert receiver.protocol.counters["own"] == 1


class CountingSealer(Sealer):
    opened = 0

    def open(self, datagram: bytes) -> Any:
        self.opened += 1
        return super().open(datagram)


def test_the_datagram_we_sent_last_looped_back_is_ours_unopened() -> None:
    sealer = CountingSealer(KEYS, Clock())
    receiver = Receiver(sealer=sealer)
    ours = sealer.seal(encode(heartbeat(node=1, http="http://127.0.0.1:8001",
                                        amp="127.0.0.1:9001")))
    receiver.protocol.send(ours, GROUP)

    receiver.receive(ours)
    receiver.receive(ours)

    assert receiver.protocol.counters["own"] == 2 and sealer.opened == 0
    assert receiver.heard == [] and receiver.duplicates == []


def test_a_body_heard_before_is_not_parsed_again_but_still_sealed_and_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer's heartbeat says the same thing ten times a second: parsed once, while each
    datagram's seal and counter are checked as ever."""
    receiver = Receiver()
    parsed = []
    monkeypatch.setattr("distpotify.cluster.heartbeat.decode",
                        lambda body: parsed.append(body) or decode(body))
    body = encode(heartbeat())
    first = receiver.peer.seal(body)

    receiver.receive(first)
    receiver.receive_body(body)
    receiver.receive(first)  # a replay of the first: the same body, refused all the same
    receiver.receive(Sealer(ClusterKeys.generate(), receiver.clock).seal(body))  # forged
    receiver.receive_body(encode(heartbeat(head=Version(4, 3, 18))))

    assert receiver.heard == [heartbeat(), heartbeat(), heartbeat(head=Version(4, 3, 18))]
    assert len(parsed) == 2
    counters = receiver.protocol.counters
    assert counters["replayed"] == 1 and counters["forged"] == 1 and counters["accepted"] == 3


def test_another_process_with_our_node_id_is_reported_as_duplicate() -> None:
    receiver = Receiver()
    intruder = heartbeat(node=1, http="http://10.0.0.9:8001", amp="10.0.0.9:9001")
    with capturedLogs() as events:
        receiver.receive_body(encode(intruder))
        receiver.receive_body(encode(intruder))
    assert [hb for hb, _ in receiver.duplicates] == [intruder, intruder]
    assert receiver.heard == []
    assert receiver.protocol.counters["duplicate_node"] == 2
    assert sum("node ids must be unique" in event["log_format"] for event in events) == 1


def test_failing_callback_is_counted_and_does_not_escape() -> None:
    receiver = Receiver()
    receiver.protocol._on_heartbeat = lambda hb: 1 / 0
    receiver.receive_body(encode(heartbeat()))
    assert receiver.protocol.counters["errors"] == 1


# -- sending


class Sender:
    def __init__(
        self, targets: tuple[tuple[str, int], ...] = (GROUP,), resolve: Any = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.receiver = Receiver()
        self.announce: Any = heartbeat
        self.sealer = Sealer(KEYS, self.clock)
        self.sender = HeartbeatSender(
            protocol=self.receiver.protocol,
            announcement=lambda: self.announce(),
            seal=self.sealer.seal,
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
    assert [(opened(data), addr) for data, addr in sender.written] == [(heartbeat(), GROUP)]
    sender.clock.advance(0.1)
    sender.clock.advance(0.1)
    assert len(sender.written) == 3
    assert sender.receiver.protocol.counters["sent"] == 3


def test_each_beat_is_one_sealed_datagram_with_the_next_counter_for_every_peer() -> None:
    peers = (("10.0.0.2", 7946), ("10.0.0.3", 7946))
    sender = Sender(targets=peers)
    sender.sender.start()
    sender.clock.advance(0.1)
    opener = Sealer(KEYS, Clock())
    envelopes = [opener.open(data) for data, _ in sender.written]
    assert [e.counter for e in envelopes] == [1, 1, 2, 2]
    assert {e.boot for e in envelopes} == {sender.sealer.boot}
    assert envelopes[2].sent == pytest.approx(0.1)


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


def sent_times(sender: Sender) -> list[float]:
    opener = Sealer(KEYS, Clock())
    return [opener.open(data).sent for data, _ in sender.written]


def run_until(clock: Clock, end: float) -> None:
    """Advance ``clock`` from one delayed call to the next (each at its exact time) to ``end``."""
    while True:
        due = min((call.getTime() for call in clock.getDelayedCalls()), default=end)
        if due > end:
            clock.advance(end - clock.seconds())
            return
        clock.advance(due - clock.seconds())


def test_a_peer_beat_brings_a_nearly_due_beat_forward_and_the_next_counts_from_it() -> None:
    sender = Sender()
    sender.sender.start()
    sender.clock.advance(0.06)

    sender.sender.peer_beat()  # ours was due in 0.04 s: within half an interval
    run_until(sender.clock, 0.3)

    assert sent_times(sender) == pytest.approx([0.0, 0.06, 0.16, 0.26])


def test_a_peer_beat_long_before_ours_is_due_changes_nothing() -> None:
    sender = Sender()
    sender.sender.start()
    sender.clock.advance(0.04)

    sender.sender.peer_beat()  # ours is due in 0.06 s
    run_until(sender.clock, 0.25)

    assert sent_times(sender) == pytest.approx([0.0, 0.1, 0.2])


def test_two_replicas_fall_into_step_and_each_still_beats_once_an_interval() -> None:
    first = Sender()
    second = Sender(clock=first.clock)
    for me, peer in ((first, second), (second, first)):
        send = me.receiver.protocol.send

        def delivered(data: bytes, address: Any, send: Any = send, peer: Sender = peer) -> None:
            send(data, address)
            peer.sender.peer_beat()  # the peer hears it at once (the wiring of ClusterNode)

        me.receiver.protocol.send = delivered  # type: ignore[method-assign,assignment]
    first.sender.start()
    first.clock.advance(0.03)
    second.sender.start()  # its first beat at 0.03, the next due at 0.13: out of step

    run_until(first.clock, 1.0)

    # At 0.1 the second's beat, due 0.03 s later, goes with the first's; from then on both
    # beat together, once an interval each.
    assert sent_times(first) == pytest.approx([0.1 * n for n in range(11)])
    assert sent_times(second) == pytest.approx([0.03] + [0.1 * n for n in range(1, 11)])


def test_the_body_is_encoded_again_only_when_the_announcement_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = Sender()
    encoded = []
    monkeypatch.setattr("distpotify.cluster.heartbeat.encode",
                        lambda hb: encoded.append(hb) or encode(hb))
    sender.sender.start()
    sender.clock.pump([0.1] * 4)
    sender.announce = lambda: heartbeat(head=Version(4, 3, 18))
    sender.clock.pump([0.1] * 4)

    assert encoded == [heartbeat(), heartbeat(head=Version(4, 3, 18))]
    assert [opened(data) for data, _ in sender.written] == [heartbeat()] * 5 + [
        heartbeat(head=Version(4, 3, 18))] * 4
    assert len({data for data, _ in sender.written}) == 9  # each sealed anew


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
        protocol=receiver.protocol, announcement=heartbeat, seal=receiver.peer.seal,
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
