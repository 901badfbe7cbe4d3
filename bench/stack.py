"""What bench/library.py and bench/subsonic.py share: three replicas and the proxy on 127.0.0.1,
their library seeded once through the proxy and kept on disk between runs, and a persistent
HTTP client. Both run as scripts (the repository on their path), so it is imported as
``stack`` from the bench directory."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import Cluster, ReplicaProcess, wait_until

NODES = (1, 2, 3)


def say(text: str) -> None:
    """A progress line on stderr, marked with the benchmark's name."""
    print(f"[{Path(sys.argv[0]).stem}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Client:
    """One persistent HTTP/1.1 connection, reopened when the server closes it; ``headers`` go
    with every request."""

    def __init__(self, port: int, headers: dict[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        self._port = port
        self._headers = headers or {}
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port,
                                                        timeout=self._timeout)
            try:
                self._conn.request(method, path, body=body,
                                   headers={**self._headers, **(headers or {})})
                answer = self._conn.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def upload(port: int, numbers: range, song: Callable[[int], tuple[str, bytes, str]],
           clients: int, headers: dict[str, str] | None = None, every: int = 5000) -> float:
    """Songs ``numbers`` through the proxy by ``clients`` clients, ``song(n)`` giving the path,
    body and content type of song n's POST; uploads per second. Progress every ``every``."""
    local = threading.local()
    done = [0]
    lock = threading.Lock()

    def one(n: int) -> None:
        if not hasattr(local, "client"):
            local.client = Client(port, headers)
        path, body, content_type = song(n)
        for _ in range(20):  # an election under load answers 503: retry (same bytes dedupe)
            status, answer = local.client.call("POST", path, body,
                                               {"Content-Type": content_type})
            if status in (200, 201):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"upload {n} answered {status}: {answer[:200]!r}")
        with lock:
            done[0] += 1
            if done[0] % every == 0:
                say(f"  uploaded {numbers.start + done[0]}/{numbers.stop}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, numbers))
    return len(numbers) / (time.monotonic() - started)


@attrs.frozen
class Accounts:
    """Accounts on: the first admin, made at start with ``password``, and the metrics token the
    bench's /status reads carry."""

    password: str
    metrics_token: str

    @property
    def options(self) -> tuple[str, ...]:
        return ("--auth", "on", "--metrics-token", self.metrics_token)

    @property
    def monitor(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.metrics_token}"}


class Stack:
    """Three replicas and the proxy (accounts off, or on with ``accounts``), started on data
    dirs that may come from the cache."""

    def __init__(self, root: Path, accounts: Accounts | None = None) -> None:
        self.root = root
        self.started: list[ReplicaProcess] = []
        self.options = accounts.options if accounts else ()
        self.monitor = accounts.monitor if accounts else {}
        self.cluster = Cluster(root, self.started, *self.options)
        self.cluster.status_headers.update(self.monitor)
        self.nodes = [self.cluster.add(n, start=False) for n in NODES]
        if accounts:
            for node in self.nodes:
                node.env = {**node.env, "DISTPOTIFY_ADMIN_PASSWORD": accounts.password}
        self.proxy: ProxyProcess | None = None

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(timeout=600)
        wait_until(self.cluster.agreed_leader, timeout=60, what="a leader")
        self.proxy = ProxyProcess(self.root, self.nodes, "--cluster-key-file",
                                  str(self.cluster.key_file), *self.options)
        self.proxy.status_headers = self.monitor
        self.proxy.start()
        self.proxy.wait_view(lambda view: view.get("leader") is not None
                             and len(view.get("readers", ())) == len(NODES) - 1, timeout=60,
                             what="the proxy to know the leader and two readers")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for node in self.started:
            if node.process is not None and node.process.poll() is None:
                node.stop(timeout=60)

    def kill(self) -> None:
        if self.proxy is not None:
            self.proxy.kill()
        for node in self.started:
            node.kill()

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    def leader(self) -> ReplicaProcess:
        return self.cluster.leader(timeout=60)

    def totals(self, headers: dict[str, str] | None = None) -> list[int]:
        return [node.get("/songs?limit=1", headers).json()["total"] for node in self.nodes]

    def wait_converged(self, size: int, headers: dict[str, str] | None = None,
                       songs_per_s: float = 100) -> None:
        """Every replica at one head, holding the same songs, at least ``size`` of them (read
        with ``headers``), within 300 s or ``size / songs_per_s``. More is possible: an upload
        retried after a failover (elections happen on a loaded machine) may be stored twice,
        by two leaders that each had not seen the other's."""
        seen: list[Any] = []

        def equal() -> bool:
            statuses = [node.status() for node in self.nodes]
            if any(status is None for status in statuses):  # slow to answer: loaded machine
                return False
            try:
                totals = self.totals(headers)
            except (OSError, http.client.HTTPException):
                return False
            heads = {tuple(status["head"]) for status in statuses if status}
            seen[:] = [sorted(heads), totals]
            return len(heads) == 1 and len(set(totals)) == 1 and totals[0] >= size

        try:
            wait_until(equal, timeout=max(300.0, size / songs_per_s), interval=0.5,
                       what=f"every replica to hold {size} songs")
        except AssertionError as e:
            raise AssertionError(f"{e}; last seen heads and totals: {seen}") from None

    def save(self, target: Path) -> None:
        """The replicas' data dirs, copied to ``target`` after a clean stop (a partial copy is
        never used); then started again."""
        self.stop()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for node in self.nodes:
            shutil.copytree(node.data_dir, partial / node.data_dir.name)
        partial.rename(target)
        os.sync()  # as after restore
        self.start()

    def restore(self, seed: Path) -> None:
        """The replicas' data dirs replaced by those saved in ``seed``; then started."""
        self.stop()
        for node in self.nodes:
            shutil.rmtree(node.data_dir, ignore_errors=True)
            shutil.copytree(seed / node.data_dir.name, node.data_dir)
        # The copy leaves gigabytes to write back at 200,000 songs: flushed now, or the
        # idle and query figures that follow measure the disk's writeback, not the replicas.
        os.sync()
        self.start()
