"""Benchmark one replica: upload throughput, and chunk GET throughput next to static.File.

What it measures, all on 127.0.0.1 and all in one run so the ratios mean something:

* upload: wall time of ``POST /songs`` (a fresh, non-repeating PCM WAV of ``--upload-mib``
  MiB each run, until the 201), as MiB/s, next to two references on the same file: a plain
  copy into a new file with one fsync, and a split into chunk files each fsynced in turn
  (temp file, fsync, rename each; fsync the directory), the floor of an upload that fsyncs
  chunk by chunk, which uploads did before they fsynced a song's chunks together
  (docs/architecture.md section 2.6); issue 20's target is at least 0.8 of it;
* chunk GET: ``wrk -t1 -c<connections> -d<duration>s --latency`` cycling over the same set of
  full 256 KiB chunks against the replica (``/songs/<id>/chunks/<idx>``) and against
  ``twistd web --path <data-dir>/chunks`` (a ``twisted.web.static.File`` over the very same
  chunk files, ``/<id>_<idx>``), each run after a warm-up. ``twistd web`` logs every request
  to the twistd log and the replica logs only errors, so a second reference runs static.File
  with ``--logfile /dev/null``: that is the like-for-like one. The servers take turns for
  ``--rounds`` rounds and medians are reported, with the server's CPU time per request (all
  its threads, from /proc), which the machine's other load disturbs much less than req/s.
  Target: the replica reaches at least 1.5 x static.File's request rate (chunk bodies go
  out with sendfile(2); ``--no-sendfile`` measures the path through Python instead)
  (docs/architecture.md section 9: printed, never a CI gate).

Before timing, every chunk of the set is fetched once from every server and checked (200,
length, SHA-256 of the registry, and the replica's ETag); wrk's error counters and its
non-2xx count must stay at 0, and bytes read per response must match the chunk size.

Usage: ``.venv/bin/python bench/replica.py [--duration 10] [--connections 32]
[--upload-mib 50] [--rounds 3] [--pin]``; prints a table and saves JSON to
``bench/results/replica-<timestamp>.json``. Every process it starts is stopped (also on
Ctrl-C and SIGTERM), and its temp dir is removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    KIB,
    LUA,
    MIB,
    REPO,
    BenchError,
    cpu_seconds,
    environment,
    free_port,
    http_get,
    make_wav,
    run_wrk,
    save_result,
    say,
    terminate_on_sigterm,
    wait_until,
)

from distpotify.cli.cluster import ensure_key_file
from distpotify.cli.processes import (
    AUTH_OFF,
    ChildError,
    ReplicaCommand,
    Supervisor,
    twistd_command,
)

TARGET = 1.50

def replica_leader(port: int) -> dict[str, Any] | None:
    status, _, body = http_get(port, "/status", timeout=2)
    if status != 200:
        return None
    info = json.loads(body)
    return info if info.get("role") == "leader" else None


def upload(port: int, path: Path, timeout: float = 300) -> tuple[float, int, dict[str, Any]]:
    """POST the file as a raw audio/wav body; (seconds until the response, status, body)."""
    size = path.stat().st_size
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout, blocksize=256 * KIB)
    try:
        with open(path, "rb") as body:
            started = time.perf_counter()
            conn.request("POST", f"/songs?title={path.stem}", body=body, headers={
                "Content-Type": "audio/wav", "Content-Length": str(size),
            })
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
    finally:
        conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {"raw": data[:500].decode("utf-8", "replace")}
    return elapsed, response.status, parsed


# ---------------------------------------------------------------- data


def copy_fsync(src: Path, dst: Path) -> float:
    """Seconds to copy ``src`` into a new file with plain reads and writes, then fsync it."""
    started = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(MIB):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - started
    dst.unlink()
    return elapsed


def split_fsync(src: Path, dst_dir: Path, chunk_size: int) -> float:
    """Seconds to split ``src`` into chunk files, each fsynced in turn.

    Each chunk: written to a temp file, fsynced, renamed; then the directory is fsynced.
    This is the floor for an upload that fsyncs chunk by chunk (no HTTP, no hashing); the
    replica fsyncs a song's chunks together, so it may pass it.
    """
    dst_dir.mkdir()
    started = time.perf_counter()
    with open(src, "rb") as fin:
        idx = 0
        while block := fin.read(chunk_size):
            tmp = dst_dir / f"c_{idx}.tmp"
            with open(tmp, "wb") as fout:
                fout.write(block)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dst_dir / f"c_{idx}")
            idx += 1
    fd = os.open(dst_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    shutil.rmtree(dst_dir)
    return elapsed


def _serves(port: int, path: str) -> bool:
    return http_get(port, path, timeout=2)[0] == 200


def verify_chunks(port: int, chunks: list[dict[str, Any]], key: str, etag: bool) -> int:
    """GET every chunk once over one keep-alive connection; raise on any wrong answer."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for chunk in chunks:
            conn.request("GET", chunk[key])
            response = conn.getresponse()
            body = response.read()
            where = f"{chunk[key]} on port {port}"
            if response.status != 200:
                raise BenchError(f"{where}: status {response.status}")
            if len(body) != chunk["size"]:
                raise BenchError(f"{where}: {len(body)} bytes, expected {chunk['size']}")
            if hashlib.sha256(body).hexdigest() != chunk["sha256"]:
                raise BenchError(f"{where}: bytes differ from the registry's SHA-256")
            if etag and response.getheader("ETag") != f'"{chunk["sha256"]}"':
                raise BenchError(f"{where}: ETag {response.getheader('ETag')!r}")
    finally:
        conn.close()
    return len(chunks)


# ---------------------------------------------------------------- wrk


def measure(port: int, paths_file: Path, script: Path, duration: int, connections: int,
            chunk_size: int, prefix: list[str]) -> dict[str, Any]:
    """One wrk run over full-size chunks, with the checks and figures the report needs."""
    run = run_wrk(port, paths_file, script, duration, connections, prefix)
    figures, argv = run.figures, run.argv
    seconds = run.seconds
    requests = figures["requests"]
    # bytes read include headers and the partial bodies in flight when the run stops.
    per_response = figures["bytes"] / requests if requests else 0.0
    size_ok = requests > 0 and (
        chunk_size <= per_response <= chunk_size + 1024 + connections * chunk_size / requests
    )
    return {
        "command": " ".join(argv[len(prefix):][:7]) + f" -s script.lua {argv[-3]} -- paths.txt",
        "seconds": seconds,
        "requests": requests,
        "bytes": figures["bytes"],
        "req_per_s": requests / seconds,
        "mib_per_s": figures["bytes"] / seconds / MIB,
        "payload_mib_per_s": requests * chunk_size / seconds / MIB,
        "latency_ms": {k: v / 1000 for k, v in figures["latency_us"].items()},
        "errors": figures["errors"],
        "non_2xx": run.non_2xx,
        "bytes_per_response": round(per_response, 1),
        "sizes_ok": size_ok,
        "stdout": run.stdout,
    }


# ---------------------------------------------------------------- the benchmark


def benchmark(args: argparse.Namespace, procs: Supervisor, work: Path) -> dict[str, Any]:
    chunk_size = args.chunk_kib * KIB
    data_dir = work / "node1"
    http_port, amp_port, udp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    ensure_key_file(work / "cluster.key")
    replica_argv = ReplicaCommand(
        node_id=1, data_dir=data_dir, host=HOST, advertise_host=HOST, http_port=http_port,
        amp_port=amp_port, cluster=f"bench-{os.getpid()}", multicast_port=udp_port,
        cluster_key_file=work / "cluster.key",
        extra=[*AUTH_OFF, "--chunk-size", f"{args.chunk_kib}K", "--max-upload", "1G",
               "--sendfile", "off" if args.no_sendfile else "on"],
    ).argv()
    say(f"starting replica on {HOST}:{http_port} (data dir {data_dir})")
    log = work / "replica.log"
    replica = procs.start("replica", replica_argv, log, output=log)
    wait_until("replica /status (leader)", lambda: replica_leader(http_port), 60, procs, replica)

    # uploads: fresh content each run, with copy+fsync of the same file as the reference
    upload_runs = []
    songs: list[str] = []
    for run in range(args.upload_runs):
        wav = work / f"bench-upload-{run}.wav"
        sha = make_wav(wav, args.upload_mib * MIB, seed=1000 + run)
        size = wav.stat().st_size
        copy_s = copy_fsync(wav, work / "copy.tmp")
        split_s = split_fsync(wav, work / "split", chunk_size)
        seconds, status, body = upload(http_port, wav)
        procs.check(replica)
        if status != 201:
            raise BenchError(f"upload {run}: status {status}: {body}")
        song = body["song"]
        expected_chunks = -(-size // chunk_size)
        if song["sha256"] != sha or song["chunk_count"] != expected_chunks:
            raise BenchError(f"upload {run}: stored song does not match the file: {song}")
        songs.append(song["id"])
        upload_runs.append({
            "bytes": size, "seconds": seconds, "mib_per_s": size / MIB / seconds,
            "copy_fsync_seconds": copy_s, "copy_fsync_mib_per_s": size / MIB / copy_s,
            "split_fsync_seconds": split_s, "split_fsync_mib_per_s": size / MIB / split_s,
        })
        say(f"upload {run + 1}/{args.upload_runs}: {size / MIB:.1f} MiB in {seconds:.3f} s "
            f"= {size / MIB / seconds:.1f} MiB/s (copy+fsync {size / MIB / copy_s:.1f},"
            f" split+fsync {size / MIB / split_s:.1f} MiB/s)")
        wav.unlink()
    for number in range(args.extra_songs):
        wav = work / f"bench-extra-{number}.wav"
        make_wav(wav, args.extra_mib * MIB, seed=2000 + number)
        _, status, uploaded = upload(http_port, wav)
        if status != 201:
            raise BenchError(f"extra upload {number}: status {status}: {uploaded}")
        songs.append(uploaded["song"]["id"])
        wav.unlink()

    # the chunk set: every full-size chunk of every song, same order for both servers
    chunks: list[dict[str, Any]] = []
    for song_id in songs:
        status, _, raw = http_get(http_port, f"/songs/{song_id}")
        if status != 200:
            raise BenchError(f"GET /songs/{song_id}: status {status}")
        for chunk in json.loads(raw)["chunks"]:
            if chunk["size"] == chunk_size:
                chunks.append({
                    **chunk,
                    "replica": f"/songs/{song_id}/chunks/{chunk['idx']}",
                    "static": f"/{song_id}_{chunk['idx']}",
                })
    random.Random(7).shuffle(chunks)
    if not chunks:
        raise BenchError("no full-size chunks to read")
    say(f"{len(chunks)} chunks of {args.chunk_kib} KiB from {len(songs)} songs")

    # references: static.File over the same directory, as ``twistd web`` starts it (every
    # access logged to the twistd log) and with its access log sent to /dev/null (the replica
    # logs only errors, so this one is the like-for-like comparison)
    servers = [Server("replica", http_port, "replica", replica, replica_argv)]
    variants: list[tuple[str, list[str]]] = [("static.File", [])]
    if not args.no_quiet_static:
        variants.append(("static.File -l null", ["--logfile", os.devnull]))
    for name, extra in variants:
        port = free_port()
        argv = twistd_command("web", "--path", str(data_dir / "chunks"),
                              "--listen", f"tcp:{port}:interface={HOST}", *extra)
        say(f"starting {name} on {HOST}:{port}")
        log = work / f"static-{len(servers)}.log"
        child = procs.start(name, argv, log, output=log)
        servers.append(Server(name, port, "static", child, argv))
    probe = chunks[0]["static"]
    for server in servers[1:]:
        wait_until(server.name, functools.partial(_serves, server.port, probe), 60, procs,
                   server.child)
    for server in servers:
        verify_chunks(server.port, chunks, server.key, etag=server.key == "replica")
    say(f"verified all {len(chunks)} chunks on every server (status, length, SHA-256)")
    if args.pin:
        pin(servers)

    script = work / "cycle.lua"
    script.write_text(LUA)
    for key in ("replica", "static"):
        (work / f"paths-{key}.txt").write_text("".join(chunk[key] + "\n" for chunk in chunks))
    wrk_prefix = ["taskset", "-c", pin_cpus()[0]] if args.pin else []
    rounds: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
    for number in range(args.rounds):
        # Servers take turns within a round, so drift and neighbours hit them alike.
        for server in servers:
            paths = work / f"paths-{server.key}.txt"
            say(f"round {number + 1}/{args.rounds} {server.name}: warm-up {args.warmup:g} s,"
                f" then {args.duration:g} s")
            if args.warmup > 0:
                measure(server.port, paths, script, args.warmup, args.connections, chunk_size,
                        wrk_prefix)
            cpu_before = cpu_seconds(server.child.pid)
            result = measure(server.port, paths, script, args.duration, args.connections,
                             chunk_size, wrk_prefix)
            procs.check(server.child)
            cpu = cpu_seconds(server.child.pid) - cpu_before
            # CPU per request (all threads of the server) is far less sensitive than req/s
            # to whatever else the machine is running.
            result["server_cpu_s"] = cpu
            result["cpu_ms_per_req"] = 1000 * cpu / max(1, result["requests"])
            latency = result["latency_ms"]
            say(f"  {result['req_per_s']:.1f} req/s, {result['mib_per_s']:.1f} MiB/s,"
                f" p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms,"
                f" server CPU {result['cpu_ms_per_req']:.3f} ms/req")
            rounds[server.name].append(result)
    for server in reversed(servers):
        procs.stop(server.child)

    return {
        "kind": "replica",
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "connections": args.connections, "wrk_threads": 1, "chunk_kib": args.chunk_kib,
            "upload_mib": args.upload_mib, "upload_runs": args.upload_runs,
            "extra_songs": args.extra_songs, "extra_mib": args.extra_mib,
            "chunks_in_set": len(chunks), "songs": len(songs), "pinned": args.pin,
            "sendfile": not args.no_sendfile,
        },
        "commands": {server.name: redact(server.argv, work) for server in servers},
        "upload": {
            "runs": upload_runs,
            "median_mib_per_s": statistics.median(r["mib_per_s"] for r in upload_runs),
            "median_copy_fsync_mib_per_s":
                statistics.median(r["copy_fsync_mib_per_s"] for r in upload_runs),
            "median_split_fsync_mib_per_s":
                statistics.median(r["split_fsync_mib_per_s"] for r in upload_runs),
        },
        "chunk_get": {name: summarize(runs) for name, runs in rounds.items()},
    }


@dataclasses.dataclass
class Server:
    name: str
    port: int
    key: str
    child: subprocess.Popen[bytes]
    argv: list[str]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds (each figure on its own), plus every run."""
    def med(get: Any) -> float:
        return float(statistics.median(get(run) for run in runs))

    return {
        "req_per_s": med(lambda r: r["req_per_s"]),
        "mib_per_s": med(lambda r: r["mib_per_s"]),
        "cpu_ms_per_req": med(lambda r: r["cpu_ms_per_req"]),
        "latency_ms": {q: med(lambda r, q=q: r["latency_ms"][q]) for q in ("p50", "p90", "p99")},
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "errors": {k: sum(r["errors"][k] for r in runs) for k in runs[0]["errors"]},
        "sizes_ok": all(r["sizes_ok"] for r in runs),
        "runs": runs,
    }


def pin_cpus() -> tuple[str, str]:
    """(CPUs for wrk, CPUs for the servers): the last CPU serves, the others load."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("--pin needs at least 2 CPUs")
    return ",".join(map(str, cpus[:-1])), str(cpus[-1])


def pin(servers: list[Server]) -> None:
    _, serving = pin_cpus()
    for server in servers:
        subprocess.run(["taskset", "-a", "-p", "-c", serving, str(server.child.pid)],
                       check=True, capture_output=True)


def redact(argv: list[str], work: Path) -> str:
    return " ".join(argv).replace(str(work), "$TMP")


def wrk_version() -> str:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return " ".join((wrk.stdout or wrk.stderr or "wrk ?").split()[:2])


def _git_head() -> str | None:
    # read-only
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def ratios(gets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The replica against each reference; the verdict uses the median per-round ratio."""
    replica = gets["replica"]
    out = {}
    for name, g in gets.items():
        if name == "replica":
            continue
        pairs = zip(replica["runs"], g["runs"], strict=True)
        by_round = [a["req_per_s"] / b["req_per_s"] for a, b in pairs]
        ratio = statistics.median(by_round)
        out[name] = {
            "req_per_s": ratio,
            "req_per_s_by_round": by_round,
            "req_per_s_of_medians": replica["req_per_s"] / g["req_per_s"],
            "mib_per_s_of_medians": replica["mib_per_s"] / g["mib_per_s"],
            "cpu_per_req_factor": replica["cpu_ms_per_req"] / g["cpu_ms_per_req"],
            "p50_factor": replica["latency_ms"]["p50"] / g["latency_ms"]["p50"],
            "p99_factor": replica["latency_ms"]["p99"] / g["latency_ms"]["p99"],
            "target": TARGET,
            "meets_target": ratio >= TARGET,
        }
    return out


def report(result: dict[str, Any]) -> str:
    up = result["upload"]
    s = result["settings"]
    env = result["environment"]
    gets = result["chunk_get"]
    up_ratio = up["median_mib_per_s"] / up["median_copy_fsync_mib_per_s"]
    split_ratio = up["median_mib_per_s"] / up["median_split_fsync_mib_per_s"]
    runs = ", ".join(f"{r['mib_per_s']:.1f}" for r in up["runs"])
    copies = ", ".join(f"{r['copy_fsync_mib_per_s']:.1f}" for r in up["runs"])
    splits = ", ".join(f"{r['split_fsync_mib_per_s']:.1f}" for r in up["runs"])
    lines = [
        f"Distpotify replica benchmark - {result['timestamp']}",
        f"  {env['cpus']} CPUs, Python {env['python']}, Twisted {env['twisted']}, {env['wrk']};"
        f" load average {env['loadavg_at_start'][0]:.2f} at start,"
        f" {env['loadavg_at_end'][0]:.2f} at end",
        "",
        f"Upload ({s['upload_mib']} MiB WAV, {s['upload_runs']} runs, median)    MiB/s   runs",
        f"  replica POST /songs -> 201           {up['median_mib_per_s']:8.1f}   [{runs}]",
        f"  copy + fsync of the same file        {up['median_copy_fsync_mib_per_s']:8.1f}"
        f"   [{copies}]",
        f"  {'split into chunk files, fsync each':37}{up['median_split_fsync_mib_per_s']:8.1f}"
        f"   [{splits}]",
        f"  ratio upload / copy+fsync            {up_ratio:8.2f}",
        f"  ratio upload / split+fsync           {split_ratio:8.2f}",
        "",
        f"Chunk GET ({s['chunk_kib']} KiB chunks, {s['chunks_in_set']} in the set,"
        f" wrk -t1 -c{s['connections']} -d{s['duration_s']:g}s --latency, {s['warmup_s']:g} s"
        f" warm-up each, median of {s['rounds']} alternating rounds"
        f"{', pinned' if s['pinned'] else ''}"
        f"{'' if s.get('sendfile', True) else ', replica --sendfile off'})",
        f"  {'':22}{'req/s':>9}{'MiB/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>11}"
        f"{'non-2xx':>9}{'errors':>8}   req/s per round",
    ]
    for name, g in gets.items():
        errors = sum(v for k, v in g["errors"].items() if k != "status")
        per_round = ", ".join(f"{r['req_per_s']:.0f}" for r in g["runs"])
        lines.append(
            f"  {name:22}{g['req_per_s']:9.1f}{g['mib_per_s']:9.1f}"
            f"{g['latency_ms']['p50']:9.2f}{g['latency_ms']['p99']:9.2f}"
            f"{g['cpu_ms_per_req']:11.3f}{g['non_2xx']:9d}{errors:8d}   [{per_round}]"
        )
    for name, r in result["ratios"].items():
        rounds = ", ".join(f"{x:.2f}" for x in r["req_per_s_by_round"])
        lines += [
            f"  replica / {name}: req/s {r['req_per_s']:.2f} (median of the per-round ratios"
            f" [{rounds}]; ratio of the medians {r['req_per_s_of_medians']:.2f}),"
            f" {'meets' if r['meets_target'] else 'BELOW'} the target {TARGET:.2f}",
            f"      CPU per request x{r['cpu_per_req_factor']:.2f} (so at most"
            f" {1 / r['cpu_per_req_factor']:.2f} of its req/s on a full core),"
            f" p50 x{r['p50_factor']:.2f}, p99 x{r['p99_factor']:.2f}",
        ]
    spread = max(
        max(r["req_per_s"] for r in g["runs"]) / max(1e-9, min(r["req_per_s"] for r in g["runs"]))
        for g in gets.values()
    )
    busy = env["loadavg_at_start"][0] > 1.0
    if spread > 1.25 or busy:
        lines.append(
            f"  NOISY: req/s varied up to x{spread:.2f} between rounds, load average"
            f" {env['loadavg_at_start'][0]:.2f} at start: other processes share these CPUs;"
            " trust the CPU-per-request factors more than req/s"
        )
    for name, g in gets.items():
        if g["non_2xx"] or any(g["errors"].values()) or not g["sizes_ok"]:
            sizes = [r["bytes_per_response"] for r in g["runs"]]
            lines.append(f"  WARNING {name}: non-2xx {g['non_2xx']}, errors {g['errors']},"
                         f" bytes per response {sizes}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run [10]")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up, 0 for none [2]")
    p.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    p.add_argument("--upload-mib", type=int, default=50, help="size of each timed upload [50]")
    p.add_argument("--upload-runs", type=int, default=3, help="timed uploads [3]")
    p.add_argument("--extra-songs", type=int, default=3,
                   help="more (untimed) songs uploaded to widen the chunk set [3]")
    p.add_argument("--extra-mib", type=int, default=16, help="size of each extra song [16]")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating wrk rounds over all servers; medians are reported [3]")
    p.add_argument("--pin", action="store_true",
                   help="pin the servers to the last CPU and wrk to the others (taskset)")
    p.add_argument("--no-quiet-static", action="store_true",
                   help="skip the second reference (static.File with --logfile /dev/null)")
    p.add_argument("--chunk-kib", type=int, default=256, help="replica --chunk-size [256]")
    p.add_argument("--no-sendfile", action="store_true",
                   help="start the replica with --sendfile off (chunks read and written by"
                   " Python), to compare with a run that sends them with sendfile(2)")
    p.add_argument("--tmp-dir", type=Path, default=None,
                   help="where the temp dir goes [system default]")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.upload_mib < 1 or args.upload_runs < 1 \
            or args.rounds < 1:
        p.error("--duration, --connections, --upload-mib, --upload-runs and --rounds"
                " must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    procs = Supervisor(cwd=REPO)
    work = Path(tempfile.mkdtemp(prefix="distpotify-bench-", dir=args.tmp_dir))
    started = time.monotonic()
    load_at_start = os.getloadavg()
    try:
        with terminate_on_sigterm():
            result = benchmark(args, procs, work)
    except (BenchError, ChildError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted, stopping what it started", file=sys.stderr)
        return 130
    except SystemExit:
        print("bench: terminated, stopping what it started", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["timestamp"] = time.strftime("%Y%m%dT%H%M%S")
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["environment"] = {**environment(wrk=wrk_version(), git_head=_git_head()),
                             "loadavg_at_start": load_at_start}
    result["ratios"] = ratios(result["chunk_get"])
    text = report(result)
    print(text, flush=True)
    if not args.no_save:
        result["table"] = text
        save_result("replica", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
