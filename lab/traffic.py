"""The randomized run's workload: writers that upload, edit, delete and build playlists, and
listeners that stream, through the proxy and straight to replicas, each operation recorded
with what it meant and how it ended, for the invariant checker (``invariants.py``).

Every write carries a fresh ``Idempotency-Key``. An operation ends ``ok`` (a 2xx),
``fail`` (an answer saying it was not applied: any 4xx, 507; or a connection refused before
anything was sent) or ``info`` (unknown: a timeout, a reset, a 5xx, a 503): the checker
allows an ``info`` write to have happened or not, once. Choices come from random generators
seeded with the run's seed and the worker's name, so a seed replays the same intentions.
"""
# test-case-name: tests.lab.test_invariants

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs

from distpotify.keytime import new_key
from lab.client import Answer
from lab.lab import HTTP_PORT, PROXY_PORT, Lab
from lab.workload import find_leader, json_object, make_wav, target_label

WRITE_TIMEOUT = 10.0  # above the proxy's --write-hold, so its verdict reaches us
READ_TIMEOUT = 5.0
SMALL_SONG = 20 * 1024
LARGE_SONG = 600 * 1024  # three chunks of 256 KiB
ARTIST = "distpotify-lab"
ALBUM = "random-run"

# What writers do, and how often (relative weights).
WEIGHTS = {
    "upload": 28,
    "edit_song": 14,
    "delete_song": 6,
    "create_playlist": 10,
    "rename_playlist": 6,
    "delete_playlist": 3,
    "add_item": 24,
    "remove_item": 9,
}
EDITABLE = ("title", "album", "genre")
LISTENER_WRITER = 1  # a writer through the proxy (with the default entries)
WRITES = tuple(WEIGHTS)


@attrs.frozen
class Op:
    """One operation as the client saw it: what it meant (ARGS) and how it ended."""

    worker: str
    index: int
    kind: str  # a key of WEIGHTS, or "stream"
    via: str  # "proxy" or "node N"
    key: str  # the Idempotency-Key sent ("" for reads)
    started: float  # lab clock
    finished: float
    outcome: str  # "ok", "fail" or "info"
    status: int | None = None
    error: str | None = None
    served_by: str | None = None
    args: dict[str, Any] = attrs.field(factory=dict)
    result: dict[str, Any] = attrs.field(factory=dict)

    def brief(self) -> dict[str, Any]:
        """What a report shows of it."""
        return {"op": f"{self.worker}#{self.index}", "kind": self.kind, "via": self.via,
                "at": [self.started, self.finished], "outcome": self.outcome,
                "status": self.status, "error": self.error, "served_by": self.served_by,
                "args": self.args, "result": self.result, "key": self.key}


def outcome_of(status: int | None, sent: bool) -> str:
    """ok / fail / info for an answer STATUS (None: no answer); SENT: the request may have
    reached the server (False only when the connection was refused)."""
    if status is None:
        return "info" if sent else "fail"
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 or status == 507:
        return "fail"
    return "info"


class Catalog:
    """What the writers know of the library: records created (acknowledged) and not deleted
    by an acknowledged delete; the pairs (playlist, song) ever tried, so none is added twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.songs: dict[str, str] = {}  # id -> sha256 of its bytes
        self.playlists: set[str] = set()
        self.items: dict[str, tuple[str, str]] = {}  # item id -> (playlist, song)
        self.pairs: set[tuple[str, str]] = set()

    def pick(self, rng: random.Random, what: str) -> Any:
        with self._lock:
            pool: Sequence[Any] = sorted(getattr(self, what))
            return rng.choice(pool) if pool else None

    def add(self, what: str, key: str, value: Any = None) -> None:
        with self._lock:
            table = getattr(self, what)
            if isinstance(table, set):
                table.add(key)
            else:
                table[key] = value

    def forget(self, what: str, key: str) -> None:
        with self._lock:
            table = getattr(self, what)
            table.discard(key) if isinstance(table, set) else table.pop(key, None)

    def count(self, what: str) -> int:
        with self._lock:
            return len(getattr(self, what))

    def sha256_of(self, song: str) -> str | None:
        with self._lock:
            return self.songs.get(song)

    def new_pair(self, rng: random.Random) -> tuple[str, str] | None:
        with self._lock:
            playlists, songs = sorted(self.playlists), sorted(self.songs)
            for _ in range(8):
                if not playlists or not songs:
                    return None
                pair = (rng.choice(playlists), rng.choice(songs))
                if pair not in self.pairs:
                    self.pairs.add(pair)
                    return pair
            return None


@attrs.frozen
class Account:
    """Whom a writer works as: the songs and playlists it has made, and the headers that
    sign its requests (none for the lab's own session, which the lab's client adds)."""

    catalog: Catalog = attrs.field(factory=Catalog)
    headers: dict[str, str] = attrs.field(factory=dict)


class Traffic:
    """WRITERS writer threads (each with an entry: "proxy", "leader" or "any" replica) and
    LISTENERS stream readers, until ``stop``; ``history`` is every operation so far."""

    def __init__(
        self,
        lab: Lab,
        seed: int,
        *,
        entries: Sequence[str] = ("proxy", "proxy", "leader", "any"),
        listeners: int = 2,
        pause: float = 0.05,
    ) -> None:
        if "proxy" in entries and lab.proxy is None:
            raise ValueError("a proxy entry needs a lab with a proxy host")
        self.lab = lab
        self.seed = seed
        self.entries = tuple(entries)
        self.listener_count = listeners
        self.pause = pause
        # The writer LISTENER_WRITER works as the lab's listener account when the lab has
        # one (``Lab.listener_credentials``): its own uploads and playlists, in a catalog of
        # its own, so that each of its writes is one a listener may make. The others, and
        # the stream readers, send the lab's session (the first admin's).
        self._admin = Account()
        self._accounts: dict[str, Account] = {}  # by writer name; the others work as the admin
        if lab.listener_credentials and len(self.entries) > LISTENER_WRITER:
            name = f"w{LISTENER_WRITER}-{self.entries[LISTENER_WRITER]}"
            self._accounts[name] = Account(headers=dict(lab.listener_credentials))
        self._history: list[Op] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._leader: int | None = None

    # -- running --------------------------------------------------------------------------

    def start(self) -> Traffic:
        bodies: list[tuple[str, Callable[[str], None]]] = [
            (f"w{number}-{entry}", self._writer) for number, entry in enumerate(self.entries)]
        bodies += [(f"l{number}", self._listener) for number in range(self.listener_count)]
        for name, body in bodies:
            thread = threading.Thread(target=body, args=(name,), name=f"traffic-{name}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = WRITE_TIMEOUT * 2) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def history(self) -> list[Op]:
        with self._lock:
            return list(self._history)

    def acknowledged(self) -> int:
        return sum(op.outcome == "ok" and op.kind != "stream" for op in self.history())

    def _record(self, op: Op) -> None:
        with self._lock:
            self._history.append(op)

    def _writer(self, name: str) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        entry = name.split("-", 1)[1]
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        index = 0
        while not self._stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            op = getattr(self, f"_{kind}")(name, index, entry, rng)
            if op is not None:
                self._record(op)
                index += 1
            self._stop.wait(rng.expovariate(1 / self.pause) if self.pause else 0)

    def _account(self, writer: str) -> Account:
        return self._accounts.get(writer, self._admin)

    def _catalog(self, writer: str) -> Catalog:
        return self._account(writer).catalog

    def _catalogs(self) -> list[Catalog]:
        return [account.catalog for account in (self._admin, *self._accounts.values())]

    def _listener(self, name: str) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        index = 0
        while not self._stop.is_set():
            catalogs = self._catalogs()
            sizes = [catalog.count("songs") for catalog in catalogs]
            catalog = (catalogs[0] if len(catalogs) == 1 or not any(sizes) else
                       rng.choices(catalogs, sizes)[0])  # each song as likely as another
            song = catalog.pick(rng, "songs")
            if song is None:
                self._stop.wait(0.2)
                continue
            entry = "proxy" if self.lab.proxy is not None and rng.random() < 0.75 else "any"
            self._record(self._stream(name, index, entry, rng, song))
            index += 1
            self._stop.wait(rng.expovariate(1 / self.pause) if self.pause else 0)

    # -- writes ---------------------------------------------------------------------------

    def _upload(self, name: str, index: int, entry: str, rng: random.Random) -> Op:
        catalog = self._catalog(name)
        tag = f"{self.seed}-{name}-{index}"
        audio = make_wav(tag, LARGE_SONG if rng.random() < 0.1 else SMALL_SONG)
        sha = hashlib.sha256(audio).hexdigest()
        fields = {"title": f"t-{tag}", "artist": ARTIST, "album": f"a-{tag}",
                  "genre": f"g-{tag}"}
        op = self._write(name, index, entry, "upload", "POST",
                         "/songs?" + urlencode(fields), audio, "audio/wav",
                         {"sha256": sha, "size": len(audio), **fields}, rng)
        song = op.result.get("song") or {}
        result = {"id": song.get("id"), "sha256": song.get("sha256")}
        if op.outcome == "ok" and isinstance(song.get("id"), str):
            catalog.add("songs", song["id"], sha)
        return attrs.evolve(op, result=result)

    def _edit_song(self, name: str, index: int, entry: str, rng: random.Random) -> Op | None:
        catalog = self._catalog(name)
        song = catalog.pick(rng, "songs")
        if song is None:
            return None
        field = rng.choice(EDITABLE)
        value = f"{field[0]}-{self.seed}-{name}-{index}-edit"
        return self._json(name, index, entry, "edit_song", "PATCH", f"/songs/{song}",
                          {field: value}, {"song": song, "field": field, "value": value}, rng)

    def _delete_song(self, name: str, index: int, entry: str, rng: random.Random) -> Op | None:
        catalog = self._catalog(name)
        song = catalog.pick(rng, "songs")
        if song is None:
            return None
        op = self._write(name, index, entry, "delete_song", "DELETE", f"/songs/{song}", b"",
                         None, {"song": song}, rng)
        if op.outcome != "fail" or op.status == 404:
            catalog.forget("songs", song)
        return op

    def _create_playlist(self, name: str, index: int, entry: str, rng: random.Random) -> Op:
        catalog = self._catalog(name)
        playlist_name = f"p-{self.seed}-{name}-{index}"
        body: dict[str, Any] = {"name": playlist_name}
        if rng.random() < 0.5:  # half with a client-chosen id, half with the server's
            body["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        op = self._json(name, index, entry, "create_playlist", "POST", "/playlists", body,
                        dict(body), rng)
        playlist = op.result.get("playlist") or {}
        result = {"id": playlist.get("id")}
        if op.outcome == "ok" and isinstance(playlist.get("id"), str):
            catalog.add("playlists", playlist["id"])
        return attrs.evolve(op, result=result)

    def _rename_playlist(self, name: str, index: int, entry: str, rng: random.Random
                         ) -> Op | None:
        catalog = self._catalog(name)
        playlist = catalog.pick(rng, "playlists")
        if playlist is None:
            return None
        value = f"p-{self.seed}-{name}-{index}-rename"
        return self._json(name, index, entry, "rename_playlist", "PATCH",
                          f"/playlists/{playlist}", {"name": value},
                          {"playlist": playlist, "field": "name", "value": value}, rng)

    def _delete_playlist(self, name: str, index: int, entry: str, rng: random.Random
                         ) -> Op | None:
        catalog = self._catalog(name)
        playlist = catalog.pick(rng, "playlists")
        if playlist is None:
            return None
        op = self._write(name, index, entry, "delete_playlist", "DELETE",
                         f"/playlists/{playlist}", b"", None, {"playlist": playlist}, rng)
        if op.outcome != "fail" or op.status == 404:
            catalog.forget("playlists", playlist)
        return op

    def _add_item(self, name: str, index: int, entry: str, rng: random.Random) -> Op | None:
        catalog = self._catalog(name)
        pair = catalog.new_pair(rng)
        if pair is None:
            return None
        playlist, song = pair
        op = self._json(name, index, entry, "add_item", "POST", f"/playlists/{playlist}/items",
                        {"song_id": song}, {"playlist": playlist, "song": song}, rng)
        item = op.result.get("item") or {}
        result = {"id": item.get("id")}
        if op.outcome == "ok" and isinstance(item.get("id"), str):
            catalog.add("items", item["id"], pair)
        return attrs.evolve(op, result=result)

    def _remove_item(self, name: str, index: int, entry: str, rng: random.Random
                     ) -> Op | None:
        catalog = self._catalog(name)
        item = catalog.pick(rng, "items")
        if item is None:
            return None
        playlist, song = catalog.items.get(item, ("", ""))
        op = self._write(name, index, entry, "remove_item", "DELETE",
                         f"/playlists/{playlist}/items/{item}", b"", None,
                         {"item": item, "playlist": playlist, "song": song}, rng)
        if op.outcome != "fail" or op.status == 404:
            catalog.forget("items", item)
        return op

    # -- reads ----------------------------------------------------------------------------

    def _stream(self, name: str, index: int, entry: str, rng: random.Random, song: str) -> Op:
        """GET the whole song; the result holds the SHA-256 of the bytes served."""
        started = self.lab.clock()
        target = self._target(entry, rng)
        args = {"song": song, "sha256": next(
            filter(None, (c.sha256_of(song) for c in self._catalogs())), None)}
        if target is None:
            return Op(name, index, "stream", "none", "", started, self.lab.clock(), "fail",
                      error="no replica known", args=args)
        try:
            answer = self._send(target, "GET", f"/songs/{song}/stream", None, {},
                                READ_TIMEOUT)
        except OSError as exc:
            return Op(name, index, "stream", target_label(target), "", started, self.lab.clock(),
                      outcome_of(None, _sent(exc)), error=_describe(exc), args=args)
        result = {}
        if answer.status == 200:
            result = {"sha256": hashlib.sha256(answer.body).hexdigest(),
                      "bytes": len(answer.body)}
        return Op(name, index, "stream", target_label(target), "", started, self.lab.clock(),
                  outcome_of(answer.status, True), answer.status,
                  None if answer.status == 200 else _error_text(answer), answer.served_by,
                  args, result)

    # -- HTTP -----------------------------------------------------------------------------

    def _json(self, name: str, index: int, entry: str, kind: str, method: str, path: str,
              body: dict[str, Any], args: dict[str, Any], rng: random.Random) -> Op:
        return self._write(name, index, entry, kind, method, path, json.dumps(body).encode(),
                           "application/json", args, rng)

    def _write(self, name: str, index: int, entry: str, kind: str, method: str, path: str,
               body: bytes, content_type: str | None, args: dict[str, Any],
               rng: random.Random) -> Op:
        """Send one write with a new Idempotency-Key; a 421 from a replica is followed once
        to the leader it names. RESULT holds the JSON answer of a 2xx."""
        key = _new_key(rng)
        headers = {"Idempotency-Key": key, **self._account(name).headers}
        if content_type:
            headers["Content-Type"] = content_type
        started = self.lab.clock()
        target = self._target(entry, rng)
        if target is None:
            return Op(name, index, kind, "none", key, started, self.lab.clock(), "fail",
                      error="no leader known", args=args)
        try:
            answer = self._send(target, method, path, body, headers, WRITE_TIMEOUT)
            if answer.status == 421 and target != "proxy":
                named = json_object(answer).get("leader_id")
                if isinstance(named, int) and named in self.lab.replicas:
                    self._leader = target = named
                    answer = self._send(target, method, path, body, headers, WRITE_TIMEOUT)
        except OSError as exc:
            if entry == "leader":
                self._leader = None
            return Op(name, index, kind, target_label(target), key, started, self.lab.clock(),
                      outcome_of(None, _sent(exc)), error=_describe(exc), args=args)
        outcome = outcome_of(answer.status, True)
        if outcome != "ok" and entry == "leader":
            self._leader = None
        return Op(name, index, kind, target_label(target), key, started, self.lab.clock(), outcome,
                  answer.status, None if outcome == "ok" else _error_text(answer),
                  answer.served_by, args, json_object(answer) if outcome == "ok" else {})

    def _target(self, entry: str, rng: random.Random) -> int | str | None:
        if entry == "proxy":
            return "proxy"
        if entry == "any":
            running = [n for n, r in sorted(self.lab.replicas.items()) if r.running]
            return rng.choice(running) if running else None
        if self._leader is None:
            self._leader = find_leader(self.lab)
        return self._leader

    def _send(self, target: int | str, method: str, path: str, body: bytes | None,
              headers: dict[str, str], timeout: float) -> Answer:
        if target == "proxy":
            assert self.lab.proxy is not None
            host, port = self.lab.proxy, PROXY_PORT
        else:
            host, port = self.lab.replicas[int(target)].host, HTTP_PORT
        return self.lab.client(host, timeout).request(method, host.address, port, path, body,
                                                      headers)


def _sent(exc: OSError) -> bool:
    """Whether the request may have reached the server: not when the connection was refused
    or the host unreachable (nothing was sent)."""
    return not isinstance(exc, ConnectionRefusedError) and getattr(exc, "errno", None) not in (
        101, 113)  # ENETUNREACH, EHOSTUNREACH: no connection was ever made


def _error_text(answer: Answer) -> str:
    code = json_object(answer).get("error")
    return f"HTTP {answer.status}" + (f" {code}" if code else "")


def _describe(exc: OSError) -> str:
    return type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else f": {exc}")


def _new_key(rng: random.Random) -> str:
    """A write's Idempotency-Key: one in two a UUIDv4, as a client may make its own (its row
    hashed to a bucket), the other a UUIDv7 as the proxy makes them (its row in time order,
    its time the wall clock's: not drawn from ``rng``, which draws the same either way)."""
    bits = rng.getrandbits(128)
    return str(uuid.UUID(int=bits, version=4)) if bits & 1 else new_key()
