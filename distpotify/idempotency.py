"""Idempotency keys (the IETF Idempotency-Key header) and the outcome a keyed write stores.

A key's row and the records its write creates take ids derived from the key (UUIDv5), so two
leaders that apply the same keyed write make the same records, which merge into one. The
row of a UUIDv7 key (the proxy's, keytime.py) keeps the key's time in front of its id, so
such rows are stored in the order they were written (``key_row_ids``).
"""
# test-case-name: tests.unit.test_idempotency

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import IO, Any

import attrs

from distpotify.errors import BadRequest, KeyReused
from distpotify.keytime import RFC_VARIANT, TIME_BITS, VARIANT, VERSION, key_time
from distpotify.model import Version

# Fixed for good: every derived id depends on it, and replicas must derive the same ones.
NAMESPACE = uuid.UUID("5d0b7a5e-6c1f-4f7e-9a57-2f3c8d4b1e90")
MAX_KEY = 255
_BLOCK = 1024 * 1024

_HASH_BITS = 128 - TIME_BITS
_VERSION_8 = 0x8 << 76  # RFC 9562's version 8 (a layout of one's own)
_VERSION_5 = 0x5 << 76  # a name's SHA-1
_NAMESPACE_BYTES = NAMESPACE.bytes


def key_row_ids(text: str) -> tuple[str, str | None]:
    """The id of the row of key ``text`` (scoped: the client's key is its last word), and
    for a UUIDv7 key the UUIDv5 older code gave its row. The id is a UUIDv5 of the key, or,
    for a UUIDv7 key, a UUIDv8 that begins with the key's 48-bit time and goes on with the
    UUIDv5's bits. Rows of such keys are then stored in the order written (their index's new
    entries at its end, as its bucket follows the time too: ``key_row_time``), where a
    random id cost a keyed write a random page of the index."""
    hashed = _uuid5(text)
    sent = key_time(text.rpartition(" ")[2])
    if sent is None:
        return _canonical(hashed), None
    timed = sent << _HASH_BITS | hashed & ((1 << _HASH_BITS) - 1)
    return _canonical((timed & ~(VERSION | VARIANT)) | _VERSION_8 | RFC_VARIANT), _canonical(hashed)


def _uuid5(name: str) -> int:
    """``uuid.uuid5(NAMESPACE, name).int``, without the UUID objects: every keyed write
    derives two or three ids on the leader, which the uuid module made a tenth of the key's
    cost there (tests.unit.test_idempotency checks it against the module)."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()
    return (int.from_bytes(digest[:16]) & ~(VERSION | VARIANT)) | _VERSION_5 | RFC_VARIANT


def _canonical(value: int) -> str:
    """``str(uuid.UUID(int=value))``: 8-4-4-4-12 lowercase hex digits."""
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def key_row_time(row_id: str) -> int | None:
    """The time (Unix milliseconds) that begins a key row's id made from a UUIDv7 key, or
    None for a UUIDv5 one."""
    if len(row_id) != 36 or row_id[14] != "8":
        return None
    try:
        return int(row_id[:8] + row_id[9:13], 16)
    except ValueError:  # not a canonical UUID: replication refuses it (model.valid_key)
        return None


def parse_key(value: bytes) -> str:
    """The key an ``Idempotency-Key`` header carries: a Structured Field string (``"..."``,
    the draft's form) or the bare text many clients send. The header's value, quotes and
    escapes included, is 1-255 visible ASCII characters (as docs/openapi.yaml describes it),
    and so is the key it carries."""
    text = value.decode("latin-1").strip()
    if len(text) > MAX_KEY:  # the value as sent: a quoted key of 254 is 256 characters
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _sf_string(text[1:-1])
    # Printable ASCII is exactly " " to "~".
    if not 0 < len(text) <= MAX_KEY or not (text.isascii() and text.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters")
    return text


def _sf_string(inner: str) -> str:
    """The content of an sf-string (RFC 8941 section 3.3.3): backslash escapes only \\ and "."""
    out, chars = [], iter(inner)
    for c in chars:
        if c == "\\":
            c = next(chars, "")
            if c not in ('"', "\\"):
                raise BadRequest("Idempotency-Key is not a valid string: bad escape")
        elif c == '"':
            raise BadRequest("Idempotency-Key is not a valid string: unescaped quote")
        out.append(c)
    return "".join(out)


def request_digest(method: bytes, uri: bytes, body: IO[bytes] | None) -> str:
    """SHA-256 over the method, the URI (path and query) and the body, read in blocks (a
    worker thread's job for an upload); the body is left at its start."""
    digest = hashlib.sha256()
    for part in (method, uri):
        digest.update(len(part).to_bytes(8, "big") + part)
    if body is not None:
        body.seek(0)
        while block := body.read(_BLOCK):
            digest.update(block)
        body.seek(0)
    return digest.hexdigest()


@attrs.frozen
class IdempotencyKey:
    """A keyed write: the client's key and the digest of its request."""

    text: str
    request: str
    # The key's row in the replicated idempotency table, and for a UUIDv7 key the UUIDv5
    # row older code stored it under (looked up too, so a key sent again across an upgrade
    # is still one write); computed once (a keyed write reads them for its lock, its lookup
    # and its stored row).
    ids: tuple[str, str | None] = attrs.field(init=False, eq=False, repr=False, default=(
        attrs.Factory(lambda self: key_row_ids(self.text), takes_self=True)))

    @property
    def id(self) -> str:
        return self.ids[0]

    def record_id(self) -> str:
        """The id of the record this write creates: the same on every leader that applies
        it, and another for the same key sent with another request."""
        return _canonical(_uuid5(f"{self.text}\n{self.request}"))


@attrs.frozen
class Outcome:
    """What a write answers: status and JSON body (None: no body, a 204) and the version it
    made (the newest one of its ops, or the head if it changed nothing). ``replayed`` when a
    stored outcome is given again."""

    status: int
    body: dict[str, Any] | None = None
    version: Version | None = None
    replayed: bool = False

    def fields(self, key: IdempotencyKey) -> dict[str, Any]:
        """The idempotency row that stores this outcome under ``key``."""
        assert self.version is not None, "an outcome is stored once its version is known"
        return {
            "request": key.request, "status": self.status,
            "body": self.body_text,
            "written": self.version.encode(),
        }

    @functools.cached_property
    def body_text(self) -> str | None:
        """The body as compact JSON: encoded once for both the key row and the answer."""
        return None if self.body is None else json.dumps(self.body, separators=(",", ":"))

    @classmethod
    def stored(cls, key: IdempotencyKey, fields: dict[str, Any]) -> Outcome:
        """The outcome a row stores for ``key``; KeyReused if it was stored for another
        request."""
        if fields.get("request") != key.request:
            raise KeyReused("this Idempotency-Key was used with a different request")
        body = fields.get("body")
        return cls(int(fields["status"]), None if body is None else json.loads(body),
                   Version.decode(str(fields["written"])), replayed=True)
