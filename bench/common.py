"""What bench/proxy.py and bench/replica.py share: ports, waits, HTTP and wrk helpers (their
children are distpotify.cli.processes'). Both run it as a script, so it is imported as
``common`` from the bench directory."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from distpotify.cli.processes import Supervisor, wait_ready

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB

# wrk's report as one JSON line (run_wrk reads it), the end of every script given to wrk.
LUA_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""

class BlockKeys:
    """The Idempotency-Keys of one block of writes, in the proxy's form: UUIDv7 (RFC 9562),
    the time in milliseconds first, so their rows are stored in time order as the proxy's
    are (distpotify/idempotency.py). Each key ends with its write's count and a tag of the
    block, so no write replays another's; the first three carry the block's start time, so
    they can be made again here (``key``) to check that the block's writes were keyed. wrk's
    Lua has the time in seconds: the others carry it, plus their count modulo 1000."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.start = time.time_ns() // 1_000_000

    def key(self, n: int) -> str:
        """The key of the block's write ``n`` (1-3)."""
        assert 1 <= n <= 3
        return self._form(self.start >> 16, self.start & 0xFFFF, n)

    def _form(self, high: int, low: int, n: int) -> str:
        return f"{high:08x}-{low:04x}-7{self.tag[:3]}-8{self.tag[3:]}-{n:012x}"

    def lua(self) -> str:
        """The Lua function ``key(n)`` wrk's script calls for each write."""
        return (
            "function key(n)\n"
            f"  local ms = {self.start}\n"
            "  if n > 3 then ms = os.time() * 1000 + n % 1000 end\n"
            f"  return string.format('%08x-%04x-7{self.tag[:3]}-8{self.tag[3:]}-%012x',\n"
            "                       math.floor(ms / 65536), ms % 65536, n)\n"
            "end\n\n"
        )


def _playlist_write_lua(keys: BlockKeys | None) -> str:
    """wrk script: every request creates a playlist (POST /playlists); with ``keys``, each
    carries its own Idempotency-Key."""
    headers = '{["Content-Type"] = "application/json"}'
    if keys is not None:
        headers = '{["Content-Type"] = "application/json", ["Idempotency-Key"] = key(n)}'
    return (
        "local n = 0\n\n"
        + (keys.lua() if keys is not None else "")
        + "function request()\n"
        "  n = n + 1\n"
        f'  return wrk.format("POST", "/playlists", {headers},\n'
        """                    string.format('{"name": "bench %d"}', n))\n"""
        "end\n"
    ) + LUA_DONE


# wrk script: cycles over the paths listed in a file (after "--"), one path per request,
# requests pre-built in init(); done() prints exact figures as one JSON line. No response()
# function, so wrk never copies bodies into Lua (that would slow wrk down).
LUA = r"""
local reqs = {}
local n = 0
local i = 0

function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    if #line > 0 then
      n = n + 1
      reqs[n] = wrk.format("GET", line)
    end
  end
  f:close()
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return reqs[i]
end
""" + LUA_DONE


class BenchError(Exception):
    """Something the benchmark cannot go on without; the message says what."""


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def save_result(name: str, result: Any) -> Path:
    """``result`` as JSON in bench/results/NAME-<date>-<time>.json (git-ignored); says where."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    say(f"saved {path.relative_to(REPO)}")
    return path


# ---------------------------------------------------------------- processes


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], deadline_s: float,
               procs: Supervisor | None = None, child: subprocess.Popen[bytes] | None = None
               ) -> Any:
    """Poll ``check()`` until it returns something truthy, or fail after ``deadline_s``.

    With ``procs`` and ``child``, fail as soon as that child has exited.
    """

    def checked() -> Any:
        if procs is not None and child is not None:
            procs.check(child)
        return check()

    return wait_ready(checked, what=what, timeout=deadline_s)


# ---------------------------------------------------------------- HTTP and data


def http_get(port: int, path: str, timeout: float = 10, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def make_wav(path: Path, size_bytes: int, seed: int) -> str:
    """A valid 16-bit stereo 44.1 kHz PCM WAV of about ``size_bytes``, non-repeating noise.

    Streamed to disk one MiB at a time; returns the SHA-256 of the file.
    """
    rng = random.Random(seed)
    frames_total = max(1, (size_bytes - 44) // 4)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.setnframes(frames_total)
        left = frames_total
        while left:
            frames = min(left, MIB // 4)
            w.writeframesraw(rng.randbytes(frames * 4))
            left -= frames
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- wrk and /proc


@dataclasses.dataclass
class WrkRun:
    """One finished wrk run: its argv, its stdout, and the figures of its BENCH-JSON line."""

    argv: list[str]
    stdout: str
    figures: dict[str, Any]

    @property
    def seconds(self) -> float:
        return float(self.figures["duration_us"]) / 1e6

    @property
    def non_2xx(self) -> int:
        for line in self.stdout.splitlines():
            if "Non-2xx or 3xx responses:" in line:
                return int(line.split(":")[1])
        return 0

    def summary(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "seconds": seconds,
            "requests": self.figures["requests"],
            "req_per_s": self.figures["requests"] / seconds,
            "mib_per_s": self.figures["bytes"] / seconds / MIB,
            "latency_ms": {k: v / 1000 for k, v in self.figures["latency_us"].items()},
            "errors": self.figures["errors"],
            "non_2xx": self.non_2xx,
        }


def run_wrk(port: int, paths: Path, script: Path, duration: int, connections: int,
            prefix: Sequence[str] = (), timeout: int = 2, headers: Sequence[str] = ()
            ) -> WrkRun:
    """``wrk -t1`` with ``script`` (LUA) cycling over the paths listed in ``paths``;
    ``timeout`` seconds for one response (whole songs need more than wrk's default 2);
    ``headers`` (``Name: value``) sent with every request."""
    argv = [
        *prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
        f"--timeout={timeout}s", *(f"--header={header}" for header in headers),
        "-s", str(script), f"http://{HOST}:{port}/", "--", str(paths),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    figures: dict[str, Any] | None = None
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            figures = json.loads(line.removeprefix("BENCH-JSON "))
    if figures is None:
        raise BenchError(f"no figures in wrk's output:\n{done.stdout}\n{done.stderr}")
    return WrkRun(argv, done.stdout, figures)


def playlist_writes(port: int, seconds: int, connections: int,
                    keys: BlockKeys | None = None) -> dict[str, Any]:
    """wrk's summary of ``seconds`` of playlist creates at ``port`` by ``connections``
    keep-alive connections, each write with its own Idempotency-Key of ``keys`` when given
    (new ones for each run, so no request replays an earlier run's key). BenchError if
    any write failed."""
    with tempfile.TemporaryDirectory(prefix="distpotify-bench-writes-") as tmp:
        script = Path(tmp) / "write.lua"
        script.write_text(_playlist_write_lua(keys))
        unused = Path(tmp) / "paths.txt"  # run_wrk's path list: these scripts make their own
        unused.write_text("/\n")
        run = run_wrk(port, unused, script, seconds, connections)
    summary = run.summary()
    if run.non_2xx or any(summary["errors"].values()) or not summary["requests"]:
        raise BenchError(f"playlist writes failed: {run.non_2xx} not 2xx,"
                         f" errors {summary['errors']}")
    return summary


def cpu_seconds(pid: int) -> float:
    """User + system CPU (all threads, from /proc) of a process and its children still
    running (nginx's worker)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None and (int(stat.parent.name) == pid or int(fields[1]) == pid):
            total += _cpu_of(fields)
    return total


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a /proc stat file after the command's name (None: it has gone)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_of(fields: list[str]) -> float:
    """User + system CPU seconds of a /proc stat file's fields (_stat_fields)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


THREAD_PARTS = ("reactor", "threads")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU of a process from /proc, by thread: its main thread (a replica's
    reactor) and its other threads together (a replica's store thread, nearly all of it,
    and the worker pool)."""
    parts = dict.fromkeys(THREAD_PARTS, 0.0)
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = _stat_fields(stat)
        if fields is not None:
            parts["reactor" if int(stat.parent.name) == pid else "threads"] += _cpu_of(fields)
    return parts


def environment(**tools: Any) -> dict[str, Any]:
    """Versions and load for the report; ``tools`` go in before the load average."""
    import twisted

    return {
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **tools,
        "loadavg_at_end": os.getloadavg(),
    }
