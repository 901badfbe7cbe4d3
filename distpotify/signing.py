"""Replica-to-replica HTTP requests signed with the cluster key (docs/architecture.md 3.6):
the four headers a signed request carries, how a replica makes them, and how one checks them.

The signature is HMAC-SHA256, under the request key, of the method, the request target (path
and query, exactly as on the request line), the time, a random nonce and the body's SHA-256.
A request is accepted within WINDOW seconds of our clock's time and once: its nonce is kept
(in a bounded cache) for as long as the request could be replayed.
"""
# test-case-name: tests.unit.test_signing

from __future__ import annotations

import hashlib
import heapq
import re
import secrets
from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from distpotify.keys import REQUEST, ClusterKeys

TIME = b"X-Distpotify-Time"
NONCE = b"X-Distpotify-Nonce"
CONTENT_SHA256 = b"X-Distpotify-Content-SHA256"
SIGNATURE = b"X-Distpotify-Signature"
HEADERS = (TIME, NONCE, CONTENT_SHA256, SIGNATURE)

WINDOW = 60.0
MAX_NONCES = 100_000  # at 60 s each, far above what replicas send; past it, see NonceCache
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_TIME = re.compile(rb"[0-9]{1,12}")
_NONCE = re.compile(rb"[0-9a-f]{32}")
_HEX64 = re.compile(rb"[0-9a-f]{64}")


class Refused(Exception):
    """A request that does not prove the cluster key. ``kind`` is AuthFailures' (without the
    ``http_`` prefix), ``detail`` completes its log line; the message is for the 401 body."""

    def __init__(self, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def file_sha256(content: IO[bytes]) -> str:
    """The SHA-256 of a request's spooled body; the file is left at its start."""
    digest = hashlib.sha256()
    content.seek(0)
    while block := content.read(1 << 20):
        digest.update(block)
    content.seek(0)
    return digest.hexdigest()


def _signed_text(method: bytes, target: bytes, time: bytes, nonce: bytes, sha256: bytes
                 ) -> bytes:
    return b"\n".join((method.upper(), target, time, nonce, sha256))


def sign(keys: ClusterKeys, method: bytes, target: bytes, body_hash: str, now: float
         ) -> dict[bytes, bytes]:
    """The headers that sign a request (``body_hash``: its body's SHA-256, hex) made at
    ``now``, with a fresh nonce."""
    time = str(int(now)).encode()
    nonce = secrets.token_hex(16).encode()
    sha256 = body_hash.encode()
    tag = keys.sign(REQUEST, _signed_text(method, target, time, nonce, sha256))
    return {TIME: time, NONCE: nonce, CONTENT_SHA256: sha256, SIGNATURE: tag.hex().encode()}


class NonceCache:
    """The nonces of accepted requests, until they leave the window, at most ``capacity``.

    When full, the oldest is dropped and ``floor`` rises to its time: a request dated at or
    before the floor could be a replay we no longer remember, so it is refused as one.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[int, bytes]] = []
        self.floor = -1

    def add(self, nonce: bytes, time: int, expired_before: float) -> bool:
        """Remember ``nonce`` of a request dated ``time``; False if seen (or not rememberable)."""
        while self._by_time and self._by_time[0][0] < expired_before:
            self._seen.discard(heapq.heappop(self._by_time)[1])
        if nonce in self._seen or time <= self.floor:
            return False
        if len(self._by_time) >= self._capacity:
            oldest, dropped = heapq.heappop(self._by_time)
            self._seen.discard(dropped)
            self.floor = max(self.floor, oldest)
        self._seen.add(nonce)
        heapq.heappush(self._by_time, (time, nonce))
        return True

    def __len__(self) -> int:
        return len(self._seen)


class RequestVerifier:
    """Checks signed requests against ``keys`` on ``clock``: within ``window`` seconds, and
    each nonce once."""

    def __init__(self, keys: ClusterKeys, clock: IReactorTime, window: float = WINDOW,
                 max_nonces: int = MAX_NONCES) -> None:
        self._keys = keys
        self._clock = clock
        self._window = window
        self.nonces = NonceCache(max_nonces)

    def check(self, method: bytes, target: bytes, headers: Headers) -> str:
        """The body SHA-256 (hex) the request was signed with, once its time, signature and
        nonce are good; Refused otherwise. Cheap checks first: the body is not hashed until
        the signature is known to be ours (``check_body``)."""
        values = [headers.getRawHeaders(name, []) for name in HEADERS]
        if not any(values):
            raise Refused("unsigned", "this is the cluster's own API: requests must be signed"
                                      " with the cluster key")
        if any(len(value) != 1 for value in values):
            raise Refused("unsigned", "a signed request carries each signature header once")
        time, nonce, sha256, signature = (value[0] for value in values)
        if not (_TIME.fullmatch(time) and _NONCE.fullmatch(nonce) and _HEX64.fullmatch(sha256)
                and _HEX64.fullmatch(signature)):
            raise Refused("unsigned", "malformed signature headers")
        now = self._clock.seconds()
        skew = int(time) - now
        if abs(skew) > self._window:
            raise Refused("stale", f"the request is dated {skew:+.0f} s from this replica's"
                                   f" clock; the window is {self._window:g} s", f"{skew:+.0f}s")
        tag = bytes.fromhex(signature.decode("ascii"))
        if not self._keys.verify(REQUEST, _signed_text(method, target, time, nonce, sha256), tag):
            raise Refused("forged", "the signature does not verify under this cluster's key")
        if not self.nonces.add(nonce, int(time), now - self._window):
            raise Refused("replayed", "this request was accepted before")
        return sha256.decode("ascii")

    def check_body(self, claimed: str, actual: str) -> None:
        """Refused unless the body hashes to what was signed."""
        if claimed != actual:
            raise Refused("altered", "the body is not the one that was signed")
