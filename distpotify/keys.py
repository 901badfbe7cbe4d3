"""The cluster key: read from its file (one key, or two during a rotation), and one key per
purpose derived from each with HKDF-SHA256, for the MACs every replica makes and checks.

Shared with the proxy (user tokens, issue 17), so it imports nothing from distpotify. A purpose
is a label; ``ClusterKeys.signing(purpose)`` is the key to sign with (derived from the first
key of the file) and ``ClusterKeys.accepted(purpose)`` every key a signature may verify under
(derived from each key, the signing one first). ``sign`` and ``verify`` are HMAC-SHA256 with
them. docs/architecture.md section 3.6 tells what each purpose protects.
"""
# test-case-name: tests.unit.test_keys

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# One label per purpose: a key derived for one can never verify a MAC made for another.
HEARTBEAT = b"distpotify heartbeat v1"
AMP = b"distpotify amp v1"
REQUEST = b"distpotify request v1"
TOKEN = b"distpotify token v1"
SUBSONIC_BOX = b"distpotify subsonic-box v1"
API_KEY = b"distpotify api-key v1"
PURPOSES = (HEARTBEAT, AMP, REQUEST, TOKEN, SUBSONIC_BOX, API_KEY)
# A short public name for a key, shown in /status so operators can compare replicas' keys
# during a rotation; one-way, and derived apart from every purpose's key.
_KEY_ID = b"distpotify key id v1"

MIN_BYTES = 32
MAX_KEYS = 2  # the key in use, and during a rotation the other one
MAX_FILE_BYTES = 64 * 1024
KEYGEN = "distpotify-keygen"
# Fewer distinct bytes than this in 32 or more is not random: a placeholder ("0000...").
_MIN_DISTINCT = 16
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message is one line naming the problem and the fix."""


def derive(secret: bytes, purpose: bytes, length: int = 32) -> bytes:
    """The key for ``purpose`` derived from one cluster key (HKDF-SHA256, no salt: the cluster
    key is uniformly random already)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(secret)


def mac(key: bytes, data: bytes) -> bytes:
    # One call into OpenSSL, where hmac.new builds an HMAC object in Python first: every
    # heartbeat sent and received is sealed or checked.
    return hmac.digest(key, data, "sha256")


@attrs.frozen(repr=False)
class ClusterKeys:
    """One or two cluster keys and the keys derived from them; never shows a key.

    Build it with ``load`` (a key file), ``parse`` (a key file's text) or ``generate``.
    """

    _secrets: tuple[bytes, ...]
    source: str = attrs.field(default="(generated)", eq=False)
    _derived: dict[bytes, tuple[bytes, ...]] = attrs.field(init=False, eq=False)
    key_ids: tuple[str, ...] = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self._secrets) <= MAX_KEYS:
            raise ValueError(f"one or two cluster keys, not {len(self._secrets)}")
        if any(len(secret) < MIN_BYTES for secret in self._secrets):
            raise ValueError(f"a cluster key has at least {MIN_BYTES} bytes")
        derived = {p: tuple(derive(s, p) for s in self._secrets) for p in PURPOSES}
        object.__setattr__(self, "_derived", derived)
        ids = tuple(derive(s, _KEY_ID, 4).hex() for s in self._secrets)
        object.__setattr__(self, "key_ids", ids)

    def __repr__(self) -> str:
        return f"<ClusterKeys {', '.join(self.key_ids)} from {self.source}>"

    @classmethod
    def generate(cls) -> ClusterKeys:
        """A fresh random key that no other replica holds: it trusts nobody."""
        return cls((secrets.token_bytes(MIN_BYTES),))

    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> ClusterKeys:
        """The keys of a key file's text (read from ``path``, if given); KeyFileError says
        what is wrong with it."""
        source = "the key file" if path is None else f"cluster key file {path}"
        target = "cluster.key" if path is None else str(path)
        found = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(_decode_line(line, f"{source}, line {number}", target))
        if not found:
            raise KeyFileError(f"{source} holds no key; {_fix(target)}")
        if len(found) > MAX_KEYS:
            raise KeyFileError(
                f"{source} holds {len(found)} keys; keep at most {MAX_KEYS}: the key in use"
                " first, and during a rotation one other")
        return cls(tuple(found), source)

    @classmethod
    def load(cls, path: Path) -> ClusterKeys:
        """The keys in the file at ``path``; KeyFileError when it cannot be read or used."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise KeyFileError(
                f"cannot read cluster key file {path}: {e.strerror or e}; {_fix(str(path))}"
            ) from None
        if len(data) > MAX_FILE_BYTES:
            raise KeyFileError(f"cluster key file {path} is larger than {MAX_FILE_BYTES} bytes:"
                               " not a key file")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"cluster key file {path} is not text (hex or base64 lines);"
                               f" {_fix(str(path))}") from None
        return cls.parse(text, path)

    def signing(self, purpose: bytes) -> bytes:
        """The key to sign with for ``purpose`` (from the first key of the file)."""
        return self._derived[purpose][0]

    def accepted(self, purpose: bytes) -> tuple[bytes, ...]:
        """Every key a signature for ``purpose`` may verify under, the signing key first."""
        return self._derived[purpose]

    def sign(self, purpose: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the signing key for ``purpose`` (32 bytes)."""
        return mac(self.signing(purpose), data)

    def verify(self, purpose: bytes, data: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is the HMAC of ``data`` under any accepted key for ``purpose``."""
        return any(hmac.compare_digest(mac(key, data), tag) for key in self.accepted(purpose))


def new_key() -> str:
    """A new cluster key as a key file line: 32 random bytes in base64."""
    return base64.b64encode(secrets.token_bytes(MIN_BYTES)).decode("ascii")


def _decode_line(line: str, where: str, target: str) -> bytes:
    if _HEX.fullmatch(line):
        secret = bytes.fromhex(line)
    elif _BASE64.fullmatch(line):
        standard = line.replace("-", "+").replace("_", "/")
        try:
            secret = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{where} is neither hex nor base64; {_fix(target)}") from None
    else:
        raise KeyFileError(f"{where} is neither hex nor base64; {_fix(target)}")
    if len(secret) < MIN_BYTES:
        raise KeyFileError(f"{where} holds a key of {len(secret)} bytes; a cluster key is at"
                           f" least {MIN_BYTES} random bytes; {_fix(target)}")
    if len(set(secret)) < _MIN_DISTINCT:
        raise KeyFileError(f"{where} holds a key that is not random; {_fix(target)}")
    return secret


def _fix(target: str) -> str:
    return f"make a key with `{KEYGEN} > {target}`"
