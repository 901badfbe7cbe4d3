"""Heartbeat datagrams sealed with the cluster key (docs/architecture.md section 3.1): the
sender's boot id, a counter and its send time before the JSON body, an HMAC-SHA256 after it.

``Sealer`` seals what this replica sends and opens what it receives (the tag is checked
before any byte of the datagram is trusted); ``ReplayGuard`` keeps, per node, the newest boot
and counter accepted, and refuses anything older, or sent too far from our clock's time.
"""
# test-case-name: tests.unit.test_heartbeat

from __future__ import annotations

import os
import struct

import attrs
from twisted.internet.interfaces import IReactorTime

from distpotify.keys import HEARTBEAT, ClusterKeys

MAGIC = b"DPH1"
# magic, boot id, counter, send time in milliseconds since the epoch: all fixed size, so
# the body starts at a fixed offset and nothing in the header needs parsing to check the tag.
HEADER = struct.Struct("!4s16sQQ")
TAG_BYTES = 32
OVERHEAD = HEADER.size + TAG_BYTES
# A datagram sent further than this from our clock's time is refused: it bounds what a
# recorded datagram can do once the receiver restarts and forgets the counters it had seen.
MAX_SKEW = 30.0

FRESH = "fresh"
REPLAYED = "replayed"
STALE = "stale"


class NotSealed(ValueError):
    """Not a sealed heartbeat at all: too short, or not our format."""


class Forged(ValueError):
    """A sealed heartbeat whose tag verifies under none of our keys (forged, altered,
    truncated, or sealed with another cluster's key)."""


@attrs.frozen
class Envelope:
    """A datagram's authenticated header and its body (the heartbeat's JSON)."""

    boot: bytes
    counter: int
    sent: float
    body: bytes


class Sealer:
    """Seals this process's heartbeats (one boot id, a counter from 1) and opens others'."""

    def __init__(self, keys: ClusterKeys, clock: IReactorTime, boot: bytes | None = None) -> None:
        self._keys = keys
        self._clock = clock
        self.boot = boot if boot is not None else os.urandom(16)
        self._counter = 0

    def seal(self, body: bytes) -> bytes:
        self._counter += 1
        sent = max(0, round(self._clock.seconds() * 1000))
        signed = HEADER.pack(MAGIC, self.boot, self._counter, sent) + body
        return signed + self._keys.sign(HEARTBEAT, signed)

    def open(self, datagram: bytes) -> Envelope:
        """The envelope of an authentic datagram; NotSealed or Forged otherwise."""
        if len(datagram) < OVERHEAD or not datagram.startswith(MAGIC):
            raise NotSealed("not a sealed heartbeat")
        signed, tag = datagram[:-TAG_BYTES], datagram[-TAG_BYTES:]
        if not self._keys.verify(HEARTBEAT, signed, tag):
            raise Forged("the heartbeat's tag does not verify")
        _, boot, counter, sent = HEADER.unpack_from(signed)
        return Envelope(boot, counter, sent / 1000, signed[HEADER.size:])


@attrs.define
class _Newest:
    boot: bytes
    counter: int
    sent: float


class ReplayGuard:
    """Per node id, the newest authentic heartbeat accepted: its boot, counter and send time.

    A datagram is fresh if it was sent within MAX_SKEW of our clock's time and is newer than
    that: a higher counter of the same boot, or another boot sent after it (a restart). A
    lower counter, or a boot sent before the newest one, is replayed. Only authentic
    datagrams get here, so the table holds the cluster's nodes and nothing an outsider sent.
    """

    def __init__(self, clock: IReactorTime, max_skew: float = MAX_SKEW) -> None:
        self._clock = clock
        self._max_skew = max_skew
        self._newest: dict[int, _Newest] = {}

    def check(self, node: int, envelope: Envelope) -> str:
        """FRESH (and remembered), REPLAYED or STALE."""
        if abs(envelope.sent - self._clock.seconds()) > self._max_skew:
            return STALE
        newest = self._newest.get(node)
        if newest is not None:
            if envelope.boot == newest.boot:
                if envelope.counter <= newest.counter:
                    return REPLAYED
            elif envelope.sent <= newest.sent:
                return REPLAYED
        self._newest[node] = _Newest(envelope.boot, envelope.counter, envelope.sent)
        return FRESH

    def skew(self, envelope: Envelope) -> float:
        """How far (seconds, signed) the envelope's send time is from our clock's."""
        return envelope.sent - self._clock.seconds()
