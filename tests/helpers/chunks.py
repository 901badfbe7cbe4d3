"""Peers for tests of chunk downloads: one whose answers wait for the test, so a download
stays in flight until it is released."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred


class HeldPeer:
    """Answers each chunk download with ``body`` (from the offset asked) only when the test
    fires its Deferred in ``calls``, one per download asked, in order."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls: list[Deferred[None]] = []

    def chunk(self, base: str, song_id: str, idx: int, offset: int, sha256: str,
              write: Callable[[bytes], None]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: write(self.body[offset:]))
        self.calls.append(d)
        return d
