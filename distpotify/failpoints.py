"""Failpoints: a test-only way to make a replica die at a named step of its durable work.

``DISTPOTIFY_FAILPOINTS=snapshot.installed:crash,upload.committed:crash`` is read once at
start-up; with it unset (always, outside tests) hitting a point is one lookup in an empty dict.
"""
# test-case-name: tests.unit.test_failpoints,tests.integration.test_failpoints

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import attrs

from distpotify.options import ConfigError

ENV = "DISTPOTIFY_FAILPOINTS"

# Every point the code hits, in the order a write meets them. A name not listed here stops
# the start-up, so a test cannot silently arm a point that no longer exists.
POINTS = {
    "upload.chunks_written": "an upload's chunks are fsynced temp files, not renamed",
    "upload.chunks_durable": "an upload's chunks are fsynced and renamed, its row not written",
    "upload.committed": "an upload's rows are committed, the client not yet answered",
    "apply.chunks_fetched": "a follower has a pushed batch's chunks, the ops not applied",
    "apply.committed": "a follower applied a pushed batch durably, the leader not answered",
    "push.acknowledged": "the leader has a follower's answer, its cursor not yet stored",
    "snapshot.fetched": "a joiner downloaded a snapshot, not yet installed",
    "snapshot.installed": "a joiner installed a snapshot, no chunk fetched yet",
    "join.chunks_fetched": "a joiner holds every chunk, /sync/done not yet sent",
    "purge.written": "the leader committed a purge watermark, not yet pushed",
    "oplog.compacted": "a replica dropped old ops from its oplog",
}
# What an armed point does: ``crash`` is SIGKILL, the crash no code can intercept.
ACTIONS = ("crash",)


@attrs.frozen
class Failpoints:
    """The armed points, by name; ``hit`` makes the named one act (a no-op when unarmed)."""

    armed: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, text: str) -> Failpoints:
        """``name:action,...`` as DISTPOTIFY_FAILPOINTS holds it; ConfigError if malformed."""
        armed = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, action = item.partition(":")
            if name not in POINTS:
                raise ConfigError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(POINTS)}")
            if action not in ACTIONS:
                raise ConfigError(f"{ENV}: {name} needs an action ({', '.join(ACTIONS)}),"
                                  f" got {action!r}")
            armed[name] = action
        return cls(armed)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Failpoints:
        return cls.parse(environ.get(ENV, ""))

    def hit(self, name: str) -> None:
        """Reached point ``name``: act if it is armed. Safe from any thread."""
        if name in self.armed:
            self._act(name)

    def _act(self, name: str) -> None:
        # Straight to the file descriptor: no buffer that the kill would lose.
        os.write(2, f"distpotify: failpoint {name}: {self.armed[name]}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


NONE = Failpoints()
