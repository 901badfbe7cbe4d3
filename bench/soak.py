"""Soak: three replicas and the proxy under steady listeners and writers for a bounded time,
one replica killed and restarted every few minutes; does anything grow or go wrong?

Every --sample seconds the RSS, open file descriptors and threads of every process are read
from /proc. At the end it prints, per process and after --warmup minutes (a restarted
replica: after its own warm-up), the least-squares slope of each (per hour), next to the
same slope of this benchmark's own client process (the reference: it does the same work
all run long); the error lines of every log beyond the expected ones; the listeners' and
writers' counts (every streamed song is checked byte for byte). Saves JSON under
bench/results/. Traffic goes only to 127.0.0.1.

    .venv/bin/python bench/soak.py [--minutes 20] [--kill-every 180] [--victim 1|leader]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from common import (
    HOST,
    MIB,
    BenchError,
    environment,
    free_port,
    make_wav,
    save_result,
    say,
    terminate_on_sigterm,
)

from distpotify.cli.cluster import ensure_key_file
from distpotify.cli.processes import AUTH_OFF, ProxyCommand, ReplicaCommand, Supervisor

NODES = (1, 2, 3)
TIMEOUT = 15.0
SONG_SIZES = (3 * MIB, 1 * MIB, 700 * 1024, 2 * MIB)
# Log lines that a replica killed on purpose makes others write, and nothing else.
EXPECTED_ERRORS = (
    re.compile(r"Connection was refused|ConnectionRefusedError|connection lost|"
               r"ConnectionLost|ConnectionDone|timed out|TimeoutError|ResponseNeverReceived"),
)
ERROR_LINE = re.compile(r"#(error|critical)\]|Unhandled [Ee]rror|Traceback \(most recent")
# What counts as growth, per hour, for the verdict printed (never asserted).
LIMITS = {"rss_mib": 8.0, "fds": 10.0, "threads": 2.0}


@attrs.define
class Sample:
    at: float  # seconds since the soak began
    process: str  # "replica 2", "proxy", "client"
    pid: int
    rss_mib: float
    fds: int
    threads: int


@attrs.define
class Counters:
    streams: int = 0
    stream_bytes: int = 0
    stream_errors: int = 0
    wrong_bytes: int = 0
    writes: int = 0
    write_errors: int = 0
    errors: list[str] = attrs.field(factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


def read_proc(pid: int) -> tuple[float, int, int] | None:
    """(RSS MiB, open fds, threads) of PID, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie: killed, not reaped yet
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per hour."""
    if len(points) < 3:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread * 3600


def slopes(samples: list[Sample], warmup: float, restart_warmup: float
           ) -> list[dict[str, Any]]:
    """Per process incarnation: its slopes after warm-up, and its first and last values."""
    series: dict[tuple[str, int], list[Sample]] = {}
    for sample in samples:
        series.setdefault((sample.process, sample.pid), []).append(sample)
    rows = []
    for (process, pid), points in series.items():
        born = points[0].at
        settled = max(warmup, born + (restart_warmup if born > 1.0 else 0.0))
        kept = [p for p in points if p.at >= settled]
        row: dict[str, Any] = {"process": process, "pid": pid, "samples": len(kept),
                               "from_s": round(settled, 1),
                               "until_s": round(points[-1].at, 1)}
        for metric in LIMITS:
            values = [(p.at, float(getattr(p, metric))) for p in kept]
            per_hour = slope_per_hour(values)
            row[metric] = {"slope_per_hour": None if per_hour is None else round(per_hour, 3),
                           "first": values[0][1] if values else None,
                           "last": values[-1][1] if values else None}
        rows.append(row)
    return rows


def error_lines(log: Path) -> tuple[int, list[str]]:
    """(expected, unexpected) error lines of a log: a traceback counts once, by its line."""
    expected, unexpected = 0, []
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return 0, []
    for number, line in enumerate(lines):
        if not ERROR_LINE.search(line):
            continue
        context = " ".join(lines[number:number + 30])
        if any(pattern.search(context) for pattern in EXPECTED_ERRORS):
            expected += 1
        else:
            unexpected.append(line.strip()[:300])
    return expected, unexpected


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Soak:
    def __init__(self, args: argparse.Namespace, procs: Supervisor, work: Path) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.name = f"bench-soak-{os.getpid()}"
        self.heartbeat_port = free_port(socket.SOCK_DGRAM)
        self.http = {n: free_port() for n in NODES}
        self.amp = {n: free_port() for n in NODES}
        self.proxy_port = free_port()
        self.processes: dict[str, Any] = {}
        self.songs: dict[str, str] = {}  # id -> sha256
        self.seeded: dict[str, str] = {}  # the songs listeners stream, never deleted
        self.samples: list[Sample] = []
        self.kills: list[dict[str, Any]] = []
        self.counters = Counters()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.children = threading.Lock()  # a kill on purpose is not an exit by itself

    def clock(self) -> float:
        return time.monotonic() - self.started

    # -- processes ------------------------------------------------------------------------

    def start_replica(self, node: int) -> None:
        log = self.work / f"node{node}.log"
        ensure_key_file(self.work / "cluster.key")  # the replicas' shared secret
        argv = ReplicaCommand(
            node_id=node, data_dir=self.work / f"node{node}", host=HOST, advertise_host=HOST,
            http_port=self.http[node], amp_port=self.amp[node], cluster=self.name,
            multicast_port=self.heartbeat_port, multicast_interface=HOST, multicast_ttl=0,
            cluster_key_file=self.work / "cluster.key", extra=AUTH_OFF,
        ).argv(logfile=log)
        self.processes[f"replica {node}"] = self.procs.start(f"replica {node}", argv, log)

    def start(self) -> None:
        for node in NODES:
            self.start_replica(node)
        backends = [f"{HOST}:{port}" for port in self.http.values()]
        log = self.work / "proxy.log"
        self.processes["proxy"] = self.procs.start(
            "proxy", ProxyCommand(backends=backends, port=self.proxy_port,
                                  extra=AUTH_OFF).argv(logfile=log),
            log)
        self.wait_healthy(3, 90)

    def view(self) -> dict[str, Any]:
        status, body = request(self.proxy_port, "GET", "/proxy/status")
        return json.loads(body) if status == 200 else {}

    def wait_healthy(self, healthy: int, deadline_s: float) -> None:
        def ready() -> bool:
            view = self.view()
            return bool(view.get("leader")) and sum(
                b["healthy"] for b in view.get("backends", [])) >= healthy

        self.procs.wait_ready(ready, what=f"{healthy} healthy replicas behind the proxy",
                              timeout=deadline_s)

    def wait_active(self, node: int, deadline_s: float) -> None:
        def active() -> bool:
            status, body = request(self.http[node], "GET", "/status")
            return status == 200 and json.loads(body).get("state") == "ACTIVE"

        self.procs.wait_ready(active, what=f"replica {node} ACTIVE again", timeout=deadline_s)

    def leader(self) -> int | None:
        leader = self.view().get("leader") or {}
        return leader.get("node_id")

    # -- the load -------------------------------------------------------------------------

    def seed(self) -> None:
        for number, size in enumerate(SONG_SIZES):
            self.upload(f"seed-{number}", size, seed=number)
        self.seeded = dict(self.songs)
        say(f"{len(self.songs)} songs to stream ({sum(SONG_SIZES) // MIB} MiB)")

    def upload(self, tag: str, size: int, seed: int) -> str | None:
        wav = self.work / f"{tag}.wav"
        digest = make_wav(wav, size, seed)
        data = wav.read_bytes()
        wav.unlink()
        status, body = request(self.proxy_port, "POST", f"/songs?title={tag}", data,
                               {"Content-Type": "audio/wav",
                                "Idempotency-Key": str(uuid.uuid4())})
        if status not in (200, 201):
            raise BenchError(f"upload {tag} answered {status}: {body[:200]!r}")
        song = json.loads(body)["song"]
        with self.lock:
            self.songs[song["id"]] = digest
        return str(song["id"])

    def listener(self, number: int) -> None:
        rng = random.Random(number)
        while not self.stop.is_set():
            song, digest = rng.choice(sorted(self.seeded.items()))
            try:
                status, body = request(self.proxy_port, "GET", f"/songs/{song}/stream")
            except (OSError, http.client.HTTPException) as exc:
                self.count(stream_errors=1, error=f"stream {song}: {exc!r}")
                continue
            if status != 200:
                self.count(stream_errors=1, error=f"stream {song}: HTTP {status}")
            elif hashlib.sha256(body).hexdigest() != digest:
                self.count(wrong_bytes=1, error=f"stream {song}: wrong bytes ({len(body)})")
            else:
                self.count(streams=1, stream_bytes=len(body))
            self.stop.wait(self.args.listen_pause)

    def writer(self, number: int) -> None:
        rng = random.Random(1000 + number)
        playlist: str | None = None
        index = 0
        while not self.stop.is_set():
            index += 1
            try:
                if playlist is None or index % 50 == 0:
                    status, body = self.json("POST", "/playlists", {"name": f"soak-{number}"})
                    playlist = json.loads(body)["playlist"]["id"] if status == 201 else None
                elif index % 3 == 0:
                    # A seeded song: another writer may be deleting one of its own just now.
                    song = rng.choice(sorted(self.seeded))
                    status, _ = self.json("POST", f"/playlists/{playlist}/items",
                                          {"song_id": song})
                else:
                    # Bytes of its own per writer: equal bytes are one song (uploads dedupe),
                    # which the other writer could delete under it.
                    mine = self.upload(f"w{number}-{index}", 64 * 1024,
                                       seed=10_000 + 1_000_000 * number + index)
                    status = 201
                    if index % 4 == 0 and mine:
                        status, _ = request(self.proxy_port, "DELETE", f"/songs/{mine}",
                                            headers={"Idempotency-Key": str(uuid.uuid4())})
                        with self.lock:
                            self.songs.pop(mine, None)
                ok = 200 <= status < 300
                self.count(writes=1, write_errors=0 if ok else 1,
                           error=None if ok else f"write answered {status}")
            except (OSError, http.client.HTTPException, BenchError, ValueError) as exc:
                self.count(writes=1, write_errors=1, error=f"write: {exc!r}")
            self.stop.wait(self.args.write_pause)

    def json(self, method: str, path: str, value: Any) -> tuple[int, bytes]:
        return request(self.proxy_port, method, path, json.dumps(value).encode(),
                       {"Content-Type": "application/json",
                        "Idempotency-Key": str(uuid.uuid4())})

    def count(self, error: str | None = None, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)
            if error:
                self.counters.error(f"{self.clock():.0f}s {error}")

    # -- faults and samples ---------------------------------------------------------------

    def killer(self) -> None:
        while not self.stop.wait(self.args.kill_every):
            node = self.leader() if self.args.victim == "leader" else int(self.args.victim)
            if node is None:
                continue
            name = f"replica {node}"
            at = self.clock()
            with self.children:
                self.processes[name].kill()
                self.processes[name].wait(10)
                for _ in self.procs.exited():
                    pass  # forget the child killed on purpose
                self.start_replica(node)
            try:
                self.wait_active(node, 120)
                back = round(self.clock() - at, 2)
            except Exception as exc:  # the soak goes on; the report says it
                back = None
                self.count(error=f"replica {node} not back: {exc}")
            self.kills.append({"at": round(at, 1), "node": node, "back_after_s": back})
            say(f"killed and restarted replica {node} at {at:.0f} s (back after {back} s)")

    def sampler(self) -> None:
        while True:
            at = self.clock()
            processes = {**self.processes, "client": None}
            for name, process in processes.items():
                pid = os.getpid() if process is None else process.pid
                found = read_proc(pid)
                if found is not None:
                    self.samples.append(Sample(round(at, 1), name, pid, *found))
            if self.stop.wait(self.args.sample):
                return

    def run(self) -> dict[str, Any]:
        self.start()
        self.seed()
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.listener, args=(n,), daemon=True)
                   for n in range(self.args.listeners)]
        threads += [threading.Thread(target=self.writer, args=(n,), daemon=True)
                    for n in range(self.args.writers)]
        threads += [threading.Thread(target=self.killer, daemon=True),
                    threading.Thread(target=self.sampler, daemon=True)]
        for thread in threads:
            thread.start()
        say(f"soaking for {self.args.minutes} min: {self.args.listeners} listeners, "
            f"{self.args.writers} writers, a kill every {self.args.kill_every:.0f} s "
            f"({self.args.victim})")
        end = time.monotonic() + self.args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            with self.children:
                for child in self.procs.exited():
                    self.count(error=f"{child.name} exited by itself "
                                     f"({child.process.returncode})")
            say(f"{self.clock():.0f} s: {self.counters.streams} streams, "
                f"{self.counters.writes} writes, "
                f"{self.counters.stream_errors + self.counters.write_errors} errors")
        self.stop.set()
        for thread in threads:
            thread.join(TIMEOUT * 2)
        return self.results()

    def results(self) -> dict[str, Any]:
        warmup = self.args.warmup * 60
        logs = {path.name: error_lines(path)
                for path in sorted(self.work.glob("*.log"))}
        return {
            "args": vars(self.args),
            "seconds": round(self.clock(), 1),
            "counters": attrs.asdict(self.counters),
            "kills": self.kills,
            "slopes": slopes(self.samples, warmup, self.args.restart_warmup),
            "logs": {name: {"expected": expected, "unexpected": len(unexpected),
                            "examples": unexpected[:5]}
                     for name, (expected, unexpected) in logs.items()},
            "samples": [attrs.asdict(s) for s in self.samples],
            "environment": environment(),
        }


def table(results: dict[str, Any]) -> str:
    lines = [f"soak: {results['seconds']:.0f} s, kills {len(results['kills'])}",
             f"{'process':10} {'pid':>7} {'samples':>7} "
             + " ".join(f"{m + '/h':>16}" for m in LIMITS) + "   first -> last"]
    for row in sorted(results["slopes"], key=lambda r: (r["process"], r["from_s"])):
        cells, ends = [], []
        for metric, limit in LIMITS.items():
            slope = row[metric]["slope_per_hour"]
            mark = "" if slope is None or abs(slope) <= limit else " (!)"
            cells.append(f"{'-' if slope is None else f'{slope:+.2f}'}{mark:>5}".rjust(16))
            ends.append(f"{row[metric]['first']}->{row[metric]['last']}")
        lines.append(f"{row['process']:10} {row['pid']:>7} {row['samples']:>7} "
                     + " ".join(cells) + "   " + ", ".join(ends))
    counters = results["counters"]
    lines.append(f"streams {counters['streams']} ({counters['stream_bytes'] / MIB:.0f} MiB), "
                 f"stream errors {counters['stream_errors']}, wrong bytes "
                 f"{counters['wrong_bytes']}; writes {counters['writes']}, write errors "
                 f"{counters['write_errors']}")
    for name, log in results["logs"].items():
        lines.append(f"{name}: {log['unexpected']} unexpected error lines "
                     f"({log['expected']} expected)"
                     + "".join(f"\n    {example}" for example in log["examples"][:3]))
    lines.append(f"(!) marks a slope above {LIMITS} per hour; the client row is the "
                 "reference: the same work, all run long")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds")
    parser.add_argument("--victim", default="1", help="a node id, or 'leader'")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes left out of slopes")
    parser.add_argument("--restart-warmup", type=float, default=60.0,
                        help="seconds of a restarted replica left out of its slopes")
    parser.add_argument("--listeners", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--listen-pause", type=float, default=0.2, help="seconds")
    parser.add_argument("--write-pause", type=float, default=0.2, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args(argv)
    if args.victim != "leader" and int(args.victim) not in NODES:
        parser.error(f"--victim must be one of {NODES} or 'leader'")
    if args.minutes <= 0 or args.kill_every <= 0 or args.sample <= 0:
        parser.error("--minutes, --kill-every and --sample must be positive")
    work = Path(tempfile.mkdtemp(prefix="dp-soak-"))
    procs = Supervisor(cwd=work)
    try:
        with terminate_on_sigterm():
            results = Soak(args, procs, work).run()
    finally:
        procs.stop_all()
    save_result("soak", results)
    print(table(results))
    if args.keep:
        print(f"logs in {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"soak: {exc}")
