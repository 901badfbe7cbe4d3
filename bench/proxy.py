"""Benchmark the proxy: chunk GETs and whole-song streams through it next to nginx on the same
replicas, and the stall a listener sees when the replica serving its download is killed.

Everything runs on 127.0.0.1 in one run, so the ratios mean something:

* three replicas in one elected cluster (multicast on 127.0.0.1, TTL 0), all started from
  copies of one data dir holding the same songs (as replication leaves them);
* ``twistd distpotify-proxy`` in front of the three (its defaults: reads by the lean client,
  GET bodies spliced), a second one with ``--splice off`` (the Agent for everything, bodies
  through Python: the path before issue 19), and nginx (``nginx-light``, installed with
  apt-get when missing) with one worker, an upstream of the two followers the proxy reads
  from, keepalive 64 and in-memory buffers;
* ``bench/twisted_relay.py`` on the same followers: twisted.web's Site and an Agent over a
  pool with backpressure and nothing else, the floor any proxy built as
  docs/architecture.md section 5.3 asks stands on; the proxy's distance from it is the cost
  of its own logic;
* ``bench/unguarded_proxy.py``: the same proxy without the guards of its internet face
  (twisted.web's stock channel instead of per-phase timeouts and connection caps, no browser
  security headers), so the cost of the guards shows as proxy / unguarded (target: within
  noise, >= 0.95). The proxies run with ``--max-connections-per-client 0``: wrk's
  connections all come from one address, and the accounting runs all the same;
* chunk GETs: ``wrk -t1 -c<N> -d<duration>s --latency`` cycling over every full 256 KiB
  chunk, for each ``--connections`` value; whole songs: the same over
  ``/songs/<id>/stream`` of every 16 MiB song, at ``--stream-connections``. The contenders
  take turns after a warm-up each, ``--rounds`` times; medians and per-round ratios are
  reported, with each contender's CPU (all its threads, and nginx's worker) per request and
  per MiB. Targets at 32 connections: proxy >= 0.6 x nginx req/s for chunks, >= 0.9 x
  nginx MiB/s for whole songs (1.0 the moonshot), proxy p99 < 100 ms for chunks;
* stalled: ``--stalled`` connections (2,000) from 40 loopback addresses, each sending half a
  request line and then nothing, held by the proxy and by nginx in turn: their resident
  memory and open descriptors before and while holding them, and how long until the
  proxy's header timeout (``--header-timeout``, 30 s by default) has closed them all;
* stall: ``--stall-rounds`` downloads of a long song through the proxy, read as fast as they
  come through a 64 KiB receive buffer; a few MiB in, the replica serving it gets SIGKILL.
  The longest wait between two reads after the kill is the stall (target < 200 ms),
  next to the longest wait of an undisturbed download; the bytes are checked by SHA-256 and
  the killed replica is restarted before the next round.

With ``--auth`` it measures what accounts cost instead (issue 17): chunk GETs through the
proxy in front of replicas that all run ``--auth on``, every request carrying the first
admin's bearer token (the replicas check it from memory; the proxy keys read-your-writes
by it), next to the same GETs through a second stack of three replicas and a proxy with
``--auth off`` and no token, in alternating rounds of the same run: req/s of both, the
ratio (target: on / off >= 0.95) and the CPU per request of each proxy and of its replicas.

Usage: ``.venv/bin/python bench/proxy.py [--duration 10] [--connections 32,256]
[--stream-connections 32] [--rounds 3] [--stall-rounds 5] [--stalled 2000] [--auth]
[--keep]``; prints a table and saves JSON to ``bench/results/proxy-<ts>.json`` (with
``--auth``: ``proxy-auth-<ts>.json``). Every process it starts is stopped (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import json
import os
import random
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    ProxyCommand,
    ReplicaCommand,
    Supervisor,
)

CHUNK_TARGET = 0.60
STREAM_TARGET = 0.90
GUARDS_TARGET = 0.95  # proxy / unguarded proxy: the guards cost no more than noise
P99_TARGET_MS = 100.0
STALL_TARGET_S = 0.2
AUTH_TARGET = 0.95  # --auth on with a bearer / --auth off: accounts cost no more than 5 %
# --auth: the first admin of the stack with accounts on, and its --metrics-token (for the
# bench's own reads of /status and /proxy/status).
ADMIN_PASSWORD = "bench-admin-password"
METRICS_TOKEN = "bench-metrics-token-0123456789"

# wrk's connections all come from 127.0.0.1: no cap per client, its accounting all the same.
PROXY_OPTIONS = (*AUTH_OFF, "--max-connections-per-client", "0")

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_max_temp_file_size 0;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = http_get(port, path, timeout=2, headers=headers)
    return json.loads(body) if status == 200 else None


def upload(port: int, path: Path) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=300, blocksize=256 * KIB)
    try:
        with open(path, "rb") as body:
            conn.request("POST", f"/songs?title={path.stem}", body=body, headers={
                "Content-Type": "audio/wav", "Content-Length": str(path.stat().st_size)})
            response = conn.getresponse()
            data = response.read()
    finally:
        conn.close()
    if response.status != 201:
        raise BenchError(f"upload of {path.name}: {response.status} {data[:300]!r}")
    song: dict[str, Any] = json.loads(data)["song"]
    return song


# ---------------------------------------------------------------- the cluster


class Cluster:
    """Three replicas of one cluster, the proxy, and nginx, on free ports of 127.0.0.1.
    ``auth``: every process with --auth on (the replicas make the first admin, and every
    process takes METRICS_TOKEN), else --auth off."""

    def __init__(self, procs: Supervisor, work: Path, chunk_kib: int, auth: bool = False
                 ) -> None:
        self.procs = procs
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.chunk_kib = chunk_kib
        self.auth = auth
        self.auth_options = ("--auth", "on", "--metrics-token", METRICS_TOKEN) if auth \
            else AUTH_OFF
        self.monitor = {"Authorization": f"Bearer {METRICS_TOKEN}"} if auth else {}
        self.name = f"bench-proxy-{os.getpid()}" + ("-auth" if auth else "")
        self.heartbeat_port = free_port(socket.SOCK_DGRAM)
        self.http = {node: free_port() for node in (1, 2, 3)}
        self.amp = {node: free_port() for node in (1, 2, 3)}
        self.replicas: dict[int, subprocess.Popen[bytes]] = {}
        self.proxy_port = free_port()
        self.nginx_port = free_port()
        self.relay_port = free_port()
        self.unguarded_port = free_port()
        self.plain_port = free_port()
        self.proxy: subprocess.Popen[bytes] | None = None
        self.key_file = work / "cluster.key"
        ensure_key_file(self.key_file)

    def replica_argv(self, node: int, cluster: str | None = None) -> list[str]:
        return ReplicaCommand(
            node_id=node, data_dir=self.work / f"node{node}", host=HOST, advertise_host=HOST,
            http_port=self.http[node], amp_port=self.amp[node], cluster=cluster or self.name,
            multicast_port=self.heartbeat_port, multicast_interface=HOST, multicast_ttl=0,
            cluster_key_file=self.key_file,
            extra=[*self.auth_options, "--chunk-size", f"{self.chunk_kib}K",
                   "--max-upload", "1G"],
        ).argv()

    def seed(self, sizes: list[int]) -> list[dict[str, Any]]:
        """Upload songs to replica 1 alone, stop it, and copy its data dir to 2 and 3."""
        say(f"seeding {len(sizes)} songs ({sum(sizes) // MIB} MiB) into one data dir")
        log = self.work / "seed.log"
        child = self.procs.start("seed", self.replica_argv(1, f"{self.name}-seed"), log,
                                 output=log)
        wait_until("seed replica", lambda: (get_json(self.http[1], "/status") or {}).get(
            "role") == "leader", 60)
        songs = []
        for number, size in enumerate(sizes):
            wav = self.work / f"song{number}.wav"
            make_wav(wav, size, seed=100 + number)
            songs.append(upload(self.http[1], wav))
            wav.unlink()
        self.procs.stop(child)
        for node in (2, 3):
            shutil.copytree(self.work / "node1", self.work / f"node{node}")
        return songs

    def copy_data(self, other: Cluster) -> None:
        """Start from copies of OTHER's data dirs (seeded, not started yet)."""
        for node in (1, 2, 3):
            shutil.copytree(other.work / f"node{node}", self.work / f"node{node}")

    def start_replica(self, node: int) -> None:
        log = self.work / f"node{node}.log"
        env = {"DISTPOTIFY_ADMIN_PASSWORD": ADMIN_PASSWORD} if self.auth else None
        self.replicas[node] = self.procs.start(f"replica {node}", self.replica_argv(node), log,
                                               output=log, env=env)

    def start(self) -> None:
        for node in (1, 2, 3):
            self.start_replica(node)
        log = self.work / "proxy.log"
        options = PROXY_OPTIONS
        if self.auth:  # the key signs its /status polls; the last --auth given wins
            options = (*PROXY_OPTIONS, "--cluster-key-file", str(self.key_file),
                       *self.auth_options)
        self.proxy = self.procs.start(
            "proxy", ProxyCommand(backends=self.backends(), port=self.proxy_port,
                                  extra=options).argv(), log, output=log)
        view = self.wait_view(3, 60)
        say(f"cluster up: leader node {view['leader']['node_id']}, proxy on {self.proxy_port}")

    def backends(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self.http.values()]

    def view(self, port: int | None = None) -> dict[str, Any]:
        view: dict[str, Any] = get_json(port or self.proxy_port, "/proxy/status", self.monitor)
        return view

    def log_in(self) -> str:
        """A session token of the first admin (--auth on), once the leader has made it."""
        # Not by trying to log in: the proxy makes an address wait after five failures.
        wait_until("the first admin on every replica", lambda: all(
            ((get_json(port, "/status", self.monitor) or {}).get("accounts") or {}).get("users")
            for port in self.http.values()), 60)
        body = json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode()
        conn = http.client.HTTPConnection(HOST, self.proxy_port, timeout=10)
        try:
            conn.request("POST", "/auth/login", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise BenchError(f"the first admin's login: {response.status} {answer[:200]!r}")
        token: str = json.loads(answer)["token"]
        return token

    def wait_view(self, healthy: int, deadline_s: float) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proxy is not None
            self.procs.check(self.proxy)
            view = self.view()
            ok = view and view["leader"] and len(view["readers"]) == 2 and sum(
                b["healthy"] for b in view["backends"]) == healthy
            return view if ok else None

        result: dict[str, Any] = wait_until("the proxy's view of the cluster", ready, deadline_s)
        return result

    def start_nginx(self) -> tuple[subprocess.Popen[bytes], str]:
        if shutil.which("nginx") is None:
            say("nginx is missing: apt-get install -y nginx-light")
            subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=True,
                           stdout=subprocess.DEVNULL, timeout=600)
        readers = self.view()["readers"]
        servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in readers)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.work / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            work=self.work, servers=servers, host=HOST, port=self.nginx_port,
            user="user root;" if os.geteuid() == 0 else ""))
        log = self.work / "nginx.log"
        child = self.procs.start("nginx", [shutil.which("nginx") or "nginx", "-p",
                                           str(self.work), "-c", str(conf)], log, output=log)
        wait_until("nginx", lambda: http_get(self.nginx_port, "/status", timeout=2)[0] == 200,
                   30)
        return child, ", ".join(readers)

    def start_unguarded(self) -> subprocess.Popen[bytes]:
        """The same proxy without timeouts, caps and security headers, for the ratio."""
        log = self.work / "unguarded.log"
        options = ProxyCommand(backends=self.backends(), port=self.unguarded_port,
                               extra=PROXY_OPTIONS).options()
        # -P: bench/ must not be on its path, where this file would shadow the proxy package.
        child = self.procs.start("unguarded proxy", [
            sys.executable, "-P", str(REPO / "bench" / "unguarded_proxy.py"), *options], log,
            output=log)

        def ready() -> bool:
            self.procs.check(child)
            view = self.view(self.unguarded_port)
            return bool(view and view["leader"] and len(view["readers"]) == 2)

        wait_until("the unguarded proxy's view of the cluster", ready, 60)
        return child

    def start_plain_proxy(self) -> subprocess.Popen[bytes]:
        """A second proxy with ``--splice off``: every body through the Agent and Python."""
        backends = [f"{HOST}:{port}" for port in self.http.values()]
        log = self.work / "proxy-plain.log"
        child = self.procs.start("proxy --splice off", ProxyCommand(
            backends=backends, port=self.plain_port,
            extra=[*PROXY_OPTIONS, "--splice", "off"]).argv(), log, output=log)
        wait_until("proxy --splice off", lambda: (get_json(self.plain_port, "/proxy/status")
                                                  or {}).get("readers"), 60)
        return child

    def start_relay(self) -> subprocess.Popen[bytes]:
        """bench/twisted_relay.py on the same followers as nginx: the floor under the proxy."""
        readers = self.view()["readers"]
        log = self.work / "relay.log"
        child = self.procs.start("twisted relay", [
            sys.executable, str(REPO / "bench" / "twisted_relay.py"), str(self.relay_port),
            ",".join(readers)], log, output=log)
        wait_until("twisted relay",
                   lambda: http_get(self.relay_port, "/status", timeout=2)[0] == 200, 30)
        return child


# ---------------------------------------------------------------- wrk


def verify(port: int, chunks: list[dict[str, Any]], headers: dict[str, str] | None = None
           ) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for chunk in chunks:
            conn.request("GET", chunk["path"], headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or hashlib.sha256(body).hexdigest() != chunk["sha256"]:
                raise BenchError(f"{chunk['path']} on port {port}: status {response.status},"
                                 f" {len(body)} bytes not matching the registry")
            if response.getheader("ETag") != f'"{chunk["sha256"]}"':
                raise BenchError(f"{chunk['path']} on port {port}: ETag"
                                 f" {response.getheader('ETag')!r}")
    finally:
        conn.close()


# ---------------------------------------------------------------- stall


def download(port: int, path: str, kill_after: int | None, kill: Callable[[str], None]
             ) -> dict[str, Any]:
    """Read ``path`` as fast as it comes; after ``kill_after`` bytes call ``kill(served_by)``.

    Returns the SHA-256, the size, and the longest gaps between reads before and after the kill.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    sock.settimeout(30)
    sock.connect((HOST, port))
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.sock = sock
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        served_by = response.getheader("X-Served-By") or "?"
        digest, size = hashlib.sha256(), 0
        gap_before = gap_after = 0.0
        killed_at: float | None = None
        last = time.monotonic()
        while True:
            block = response.read(64 * KIB)
            now = time.monotonic()
            gap = now - last
            last = now
            if killed_at is None:
                gap_before = max(gap_before, gap)
            else:
                gap_after = max(gap_after, gap)
            if not block:
                break
            digest.update(block)
            size += len(block)
            if kill_after is not None and killed_at is None and size >= kill_after:
                kill(served_by)
                killed_at = last = time.monotonic()
        return {"status": response.status, "served_by": served_by, "bytes": size,
                "sha256": digest.hexdigest(), "max_gap_s": gap_before,
                "stall_s": gap_after if killed_at is not None else None}
    finally:
        conn.close()


def stall_rounds(cluster: Cluster, song: dict[str, Any], rounds: int) -> dict[str, Any]:
    path = f"/songs/{song['id']}/stream"

    def no_kill(_: str) -> None:
        raise AssertionError("no kill in the baseline")

    baseline = download(cluster.proxy_port, path, None, no_kill)
    if baseline["sha256"] != song["sha256"]:
        raise BenchError("the undisturbed download does not match the song's SHA-256")
    say(f"stall: undisturbed download of {song['size'] // MIB} MiB, longest wait between reads"
        f" {baseline['max_gap_s'] * 1000:.1f} ms")
    results = []
    for number in range(rounds):
        killed: list[int] = []

        def kill(served_by: str, killed: list[int] = killed) -> None:
            node = int(served_by)
            cluster.replicas[node].kill()
            killed.append(node)

        before = cluster.view()["counters"]["resumes"]
        result = download(cluster.proxy_port, path, 4 * MIB + number * MIB, kill)
        result["resumes"] = cluster.view()["counters"]["resumes"] - before
        if result["sha256"] != song["sha256"] or result["bytes"] != song["size"]:
            raise BenchError(f"round {number + 1}: the resumed download differs from the song")
        results.append(result)
        say(f"stall round {number + 1}/{rounds}: killed node {killed[0]} after"
            f" {4 + number} MiB; stall {result['stall_s'] * 1000:.1f} ms, bytes exact")
        cluster.replicas[killed[0]].wait(10)
        cluster.start_replica(killed[0])
        cluster.wait_view(3, 60)
    stalls = [r["stall_s"] for r in results]
    return {
        "baseline_max_gap_s": baseline["max_gap_s"],
        "rounds": results,
        "median_stall_s": statistics.median(stalls),
        "max_stall_s": max(stalls),
    }


# ---------------------------------------------------------------- stalled connections


def raise_open_files(needed: int) -> None:
    """This process's soft RLIMIT_NOFILE up to ``needed`` (or the hard limit); the servers it
    starts inherit it, and the proxy's total cap follows from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_pid(child: subprocess.Popen[bytes]) -> int:
    """The process that holds the connections: nginx's one worker, or the child itself."""
    children = Path(f"/proc/{child.pid}/task/{child.pid}/children")
    workers = children.read_text().split() if children.exists() else []
    return int(workers[0]) if workers else child.pid


def hold_stalled(child: subprocess.Popen[bytes] | None, port: int, count: int,
                 wait_closed: bool) -> dict[str, Any]:
    """Open ``count`` connections that each send half a request line, measure the server
    holding them, and (``wait_closed``) wait until it has closed them all."""
    assert child is not None
    pid = server_pid(child)
    time.sleep(0.5)  # let the last benchmark's connections go
    rss_before, fds_before = rss_mib(pid), descriptors(pid)
    sockets: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        for n in range(count):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + n // 50}", 0))
            sock.connect((HOST, port))
            sock.sendall(b"GET /songs HTTP/1.1\r\nHost: bench\r\nAccept: app")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            sockets.append(sock)
        last_opened = time.monotonic()
        rss = fds = 0.0
        for _ in range(10):  # the server may still be accepting: take the peak
            rss, fds = max(rss, rss_mib(pid)), max(fds, descriptors(pid))
            time.sleep(0.1)
        result: dict[str, Any] = {
            "connections": count, "rss_before_mib": rss_before, "rss_mib": rss,
            "kib_per_connection": 1024 * (rss - rss_before) / count,
            "fds_before": fds_before, "fds": int(fds),
        }
        if wait_closed:
            open_ = set(sockets)
            deadline = last_opened + 120
            while open_ and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj  # type: ignore[assignment]
                    try:
                        data = sock.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        selector.unregister(sock)
                        open_.discard(sock)
            if open_:
                raise BenchError(f"{len(open_)} stalled connections still open after 120 s")
            header_timeout = get_json(port, "/proxy/status")["config"]["header_timeout"]
            result.update(closed_after_s=time.monotonic() - last_opened,
                          header_timeout_s=header_timeout)
        say(f"stalled: {count} held on port {port}: resident {rss_before:.1f} -> {rss:.1f} MiB,"
            f" descriptors {fds_before} -> {int(fds)}"
            + (f", all closed after {result['closed_after_s']:.1f} s" if wait_closed else ""))
        return result
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------- the benchmark


def benchmark(args: argparse.Namespace, procs: Supervisor, work: Path) -> dict[str, Any]:
    cluster = Cluster(procs, work, args.chunk_kib)
    sizes = [args.song_mib * MIB] * args.songs + [args.stall_mib * MIB]
    songs = cluster.seed(sizes)
    cluster.start()
    chunk_size = args.chunk_kib * KIB
    chunks: list[dict[str, Any]] = []
    for song in songs[:-1]:
        meta = get_json(cluster.http[1], f"/songs/{song['id']}")
        chunks += [{**c, "path": f"/songs/{song['id']}/chunks/{c['idx']}"}
                   for c in meta["chunks"] if c["size"] == chunk_size]
    random.Random(7).shuffle(chunks)
    nginx, upstream = cluster.start_nginx()
    assert cluster.proxy is not None
    relay = cluster.start_relay()
    unguarded = cluster.start_unguarded()
    plain = cluster.start_plain_proxy()
    servers = {"nginx": (cluster.nginx_port, nginx),
               "twisted": (cluster.relay_port, relay),
               "unguarded": (cluster.unguarded_port, unguarded),
               "proxy": (cluster.proxy_port, cluster.proxy),
               "proxy --splice off": (cluster.plain_port, plain)}
    for port, _ in servers.values():
        verify(port, chunks)
    say(f"verified all {len(chunks)} chunks through each of {', '.join(servers)}"
        " (status, SHA-256, ETag)")
    streams = [{"path": f"/songs/{song['id']}/stream", "sha256": song["sha256"]}
               for song in songs[:-1]]
    for port, _ in servers.values():
        verify(port, streams[:1])
    script = work / "cycle.lua"
    script.write_text(LUA)
    chunk_paths = work / "paths.txt"
    chunk_paths.write_text("".join(c["path"] + "\n" for c in chunks))
    stream_paths = work / "streams.txt"
    stream_paths.write_text("".join(s["path"] + "\n" for s in streams))
    workloads = [("chunk", chunk_paths, n) for n in args.connections]
    if args.stream_connections:
        workloads.append(("stream", stream_paths, args.stream_connections))

    runs: dict[str, dict[int, dict[str, list[dict[str, Any]]]]] = {}
    for number in range(args.rounds):
        for kind, paths, connections in workloads:
            for name, (port, child) in servers.items():
                say(f"round {number + 1}/{args.rounds} {kind} {name}, {connections}"
                    f" connections: warm-up {args.warmup} s, then {args.duration} s")
                result = measure(cluster, procs, name, port, child, paths, script, args,
                                 connections, kind)
                runs.setdefault(kind, {}).setdefault(connections, {}).setdefault(
                    name, []).append(result)
    procs.stop(relay)
    procs.stop(unguarded)
    procs.stop(plain)
    stalled = {}
    if args.stalled:
        stalled = {"proxy": hold_stalled(cluster.proxy, cluster.proxy_port, args.stalled,
                                         wait_closed=True),
                   "nginx": hold_stalled(nginx, cluster.nginx_port, args.stalled,
                                         wait_closed=False)}
    procs.stop(nginx)
    stall = stall_rounds(cluster, songs[-1], args.stall_rounds) if args.stall_rounds else None
    return {
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "chunk_kib": args.chunk_kib,
            "chunks_in_set": len(chunks), "nginx_upstream": upstream,
            "nginx": "1 worker, keepalive 64, proxy_buffers 16 64k, no temp files",
            "twisted": "bench/twisted_relay.py: Site + Agent + pool + backpressure, nothing else",
            "rounds": args.rounds, "stream_connections": args.stream_connections,
            "song_mib": args.song_mib,
        },
        "workloads": {kind: {str(n): {name: summarize(results) for name, results in by.items()}
                             for n, by in per.items()} for kind, per in runs.items()},
        "stalled": stalled,
        "stall": stall,
    }


def measure(cluster: Cluster, procs: Supervisor, name: str, port: int,
            child: subprocess.Popen[bytes], paths: Path, script: Path, args: argparse.Namespace,
            connections: int, kind: str, headers: tuple[str, ...] = (),
            replicas: list[subprocess.Popen[bytes]] | None = None) -> dict[str, Any]:
    """One wrk run (after its warm-up) with the server's CPU per request and per MiB;
    ``headers`` go with every request; with ``replicas``, their CPU per request too."""
    timeout = 60 if kind == "stream" else 2  # a whole song can take seconds
    if args.warmup:
        run_wrk(port, paths, script, args.warmup, connections, timeout=timeout, headers=headers)
    cpu = cpu_seconds(child.pid)
    replicas_cpu = sum(cpu_seconds(r.pid) for r in replicas or [])
    counters = cluster.view()["counters"] if name == "proxy" else None
    run = run_wrk(port, paths, script, args.duration, connections, timeout=timeout,
                  headers=headers)
    result = run.summary()
    procs.check(child)
    used = cpu_seconds(child.pid) - cpu
    result["cpu_s"] = used
    result["cpu_ms_per_req"] = 1000 * used / max(1, result["requests"])
    result["cpu_ms_per_mib"] = 1000 * used / max(1e-9, run.figures["bytes"] / MIB)
    if replicas:
        replicas_used = sum(cpu_seconds(r.pid) for r in replicas) - replicas_cpu
        result["replicas_cpu_ms_per_req"] = 1000 * replicas_used / max(1, result["requests"])
    if counters is not None:
        after = cluster.view()["counters"]
        result["proxy_counters"] = {k: after[k] - counters[k] for k in after}
    say(f"  {result['req_per_s']:.0f} req/s, {result['mib_per_s']:.0f} MiB/s,"
        f" p50 {result['latency_ms']['p50']:.1f} ms, p99 {result['latency_ms']['p99']:.1f} ms,"
        f" CPU {result['cpu_ms_per_req']:.3f} ms/req {result['cpu_ms_per_mib']:.3f} ms/MiB,"
        f" errors {result['errors']}, non-2xx {result['non_2xx']}"
        f" {result.get('proxy_counters', '')}")
    return result


def _latency(quantile: str, run: dict[str, Any]) -> float:
    return float(run["latency_ms"][quantile])


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, each figure on its own, and every run."""
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return float(statistics.median(get(r) for r in results))

    return {
        "req_per_s": med(lambda r: r["req_per_s"]),
        "mib_per_s": med(lambda r: r["mib_per_s"]),
        "cpu_ms_per_req": med(lambda r: r["cpu_ms_per_req"]),
        "cpu_ms_per_mib": med(lambda r: r["cpu_ms_per_mib"]),
        "latency_ms": {q: med(functools.partial(_latency, q)) for q in ("p50", "p99")},
        "errors": {k: sum(r["errors"][k] for r in results) for k in results[0]["errors"]},
        "non_2xx": sum(r["non_2xx"] for r in results),
        "runs": results,
    }


def benchmark_auth(args: argparse.Namespace, procs: Supervisor, work: Path) -> dict[str, Any]:
    """Chunk GETs through a proxy and replicas with --auth on, a bearer on every request, next
    to a second stack with --auth off and no token, in alternating rounds."""
    off = Cluster(procs, work / "auth-off", args.chunk_kib)
    on = Cluster(procs, work / "auth-on", args.chunk_kib, auth=True)
    songs = off.seed([args.song_mib * MIB] * args.songs)
    on.copy_data(off)
    off.start()
    on.start()
    token = on.log_in()
    bearer = {"Authorization": f"Bearer {token}"}
    chunk_size = args.chunk_kib * KIB
    chunks: list[dict[str, Any]] = []
    for song in songs:
        meta = get_json(off.http[1], f"/songs/{song['id']}")
        chunks += [{**c, "path": f"/songs/{song['id']}/chunks/{c['idx']}"}
                   for c in meta["chunks"] if c["size"] == chunk_size]
    random.Random(7).shuffle(chunks)
    assert off.proxy is not None and on.proxy is not None
    verify(off.proxy_port, chunks)
    verify(on.proxy_port, chunks, bearer)
    status, _, _ = http_get(on.proxy_port, chunks[0]["path"])
    if status != 401:
        raise BenchError(f"an anonymous chunk GET through the --auth on stack answered {status}")
    say(f"verified all {len(chunks)} chunks through both proxies (status, SHA-256, ETag);"
        " without the token the --auth on stack answers 401")
    script = work / "cycle.lua"
    script.write_text(LUA)
    chunk_paths = work / "paths.txt"
    chunk_paths.write_text("".join(c["path"] + "\n" for c in chunks))
    contenders = {
        "auth off": (off, (), off.proxy),
        "auth on + bearer": (on, (f"Authorization: Bearer {token}",), on.proxy),
    }
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for number in range(args.rounds):
        for connections in args.connections:
            for name, (cluster, headers, child) in contenders.items():
                say(f"round {number + 1}/{args.rounds} chunk {name}, {connections}"
                    f" connections: warm-up {args.warmup} s, then {args.duration} s")
                result = measure(cluster, procs, name, cluster.proxy_port, child, chunk_paths,
                                 script, args, connections, "chunk", headers=headers,
                                 replicas=list(cluster.replicas.values()))
                if result["non_2xx"]:
                    raise BenchError(f"{name}: {result['non_2xx']} answers were not 2xx")
                runs.setdefault(connections, {}).setdefault(name, []).append(result)
    return {
        "settings": {
            "mode": "auth", "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "chunk_kib": args.chunk_kib,
            "chunks_in_set": len(chunks), "rounds": args.rounds,
        },
        "workloads": {"chunk": {str(n): {name: summarize(results)
                                         for name, results in by.items()}
                                for n, by in runs.items()}},
    }


def report_auth(result: dict[str, Any]) -> str:
    s = result["settings"]
    env = result["environment"]
    lines = [
        f"Distpotify proxy benchmark, accounts (--auth) - {result['timestamp']}",
        f"  {env['cpus']} CPUs, Python {env['python']}, Twisted {env['twisted']}; load average"
        f" {env['loadavg_at_start'][0]:.2f} at start, {env['loadavg_at_end'][0]:.2f} at end",
        f"  wrk -t1 -d{s['duration_s']}s after {s['warmup_s']} s warm-up, {s['rounds']}"
        " alternating rounds, medians; two stacks of three replicas and a proxy: --auth off"
        " (no token) and --auth on (the first admin's bearer on every request)",
        "",
        f"Chunk GET ({s['chunk_kib']} KiB chunks, {s['chunks_in_set']} in the set)",
        f"  {'':28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'proxy CPU':>11}{'replicas':>10}",
        f"  {'':28}{'':>9}{'':>9}{'':>9}{'ms/req':>11}{'ms/req':>10}",
    ]
    for connections, by in result["workloads"]["chunk"].items():
        for name, r in by.items():
            replicas = statistics.median(x["replicas_cpu_ms_per_req"] for x in r["runs"])
            lines.append(
                f"  {name + ' -c' + connections:28}{r['req_per_s']:9.0f}"
                f"{r['latency_ms']['p50']:9.1f}{r['latency_ms']['p99']:9.1f}"
                f"{r['cpu_ms_per_req']:11.3f}{replicas:10.3f}")
        on, off = by["auth on + bearer"], by["auth off"]
        rounds = [a["req_per_s"] / b["req_per_s"]
                  for a, b in zip(on["runs"], off["runs"], strict=True)]
        ratio = statistics.median(rounds)
        lines.append(f"  on / off at -c{connections}: req/s {ratio:.3f}"
                     f" [{', '.join(f'{x:.3f}' for x in rounds)}]"
                     f" ({'within' if ratio >= AUTH_TARGET else 'BELOW'} {AUTH_TARGET:.2f})")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    env = result["environment"]
    lines = [
        f"Distpotify proxy benchmark - {result['timestamp']}",
        f"  {env['cpus']} CPUs, Python {env['python']}, Twisted {env['twisted']},"
        f" {env['nginx']}; load average {env['loadavg_at_start'][0]:.2f} at start,"
        f" {env['loadavg_at_end'][0]:.2f} at end",
        f"  wrk -t1 -d{s['duration_s']}s after {s['warmup_s']} s warm-up, {s['rounds']}"
        f" alternating rounds, medians; nginx: {s['nginx']}, upstream {s['nginx_upstream']}",
    ]
    titles = {"chunk": f"Chunk GET ({s['chunk_kib']} KiB chunks, {s['chunks_in_set']} in the set)",
              "stream": f"Whole-song streams (/songs/<id>/stream, {s['song_mib']} MiB each)"}
    for kind, per in result["workloads"].items():
        lines += ["", titles[kind],
                  f"  {'':24}{'req/s':>9}{'MiB/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'CPU ms/req':>11}{'CPU ms/MiB':>11}{'non-2xx':>8}{'errors':>7}"]
        for connections, by in per.items():
            for name, r in by.items():
                errors = sum(v for k, v in r["errors"].items() if k != "status")
                lines.append(
                    f"  {name + ' -c' + connections:24}{r['req_per_s']:9.0f}{r['mib_per_s']:9.0f}"
                    f"{r['latency_ms']['p50']:9.1f}{r['latency_ms']['p99']:9.1f}"
                    f"{r['cpu_ms_per_req']:11.3f}{r['cpu_ms_per_mib']:11.3f}{r['non_2xx']:8d}"
                    f"{errors:7d}")
            lines += ratios(kind, connections, by)
    stalled = result.get("stalled") or {}
    if stalled:
        lines += ["", f"Holding {stalled['proxy']['connections']} stalled half-requests (40"
                  " loopback addresses, half a request line each, then nothing)"]
        for name, held in stalled.items():
            line = (f"  {name:10} resident {held['rss_before_mib']:.1f} -> {held['rss_mib']:.1f}"
                    f" MiB ({held['kib_per_connection']:.1f} KiB each), descriptors"
                    f" {held['fds_before']} -> {held['fds']}")
            if held.get("closed_after_s") is not None:
                line += (f"; all closed {held['closed_after_s']:.1f} s after the last was"
                         f" opened (header timeout {held['header_timeout_s']:g} s)")
            lines.append(line)
    stall = result["stall"]
    if stall:
        stalls = ", ".join(f"{r['stall_s'] * 1000:.0f}" for r in stall["rounds"])
        verdict = "meets" if stall["max_stall_s"] < STALL_TARGET_S else "ABOVE"
        lines += [
            "",
            f"Stall when the serving replica gets SIGKILL ({len(stall['rounds'])} rounds, bytes"
            " checked by SHA-256)",
            f"  median {stall['median_stall_s'] * 1000:.0f} ms, max"
            f" {stall['max_stall_s'] * 1000:.0f} ms [{stalls}] ({verdict}"
            f" {STALL_TARGET_S * 1000:.0f} ms); undisturbed longest wait"
            f" {stall['baseline_max_gap_s'] * 1000:.0f} ms",
        ]
    return "\n".join(lines)


def ratios(kind: str, connections: str, by: dict[str, Any]) -> list[str]:
    """Each contender against nginx, per round (the same round's runs) and of the medians."""
    figure, target = ("req_per_s", CHUNK_TARGET) if kind == "chunk" else ("mib_per_s",
                                                                        STREAM_TARGET)
    nginx = by["nginx"]
    lines = []
    for name, r in by.items():
        if name == "nginx":
            continue
        rounds = [a[figure] / b[figure] for a, b in zip(r["runs"], nginx["runs"], strict=True)]
        ratio = statistics.median(rounds)
        line = (f"  {name} / nginx at -c{connections}: {figure.replace('_per_s', '/s')}"
                f" {ratio:.2f} [{', '.join(f'{x:.2f}' for x in rounds)}],"
                f" CPU per MiB x{r['cpu_ms_per_mib'] / nginx['cpu_ms_per_mib']:.2f}")
        if name == "proxy":
            line += f" ({'meets' if ratio >= target else 'BELOW'} {target:.2f})"
            if kind == "chunk" and connections == "32":
                p99 = r["latency_ms"]["p99"]
                line += (f"; p99 {p99:.1f} ms"
                         f" ({'meets' if p99 < P99_TARGET_MS else 'ABOVE'} {P99_TARGET_MS:.0f} ms)")
        lines.append(line)
    if "unguarded" in by:
        guarded = by["proxy"][figure] / by["unguarded"][figure]
        cpu = by["proxy"]["cpu_ms_per_req"] / max(1e-9, by["unguarded"]["cpu_ms_per_req"])
        lines.append(f"  proxy / unguarded at -c{connections}: {guarded:.2f}"
                     f" ({'within' if guarded >= GUARDS_TARGET else 'BELOW'}"
                     f" {GUARDS_TARGET:.2f}), CPU per request x{cpu:.2f}")
    return lines


def nginx_version() -> str:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (nginx.stderr or nginx.stdout).strip().removeprefix("nginx version: ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run [10]")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run [2]")
    p.add_argument("--connections", default="32,256",
                   type=lambda text: [int(n) for n in text.split(",")],
                   help="wrk connection counts, comma-separated [32,256]")
    p.add_argument("--stream-connections", type=int, default=32,
                   help="wrk connections of the whole-song workload, 0 for none [32]")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds over every contender; medians reported [3]")
    p.add_argument("--songs", type=int, default=4, help="songs in the chunk set [4]")
    p.add_argument("--song-mib", type=int, default=16, help="size of each of them [16]")
    p.add_argument("--stall-mib", type=int, default=48, help="size of the song killed under"
                   " its listener [48]")
    p.add_argument("--stall-rounds", type=int, default=5, help="kills measured, 0 for none [5]")
    p.add_argument("--stalled", type=int, default=2000, help="stalled connections held by the"
                   " proxy and by nginx, 0 for none [2000]")
    p.add_argument("--chunk-kib", type=int, default=256, help="replica --chunk-size [256]")
    p.add_argument("--auth", action="store_true", help="measure accounts instead: chunk GETs"
                   " with --auth on and a bearer next to --auth off (--connections,"
                   " --rounds, --songs apply; nothing else runs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if args.duration <= 0 or min(args.connections) < 1 or args.songs < 1 or args.rounds < 1:
        p.error("--duration, --connections, --songs and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stalled and not args.auth:
        raise_open_files(4 * args.stalled + 1024)  # children inherit it: the proxy's cap
    work = Path(tempfile.mkdtemp(prefix="distpotify-bench-proxy-"))
    procs = Supervisor(cwd=REPO)
    load_at_start = os.getloadavg()
    try:
        with terminate_on_sigterm():
            result = (benchmark_auth if args.auth else benchmark)(args, procs, work)
    except (BenchError, ChildError) as e:
        say(f"failed: {e}")
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    tools = {} if args.auth else {"nginx": nginx_version()}
    result["environment"] = {**environment(**tools), "loadavg_at_start": load_at_start}
    print(report_auth(result) if args.auth else report(result))
    if not args.no_save:
        save_result("proxy-auth" if args.auth else "proxy", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
