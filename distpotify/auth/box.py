"""The Subsonic password box: a user's password sealed with AES-GCM under a key derived from
the cluster key (keys.SUBSONIC_BOX), so any replica can check Subsonic token auth
(``t = md5(password + s)``), which needs the password itself.

The trade-off (docs/architecture.md, "Per-user state and Subsonic credentials"): whoever holds
a copy of the database and the cluster key can open every box, as with Navidrome's. That is
why ``--subsonic-token-auth off`` stores no box and opens none.
"""
# test-case-name: tests.unit.test_subsonic_credentials

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from distpotify.keys import SUBSONIC_BOX, ClusterKeys

# The format of a box's text: "v1:" and base64url(nonce || ciphertext || tag).
_PREFIX = "v1:"
_NONCE_BYTES = 12  # 96 bits: AES-GCM's own size, random per seal
# A password is at most 1024 characters (auth/passwords.py), 4 KiB of UTF-8; a larger box is
# not one of ours.
MAX_BOX = 8192


def _associated(user_id: str) -> bytes:
    """What a box is bound to: one user's box copied onto another account does not open."""
    return SUBSONIC_BOX + b"\x00" + user_id.encode("ascii", "replace")


class PasswordBox:
    """Seals with the key derived from the cluster key in use, opens under every accepted one
    (a rotation: a box sealed before it still opens; ``sealed_current`` tells which to seal
    again)."""

    def __init__(self, keys: ClusterKeys) -> None:
        self._sealing = AESGCM(keys.signing(SUBSONIC_BOX))
        self._opening = tuple(AESGCM(key) for key in keys.accepted(SUBSONIC_BOX))

    def __repr__(self) -> str:
        return "<PasswordBox>"

    def seal(self, user_id: str, password: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._sealing.encrypt(nonce, password.encode("utf-8"), _associated(user_id))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, user_id: str, box: str | None) -> str | None:
        """The password in ``box``; None when there is none, or it does not open (another
        key, another user's box, altered, not a box)."""
        found = self._open(user_id, box)
        return None if found is None else found[0]

    def sealed_current(self, user_id: str, box: str | None) -> bool:
        """Whether ``box`` opens under the key in use (else a login seals the password again)."""
        found = self._open(user_id, box)
        return found is not None and found[1] == 0

    def _open(self, user_id: str, box: str | None) -> tuple[str, int] | None:
        if not isinstance(box, str) or not box.startswith(_PREFIX) or len(box) > MAX_BOX:
            return None
        try:
            raw = base64.urlsafe_b64decode(box[len(_PREFIX):].encode("ascii"))
        except (binascii.Error, ValueError):
            return None
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        if len(nonce) != _NONCE_BYTES:
            return None
        for index, cipher in enumerate(self._opening):
            try:
                plain = cipher.decrypt(nonce, sealed, _associated(user_id))
            except (InvalidTag, ValueError):
                continue
            try:
                return plain.decode("utf-8"), index
            except UnicodeDecodeError:
                return None
        return None
