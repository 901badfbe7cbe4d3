"""AMP connections prove the cluster key both ways before any command: commands without proof,
with a wrong key, replayed or reflected proofs, and the rotation, over in-memory connections."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient

from distpotify.cluster.ampauth import (
    HANDSHAKE_DEADLINE,
    Challenge,
    Handshake,
    KeyMismatch,
    Prove,
    Unproven,
)
from distpotify.cluster.bully import AmpPeers, BullyProtocol, Coordinator, Election, Join
from distpotify.cluster.membership import Membership
from distpotify.cluster.trust import AuthFailures
from distpotify.keys import ClusterKeys

OURS = ClusterKeys.generate()
NEW = ClusterKeys.generate()


class Responder:
    """The election and the join desk behind the listener: what reached them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def election_requested(self, node_id: int, epoch: int) -> bool:
        self.calls.append(("election", node_id, epoch))
        return True

    def coordinator_received(self, node_id: int, epoch: int, http: str) -> None:
        self.calls.append(("coordinator", node_id, epoch))

    def join_requested(self, node_id: int, http: str, amp: str, head: str) -> dict[str, Any]:
        self.calls.append(("join", node_id))
        return {"leader_id": 3, "epoch": 1, "snapshot_path": "/sync/snapshot"}


class Link:
    """A listener (BullyProtocol with ``listener_keys``) and a client connected to it."""

    def __init__(self, listener_keys: ClusterKeys = OURS) -> None:
        self.clock = Clock()
        self.responder = Responder()
        self.listener_failures = AuthFailures()
        listener = Handshake(listener_keys, self.listener_failures, self.clock, 1.0)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: BullyProtocol(self.responder, self.responder, handshake=listener),
            amp.AMP, serverTransportFactory=lambda protocol: FakeTransport(
                protocol, isServer=True, peerAddress=IPv4Address("TCP", "10.0.0.9", 40000)))
        self.client_failures = AuthFailures()

    def prove(self, keys: ClusterKeys = OURS) -> Deferred[None]:
        handshake = Handshake(keys, self.client_failures, self.clock, 1.0)
        d = Deferred.fromCoroutine(handshake.prove(self.client, "10.0.0.9"))
        self.pump.flush()
        return d

    def call(self, command: type[amp.Command], **arguments: Any) -> Any:
        """The answer to ``command``, or its Failure (caught before AMP's own errback, which
        logs an error nobody waits for and swallows it)."""
        results: list[Any] = []
        self.client.callRemote(command, **arguments).addBoth(results.append)
        self.pump.flush()
        assert results, f"no answer to {command.__name__}"
        return results[0]

    @property
    def closed(self) -> bool:
        transport = self.server.transport
        return transport is None or bool(transport.disconnecting)  # type: ignore[attr-defined]


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def coordinator(link: Link) -> Any:
    return link.call(Coordinator, node_id=3, epoch=99, http="http://10.0.0.9:8003")


COMMANDS = {
    "Election": (Election, {"node_id": 1, "epoch": 99}),
    "Coordinator": (Coordinator, {"node_id": 3, "epoch": 99, "http": "http://10.0.0.9:8003"}),
    "Join": (Join, {"node_id": 4, "http": "http://x:1", "amp": "x:2", "head": "v"}),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_before_the_proof_is_refused_and_the_connection_closed(name: str) -> None:
    link = Link()
    command, arguments = COMMANDS[name]

    result = link.call(command, **arguments)

    assert isinstance(result, Failure) and result.check(Unproven)
    assert link.closed
    assert link.responder.calls == []
    assert link.listener_failures.snapshot() == {"10.0.0.9": {"amp_unproven": 1}}


def test_a_proven_connection_carries_every_command() -> None:
    link = Link()

    assert outcome(link.prove()) is None
    election = link.call(Election, node_id=1, epoch=5)
    coordinated = coordinator(link)

    assert election == {"alive": True} and coordinated == {}
    assert link.responder.calls == [("election", 1, 5), ("coordinator", 3, 99)]
    assert not link.closed


def test_a_connector_with_another_key_is_refused_by_both_sides() -> None:
    link = Link()
    with capturedLogs() as events:
        result = outcome(link.prove(ClusterKeys.generate()))
        after = coordinator(link)

    # The connector finds the listener's proof wrong and says so once; it never sends its own.
    assert isinstance(result, Failure) and result.check(KeyMismatch)
    assert link.client_failures.snapshot() == {"10.0.0.9": {"amp_mismatch": 1}}
    assert isinstance(after, Failure) and after.check(Unproven)
    assert link.responder.calls == []
    assert [formatEvent(e) for e in events if "mismatch" in formatEvent(e)] == [
        "cluster key mismatch with 10.0.0.9: its AMP proof does not verify under our key;"
        " does it hold this cluster's key file?"]


def test_a_listener_with_another_key_gets_no_command() -> None:
    link = Link(listener_keys=ClusterKeys.generate())

    result = outcome(link.prove())

    assert isinstance(result, Failure) and result.check(KeyMismatch)
    assert link.responder.calls == []


def test_a_wrong_proof_from_the_connector_is_fatal() -> None:
    link = Link()
    answer = link.call(Challenge, nonce=b"n" * 32)

    refused = link.call(Prove, proof=ClusterKeys.generate().sign(b"distpotify amp v1",
                                                                          b"anything"))

    assert set(answer) == {"nonce", "proof"}
    assert isinstance(refused, Failure) and refused.check(KeyMismatch)
    assert link.closed
    assert link.listener_failures.snapshot() == {"10.0.0.9": {"amp_mismatch": 1}}


def test_a_proof_recorded_on_one_connection_is_refused_on_another() -> None:
    first = Link()
    connector_nonce = b"c" * 32
    answer = first.call(Challenge, nonce=connector_nonce)
    recorded = OURS.sign(b"distpotify amp v1",
                         b"connector" + connector_nonce + answer["nonce"])
    assert first.call(Prove, proof=recorded) == {}

    second = Link()
    second.call(Challenge, nonce=connector_nonce)  # the same nonce, a new listener's
    replayed = second.call(Prove, proof=recorded)

    assert isinstance(replayed, Failure) and replayed.check(KeyMismatch)
    assert second.closed


def test_the_listeners_own_proof_cannot_be_reflected_back_as_the_connectors() -> None:
    link = Link()
    answer = link.call(Challenge, nonce=b"c" * 32)

    reflected = link.call(Prove, proof=answer["proof"])

    assert isinstance(reflected, Failure) and reflected.check(KeyMismatch)


@pytest.mark.parametrize("nonce", [b"", b"short", b"x" * 33])
def test_a_challenge_without_a_32_byte_nonce_is_fatal(nonce: bytes) -> None:
    link = Link()
    result = link.call(Challenge, nonce=nonce)
    assert isinstance(result, Failure) and result.check(Unproven)
    assert link.closed


def test_a_second_challenge_or_a_prove_before_one_is_fatal() -> None:
    early = Link()
    twice = Link()
    twice.call(Challenge, nonce=b"c" * 32)

    before = early.call(Prove, proof=b"p" * 32)
    again = twice.call(Challenge, nonce=b"d" * 32)

    assert before.check(Unproven) and early.closed
    assert again.check(Unproven) and twice.closed


def test_a_connection_that_never_proves_is_closed_at_the_deadline() -> None:
    link = Link()
    link.clock.advance(HANDSHAKE_DEADLINE - 0.01)
    assert not link.closed
    link.clock.advance(0.01)
    assert link.closed


def test_a_proven_connection_outlives_the_deadline() -> None:
    link = Link()
    outcome(link.prove())
    link.clock.advance(HANDSHAKE_DEADLINE * 2)
    assert not link.closed


# Who may meet whom during a rotation: add the new key second everywhere, then make it first
# everywhere, then drop the old one; one replica at a time, so neighbouring steps meet.
STEPS = ["old", "old+new", "new+old", "new"]
MEETINGS = [(a, b) for i in range(3) for a, b in ((STEPS[i], STEPS[i + 1]),
                                                   (STEPS[i + 1], STEPS[i]))]


@pytest.mark.parametrize(("connector", "listener"), MEETINGS)
def test_every_step_of_a_rolling_rotation_keeps_connections_proven(
    connector: str, listener: str
) -> None:
    old_secret, new_secret = OURS._secrets[0], NEW._secrets[0]
    named = {"old": (old_secret,), "new": (new_secret,), "old+new": (old_secret, new_secret),
             "new+old": (new_secret, old_secret)}
    link = Link(listener_keys=ClusterKeys(named[listener]))

    assert outcome(link.prove(ClusterKeys(named[connector]))) is None
    assert coordinator(link) == {}


def test_a_listener_that_accepts_only_a_key_the_connector_does_not_sign_with() -> None:
    # A rotation done out of order: the connector accepts the listener's new key but still
    # signs with the old one, which the listener no longer accepts.
    link = Link(listener_keys=NEW)
    both = ClusterKeys((OURS._secrets[0], NEW._secrets[0]))

    result = outcome(link.prove(both))

    assert isinstance(result, Failure) and result.check(KeyMismatch)
    assert link.client_failures.count("amp_mismatch") == 1
    assert link.listener_failures.count("amp_mismatch") == 1


def test_amp_peers_prove_each_connection_once_and_time_out_a_silent_listener() -> None:
    clock = Clock()
    membership = Membership(node_id=1, clock=clock, failure_timeout=1000)
    responder = Responder()
    pumps: list[IOPump] = []

    def connect(host: str, port: int) -> Deferred[Any]:
        client, _, pump = connectedServerAndClient(
            lambda: BullyProtocol(responder, handshake=Handshake(OURS, AuthFailures(), clock, 1)),
            amp.AMP)
        pumps.append(pump)
        return defer.succeed(client)

    peers = AmpPeers(node_id=1, http="http://h:1", membership=membership, clock=clock,
                     connect=connect, timeout=1.0,
                     handshake=Handshake(OURS, AuthFailures(), clock, 1.0))
    first = peers.call("10.0.0.3:9003", Election, node_id=1, epoch=1)
    pumps[0].flush()
    second = peers.call("10.0.0.3:9003", Election, node_id=1, epoch=2)
    pumps[0].flush()
    silent = peers.call("10.0.0.4:9004", Election, node_id=1, epoch=3)  # never pumped
    clock.advance(1.0)

    assert outcome(first) == outcome(second) == {"alive": True}
    assert len(pumps) == 2
    assert outcome(silent).check(defer.TimeoutError)
    assert responder.calls == [("election", 1, 1), ("election", 1, 2)]
