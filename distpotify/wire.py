"""The strings of the contract between Distpotify's processes, and the one JSON answer writer.

Replicas and the proxy both read these (heartbeats, /status, headers), so each is written once
here; this module imports nothing from distpotify, which keeps the proxy off replica internals.
"""
# test-case-name: tests.unit.test_wire

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest

# A replica's role in the election, as heartbeats and /status carry it.
LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
ROLES = frozenset({LEADER, FOLLOWER, CANDIDATE})

# A replica's state: JOINING until it holds the library (bootstrap), then ACTIVE.
JOINING = "JOINING"
ACTIVE = "ACTIVE"
STATES = frozenset({JOINING, ACTIVE})

# Headers one process sets and another reads.
SERVED_BY = b"X-Served-By"  # the node id of the replica that answered
SNAPSHOT_VERSION = b"X-Snapshot-Version"  # the version a /sync/snapshot holds
# Exactly once and read-your-writes (docs/architecture.md sections 3.5, 4).
IDEMPOTENCY_KEY = b"Idempotency-Key"  # a write's key: the same key is applied once
REPLAYED = b"Idempotent-Replayed"  # "true" on an answer a key's stored outcome gave again
VERSION = b"X-Distpotify-Version"  # on every write answer: the version that write made
MIN_VERSION = b"X-Distpotify-Min-Version"  # on a read: answer once this version is applied
BEHIND = "behind"  # the 409 error code of a read whose min version is not applied here


# What a log line shows instead of a /rest query string.
HIDDEN_QUERY = "?<hidden>"


def loggable_uri(uri: bytes) -> str:
    """A request's URI as a log line may show it. A Subsonic request (/rest/...) carries its
    client's password, token and salt, or API key, in the query on every call: its query is
    cut, whatever the case or the slashes or %-escapes before "rest" (a replica's router
    unquotes the path), and wherever a segment "rest..." stands in the path: an
    absolute-form target ("http://host/rest/ping?p=...") or one with a "." or ".." segment
    is refused with a 4xx, which is logged. Other URIs are shown whole."""
    path, mark, _ = uri.partition(b"?")
    text = path.decode("utf-8", "replace")
    plain = unquote_to_bytes(path).decode("utf-8", "replace")
    if mark and any(part.lower().startswith("rest") for part in plain.split("/")):
        return text + HIDDEN_QUERY
    return uri.decode("utf-8", "replace")


def version_writer(version: bytes) -> int | None:
    """The node id of the leader that made ``version`` (its middle field: the text is
    ``<epoch>-<node id>-<seq>``, model.Version), or None if it is not a version's text."""
    parts = version.split(b"-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[1])


def _reason(status: int) -> bytes | None:
    """The status line's reason phrase, from Python's table: twisted.web's lacks some we
    send (429 would read "Unknown Status"); None leaves twisted.web's own."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return None


def json_response(request: IRequest, status: int, value: Any, *, pretty: bool = False) -> bytes:
    """Set ``status`` and the JSON headers on ``request``; return ``value`` as the body.

    Compact by default; ``pretty`` indents it and ends it with a newline, for answers a person
    reads with curl.
    """
    if pretty:
        data = json.dumps(value, indent=1).encode() + b"\n"
    else:
        data = json.dumps(value, separators=(",", ":")).encode()
    return encoded_json_response(request, status, data)


def encoded_json_response(request: IRequest, status: int, data: bytes) -> bytes:
    """json_response for a body already encoded as JSON."""
    request.setResponseCode(status, _reason(status))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return data


def error_json(code: str, message: str) -> bytes:
    """json_error's body, for the answers written without a Request (a body refused as it
    arrives, a client too slow to send its request)."""
    return json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()


def json_error(request: IRequest, status: int, code: str, message: str, **extra: Any) -> bytes:
    """The error shape every process answers: ``{"error": code, "message": ..., **extra}``."""
    return json_response(request, status, {"error": code, "message": message, **extra})
