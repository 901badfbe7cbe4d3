"""OpenSubsonic API key secrets: each one derived from its key's id under the cluster key, so a
create applied twice (on a leader that died before replicating it and again on the next
one, the proxy's retry under the same Idempotency-Key, whose id derives from the key) makes
the same secret twice and merges into one key, and a replay can answer the secret again
without any replica having stored it.

A secret is HMAC-SHA256 under the key derived for API keys (keys.API_KEY) of the key's id,
base64url: 43 characters, as unguessable as 32 random bytes to anyone without the cluster
key. What is stored is only its SHA-256 (``api_key_hash``). The trade-off
(docs/architecture.md section 2.9): whoever holds the cluster key can make the secret of
every key from its id, where before only the keys' holders knew them. The cluster key gives
its holder every session (the token key) and the whole database (a joiner's snapshot)
already; what changes is that after a leak the keys made before the rotation must be
revoked too (docs/operations.md).
"""
# test-case-name: tests.unit.test_subsonic_credentials

from __future__ import annotations

import base64
import hashlib

from distpotify.keys import API_KEY, ClusterKeys, mac


def api_key_hash(secret: str) -> str:
    """What is stored of an API key: its SHA-256. The secret is a 256-bit MAC, so no guess
    finds one, and a slow password hash (argon2id, 137 ms) would only make every Subsonic
    request that slow; a plain hash also lets the key be found by its hash, in constant
    time, without comparing it against every stored one."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeySecrets:
    """Makes a key's secret under the cluster key in use; ``candidates`` gives it under every
    accepted one (a rotation: a key made before it keeps its secret, found by its hash)."""

    def __init__(self, keys: ClusterKeys) -> None:
        self._accepted = keys.accepted(API_KEY)

    def __repr__(self) -> str:
        return "<ApiKeySecrets>"

    def secret(self, key_id: str) -> str:
        """The secret of the API key ``key_id`` (its record's id), under the key in use."""
        return self.candidates(key_id)[0]

    def candidates(self, key_id: str) -> tuple[str, ...]:
        """The secret ``key_id`` has under each accepted cluster key, the one in use first."""
        return tuple(_text(mac(key, API_KEY + b"\x00" + key_id.encode("ascii")))
                     for key in self._accepted)


def _text(tag: bytes) -> str:
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode("ascii")
