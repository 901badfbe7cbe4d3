"""Who failed to prove the cluster key: failures counted per peer address and kind (shown by
/status and /metrics), and one log line per peer and kind instead of one per message.

Heartbeats, AMP connections and signed HTTP requests all report here (docs/architecture.md
section 3.6). Only addresses and counts are kept: never a key, a tag or a signature.
"""
# test-case-name: tests.unit.test_trust

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

# A forged datagram can claim any source address: past this many, the rest count as "other".
MAX_PEERS = 256
OTHER = "other"

# Each kind of failure, and the log line its first occurrence from a peer gets. The three
# "cluster key mismatch" kinds are what a replica holding another key causes.
MISMATCH = "cluster key mismatch with {peer}: {what}; does it hold this cluster's key file?"
KINDS: dict[str, str] = {
    "heartbeat_forged": MISMATCH.format(
        peer="{peer}", what="its heartbeats do not verify under our key"),
    "heartbeat_replayed": "heartbeat from {peer} replayed (an old counter or an old boot of its"
                          " node); dropped",
    "heartbeat_stale": "heartbeat from {peer} sent {detail} from our clock's time; dropped (are"
                       " both clocks right?)",
    "amp_mismatch": MISMATCH.format(
        peer="{peer}", what="its AMP proof does not verify under our key"),
    "amp_unproven": "AMP command from {peer} before it proved the cluster key; connection closed",
    "http_forged": MISMATCH.format(
        peer="{peer}", what="its request signatures do not verify under our key"),
    "http_unsigned": "unsigned request from {peer} to the cluster's own API; answered 401",
    "http_stale": "signed request from {peer} dated {detail} from our clock's time; answered 401"
                  " (are both clocks right?)",
    "http_replayed": "signed request from {peer} replayed (a nonce seen before); answered 401",
    "http_altered": "request from {peer} whose body changed after it was signed; answered 401",
}


class AuthFailures:
    """The failures of one replica, by peer address (a host) and kind (a key of KINDS)."""

    log = Logger()

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self._logged: set[tuple[str, str]] = set()

    def record(self, peer: str, kind: str, detail: str = "") -> None:
        """One failure of ``kind`` from ``peer``; logged if it is the first of its kind there.

        ``detail`` completes the log line (how far a stale clock is); it must hold no secret.
        """
        template = KINDS[kind]
        if peer not in self._counts and len(self._counts) >= MAX_PEERS:
            peer = OTHER
        kinds = self._counts.setdefault(peer, {})
        kinds[kind] = kinds.get(kind, 0) + 1
        if (peer, kind) not in self._logged:
            self._logged.add((peer, kind))
            self.log.warn(template, peer=peer, detail=detail)

    def count(self, kind: str | None = None) -> int:
        """How many failures were recorded (of ``kind``, or of every kind)."""
        return sum(n for kinds in self._counts.values() for k, n in kinds.items()
                   if kind is None or k == kind)

    def snapshot(self) -> dict[str, Any]:
        """For /status: ``{peer: {kind: count}}``."""
        return {peer: dict(sorted(kinds.items())) for peer, kinds in sorted(self._counts.items())}
