"""Replication lag and anti-entropy repair cost, measured on real replicas on 127.0.0.1.

1. Lag: three replicas; small songs uploaded to the leader at 20 and 100 writes/s (bounded
   runs); for each, the time from the leader's 201 to the song being served by both followers.
   Target: p99 under 100 ms at 20 writes/s. With --without-keys TREE (a checkout from
   before cluster keys, see bench/keyless.py) the same runs are made on that code too, and
   the p99s compared.
2. Repair: two replicas share a library of 20,000 song rows (written into their databases
   while stopped); node 1 holds 10 newer rows, which node 2 (the leader, so nothing is
   pushed to it) lacks, and no longer their ops (its oplog compacted past them, so the new
   leader's catch-up cannot pull them); started with a 1 s anti-entropy interval, node 2's
   first round pulls the difference. Reports the round's time and bytes next to the
   size of a full copy of the rows. Target: under 1 s.

    .venv/bin/python bench/replication.py [--seconds 10] [--without-keys /tmp/dp-keyless]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keyless
from common import save_result

from distpotify.model import Op, Version
from distpotify.store.metadata import MetadataDB
from tests.helpers.replica import STARTUP, Cluster, ReplicaProcess, request, wait_until

LIBRARY = 20_000


def small_song(n: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(random.Random(n).randbytes(4000))
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_lag(cluster: Cluster, rate: int, seconds: float, offset: int) -> dict[str, float]:
    leader_id = wait_until(cluster.agreed_leader, timeout=4 * STARTUP, what="agreement")["node_id"]
    leader = cluster.nodes[leader_id]
    followers = [n for n in cluster.nodes.values() if n is not leader]
    lags: list[float] = []
    lock = threading.Lock()

    def watch(song_id: str, acked: float) -> None:
        deadline = acked + 5.0
        pending = list(followers)
        while pending and time.monotonic() < deadline:
            pending = [f for f in pending
                       if request(f.http_port, "GET", f"/songs/{song_id}", timeout=2).status
                       != 200]
            if pending:
                time.sleep(0.001)
        with lock:
            lags.append(time.monotonic() - acked if not pending else float("inf"))

    count = int(rate * seconds)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for n in range(count):
            due = start + n / rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            answer = leader.post("/songs", small_song(offset + n), "audio/wav")
            acked = time.monotonic()
            assert answer.status == 201, answer.body
            pool.submit(watch, answer.json()["song"]["id"], acked)
    achieved = count / (time.monotonic() - start)
    ms = [lag * 1000 for lag in lags]
    return {"target_rate": rate, "achieved_rate": round(achieved, 1), "writes": count,
            "median_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1)}


def song_rows(version: int, n: int, title: str) -> list[Op]:
    return [Op(Version(version, 1, i + 1), "songs", f"{i:08x}-0000-4000-8000-000000000000",
               {"title": f"{title} {i}", "artist": "Bench", "album": "Rows", "size": 4044,
                "sha256": f"{i:064x}", "chunk_size": 262144, "chunk_count": 0, "mime": "audio/wav",
                "created_at": "2026-01-01T00:00:00.000Z", "deleted": 0}) for i in range(n)]


def measure_repair(root: Path, started: list[ReplicaProcess]) -> dict[str, float]:
    cluster = Cluster(root, started, "--anti-entropy-interval", "1")
    nodes = [cluster.add(node_id, start=False) for node_id in (1, 2)]
    shared = song_rows(1, LIBRARY, "Song")
    for node in nodes:
        node.data_dir.mkdir(parents=True)
        db = MetadataDB(node.data_dir / "metadata.sqlite3", node.node_id)
        db.apply_ops(shared)
        if node.node_id == 1:
            edited = song_rows(2, 10, "Edited")
            db.apply_ops(edited)
            # Their ops are gone (compacted, all but the head's), as after a partition
            # outlived by the oplog: the new leader's catch-up cannot pull them by ops, so
            # anti-entropy must.
            while db.compact_oplog(edited[-2].version):
                pass
        db.close()
    # Node 2 first, and leading before node 1 starts: a node 1 up first would found the
    # cluster itself, with the newer head, and node 2 would take its snapshot instead.
    nodes[1].start()
    wait_until(lambda: cluster.agreed_leader([nodes[1]]), timeout=STARTUP,
               what="node 2 to lead")
    nodes[0].start(wait=False)

    def repaired() -> dict | None:
        status = nodes[1].status()
        last = status and status["replication"]["anti_entropy"]["last"]
        return last if last and last["rows_pulled"] else None

    last = wait_until(repaired, timeout=STARTUP, what="the first anti-entropy round")
    full = len(json.dumps([op.to_json() for op in shared]).encode())
    return {"rows": LIBRARY, "divergent": 10, "rows_pulled": last["rows_pulled"],
            "round_seconds": last["seconds"], "bytes_received": last["bytes_received"],
            "full_copy_bytes": full,
            "ratio": round(last["bytes_received"] / full, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--without-keys", type=Path, metavar="TREE",
                        help="also measure the lag on a checkout from before cluster keys")
    args = parser.parse_args()
    results: dict[str, object] = {}
    lag: dict[str, list[dict[str, float]]] = {}
    started: list[ReplicaProcess] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dp-repl-") as tmp:
            for variant, tree in keyless.variants(args.without_keys):
                cluster = Cluster(Path(tmp) / f"lag-{tree is None}", started)
                for node_id in (1, 2, 3):
                    node = cluster.add(node_id, start=False)
                    (keyless.run_from(node, tree) if tree else node).start(wait=False)
                lag[variant] = []
                for rate in (20, 100):
                    lag[variant].append(measure_lag(cluster, rate, args.seconds, rate * 100_000))
                    print(f"{variant}: {lag[variant][-1]}", flush=True)
                for node in started:
                    node.kill()
            results["lag"] = lag
            results["repair"] = measure_repair(Path(tmp) / "repair", started)
    finally:
        for node in started:
            node.kill()
    print("\nreplication lag: leader's 201 -> served by both followers (target with keys:"
          " p99 < 100 ms @20/s)")
    print(f"{'':8} {'rate':>6} {'achieved':>9} {'writes':>7} {'median':>9} {'p99':>9} {'max':>9}")
    for variant, rows in lag.items():
        for row in rows:
            print(f"{variant:8} {row['target_rate']:>5}/s {row['achieved_rate']:>8}/s"
                  f" {row['writes']:>7} {row['median_ms']:>7}ms {row['p99_ms']:>7}ms"
                  f" {row['max_ms']:>7}ms")
    if keyless.WITHOUT_KEYS in lag:
        for row, reference in zip(lag[keyless.WITH_KEYS], lag[keyless.WITHOUT_KEYS],
                                  strict=True):
            print(f"{row['target_rate']}/s: p99 with keys / without ="
                  f" {row['p99_ms'] / max(reference['p99_ms'], 0.1):.2f}")
    repair = results["repair"]
    print(f"\nanti-entropy: {repair['divergent']} divergent rows among {repair['rows']:,}"  # type: ignore[index]
          f" repaired in {repair['round_seconds']} s, {repair['bytes_received']:,} bytes"  # type: ignore[index]
          f" received (a full copy of the rows: {repair['full_copy_bytes']:,} bytes,"  # type: ignore[index]
          f" ratio {repair['ratio']}) (target < 1 s)")  # type: ignore[index]
    save_result("replication", results)


if __name__ == "__main__":
    main()
