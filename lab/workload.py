"""A bounded workload client: uploads songs and creates playlists through one entry (a
replica, the current leader, or the proxy), reads from every replica, and records each
operation with its outcome, so the checker knows exactly which writes were acknowledged.
"""
# test-case-name: tests.lab.test_workload

from __future__ import annotations

import hashlib
import itertools
import json
import random
import struct
import threading
import time
import uuid
from typing import Any

import attrs

from lab.client import Answer
from lab.lab import HTTP_PORT, PROXY_PORT, Lab

WRITE_TIMEOUT = 5.0
READ_TIMEOUT = 2.0
STATUS_TIMEOUT = 0.5
SAMPLE_RATE = 8000
SMALL_SONG = 24 * 1024
LARGE_SONG = 300 * 1024  # more than one 256 KiB chunk


@attrs.frozen
class Operation:
    worker: str
    index: int
    kind: str  # "upload", "playlist" or "read"
    target: str  # "node 2", "proxy", or "none" when no leader was known
    started: float  # lab clock
    finished: float
    ok: bool  # acknowledged: a 2xx answer
    status: int | None = None
    served_by: str | None = None
    error: str | None = None
    key: str | None = None  # the song or playlist id
    sha256: str | None = None  # of the bytes uploaded (computed by the client)
    answer_sha256: str | None = None  # what the replica said it stored


def make_wav(tag: str, size: int) -> bytes:
    """A valid mono 16-bit PCM WAV file of about SIZE bytes whose samples depend on TAG."""
    frames = max((size - 44) // 2, SAMPLE_RATE // 10)
    samples = random.Random(tag).randbytes(frames * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def find_leader(lab: Lab) -> int | None:
    """The node the running replicas call leader: highest (epoch, id) among those saying
    role=leader; None when no replica claims it."""
    claims = []
    for node_id, replica in lab.replicas.items():
        if not replica.running or replica.paused:
            continue
        status = lab.status(node_id, timeout=STATUS_TIMEOUT)
        if status and status.get("role") == "leader":
            claims.append((status.get("epoch") or 0, node_id))
    return max(claims)[1] if claims else None


class Workload:
    """Writes through ENTRY ("leader", "proxy" or a node id) until MAX_OPS or MAX_SECONDS."""

    def __init__(
        self,
        lab: Lab,
        entry: str | int = "leader",
        *,
        name: str = "w1",
        max_ops: int = 400,
        max_seconds: float = 60.0,
        interval: float = 0.05,
        reads: bool = True,
        seed: int = 0,
    ) -> None:
        if entry == "proxy" and lab.proxy is None:
            raise ValueError("entry 'proxy' needs a lab with a proxy host")
        if isinstance(entry, int) and entry not in lab.replicas:
            raise ValueError(f"no node {entry} in the lab")
        self.lab = lab
        self.entry = entry
        self.name = name
        self.max_ops = max_ops
        self.max_seconds = max_seconds
        self.interval = interval
        self.reads = reads
        self.seed = seed
        self.operations: list[Operation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leader: int | None = None
        self._rng = random.Random(f"{seed}-{name}")

    # -- running --------------------------------------------------------------------------

    def start(self) -> Workload:
        self._thread = threading.Thread(target=self._run, name=f"workload-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = WRITE_TIMEOUT * 3) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: float) -> None:
        """Wait (up to TIMEOUT) for the workload to reach its own bounds and end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_for(self, acknowledged: int, timeout: float) -> bool:
        """Poll until ACKNOWLEDGED more writes than now are acknowledged; False at TIMEOUT."""
        goal = len(self.acknowledged()) + acknowledged
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            if len(self.acknowledged()) >= goal:
                return True
            time.sleep(0.05)
        return len(self.acknowledged()) >= goal

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        replicas = sorted(self.lab.replicas)
        for index in range(self.max_ops):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            if index % 4 == 3:
                self._create_playlist(index)
            else:
                self._upload(index)
            if self.reads:
                self._read(index, replicas[index % len(replicas)])
            self._stop.wait(self.interval)

    # -- results --------------------------------------------------------------------------

    def snapshot(self) -> list[Operation]:
        with self._lock:
            return list(self.operations)

    def acknowledged(self) -> list[Operation]:
        return [op for op in self.snapshot() if op.ok and op.kind != "read"]

    def summary(self) -> dict[str, Any]:
        ops = self.snapshot()
        writes = [op for op in ops if op.kind != "read"]
        reads = [op for op in ops if op.kind == "read"]
        acked = sorted(op.finished for op in writes if op.ok)
        gaps = [(later - earlier, earlier) for earlier, later in itertools.pairwise(acked)]
        gap, gap_at = max(gaps, default=(0.0, 0.0))
        return {
            "worker": self.name,
            "entry": self.entry,
            "writes": len(writes),
            "acknowledged": len(acked),
            "failed_writes": len(writes) - len(acked),
            # How long writes were unavailable at worst: the longest time between two acks.
            "longest_ack_gap": round(gap, 3),
            "longest_ack_gap_from": round(gap_at, 3),
            "reads": len(reads),
            "failed_reads": sum(not op.ok for op in reads),
        }

    # -- operations -----------------------------------------------------------------------

    def _upload(self, index: int) -> None:
        tag = f"{self.seed}-{self.name}-{index}"
        audio = make_wav(tag, LARGE_SONG if index % 8 == 6 else SMALL_SONG)
        digest = hashlib.sha256(audio).hexdigest()
        path = f"/songs?title=lab-{self.name}-{index}&artist=distpotify-lab"
        op, answer = self._write(index, "upload", path, audio, "audio/wav")
        song = _member(answer, "song")
        self._record(attrs.evolve(
            op, key=song.get("id"), sha256=digest, answer_sha256=song.get("sha256")
        ))

    def _create_playlist(self, index: int) -> None:
        playlist_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        body = json.dumps({"name": f"lab-{self.name}-{index}", "id": playlist_id}).encode()
        op, answer = self._write(index, "playlist", "/playlists", body, "application/json")
        self._record(attrs.evolve(op, key=_member(answer, "playlist").get("id") or playlist_id))

    def _read(self, index: int, node_id: int) -> None:
        started = self.lab.clock()
        host = self.lab.replicas[node_id].host
        try:
            answer = self.lab.client(host, READ_TIMEOUT).request(
                "GET", host.address, HTTP_PORT, "/songs?limit=5")
        except OSError as exc:
            self._record(Operation(self.name, index, "read", f"node {node_id}", started,
                                   self.lab.clock(), False, error=_describe(exc)))
            return
        self._record(Operation(
            self.name, index, "read", f"node {node_id}", started, self.lab.clock(),
            answer.status == 200, answer.status, answer.served_by,
            None if answer.status == 200 else _error_text(answer),
        ))

    def _write(
        self, index: int, kind: str, path: str, body: bytes, content_type: str
    ) -> tuple[Operation, dict[str, Any]]:
        """POST through the entry; the operation and, when acknowledged, the JSON answer."""
        started = self.lab.clock()
        target = self._target()
        if target is None:
            return Operation(self.name, index, kind, "none", started, self.lab.clock(), False,
                             error="no leader known"), {}
        headers = {"Content-Type": content_type}
        try:
            answer = self._send(target, path, body, headers)
            if answer.status == 421 and self.entry == "leader":
                named = json_object(answer).get("leader_id")
                if isinstance(named, int) and named in self.lab.replicas:
                    self._leader = target = named
                    answer = self._send(target, path, body, headers)
        except OSError as exc:
            self._leader = None
            return Operation(self.name, index, kind, target_label(target), started,
                             self.lab.clock(), False, error=_describe(exc)), {}
        ok = 200 <= answer.status < 300
        if not ok:
            self._leader = None
        return Operation(
            self.name, index, kind, target_label(target), started, self.lab.clock(), ok,
            answer.status, answer.served_by, None if ok else _error_text(answer),
        ), json_object(answer) if ok else {}

    def _target(self) -> int | str | None:
        if self.entry != "leader":
            return self.entry
        if self._leader is None:
            self._leader = find_leader(self.lab)
        return self._leader

    def _send(self, target: int | str, path: str, body: bytes,
              headers: dict[str, str]) -> Answer:
        if target == "proxy":
            assert self.lab.proxy is not None
            host, port = self.lab.proxy, PROXY_PORT
        else:
            host, port = self.lab.replicas[int(target)].host, HTTP_PORT
        return self.lab.client(host, WRITE_TIMEOUT).request(
            "POST", host.address, port, path, body, headers)

    def _record(self, op: Operation) -> None:
        with self._lock:
            self.operations.append(op)


def target_label(target: int | str) -> str:
    """How a report names a request's target: "proxy" or "node N"."""
    return "proxy" if target == "proxy" else f"node {target}"


def json_object(answer: Answer) -> dict[str, Any]:
    """The answer's body as a JSON object; {} when it is not one."""
    try:
        value = answer.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _member(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _error_text(answer: Answer) -> str:
    code = json_object(answer).get("error")
    return f"HTTP {answer.status}" + (f" {code}" if code else "")


def _describe(exc: OSError) -> str:
    return type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else f": {exc}")
