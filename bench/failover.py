"""Failover and what clients see of it: time to the first accepted write, writes through the
proxy while the leader dies, the cost of idempotency keys, and read-your-writes latency.

Starts three replicas on 127.0.0.1 with default timers (and, for the proxy modes, the proxy),
then runs the modes asked for (``--mode``, repeatable; all of them by default):

- ``direct``: N times per signal, find the leader, SIGKILL (or SIGSTOP) it, write to the
  survivors until one accepts, bring the old leader back. Median, p90 and max.
- ``proxy``: N times per signal, a write (create, add, rename, delete, upload in turn) sent
  through the proxy 0-50 ms after the leader is SIGKILLed or SIGSTOPped, on a warm pooled
  connection. The share answered 2xx (target 100 %), its latency (median, max; target max
  under 2 s), and, once the old leader is back and anti-entropy has run, the writes whose
  effect is not there exactly once on every replica (target 0).
- ``keys``: writes/s of ``POST /playlists`` at the leader with and without an
  Idempotency-Key, in alternating blocks of the same run (target: keys under 10 % slower):
  by Python threads, a new connection per write (the figure earlier runs reported), then,
  when wrk is installed, by wrk's keep-alive connections, whose own CPU is a fraction of the
  Python client's, so a write's cost on the replicas is more of what is measured. wrk's
  blocks come in pairs (median pair ratio, and its quartiles), and each replica's CPU time
  per write of each kind is read from /proc over all its blocks.
- ``ryw``: the read latency of a client that has just written (its read carries the
  write's version) next to a client that has not, through the proxy (p50, p99).

With ``--without-keys TREE`` (a checkout from before cluster keys, see bench/keyless.py) the
``direct`` rounds also run on three replicas of that code, and the medians are compared.

Prints each figure next to its same-run reference and saves JSON under bench/results/.

    .venv/bin/python bench/failover.py [--rounds 20] [--mode direct|proxy|keys|ryw ...]
        [--without-keys /tmp/dp-keyless]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keyless
from common import THREAD_PARTS, BlockKeys, playlist_writes, save_result, thread_cpu_seconds

from distpotify.keytime import new_key
from tests.helpers.audio import make_wav
from tests.helpers.fronted import Client, Fronted
from tests.helpers.replica import Cluster, ReplicaProcess, request, send_json, wait_until

ROUND_LIMIT = 20.0  # seconds: a round that takes longer is a failure, not a wait
STARTUP_LIMIT = 180.0  # seconds to start the cluster and proxy (imports are slow when busy)
MODES = ("direct", "proxy", "keys", "ryw")
KINDS = ("create", "add", "rename", "delete", "upload")
SIGNALS = (signal.SIGKILL, signal.SIGSTOP)


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "rounds": len(samples),
        "median_s": statistics.median(samples),
        "p90_s": percentile(samples, 0.9),
        "max_s": max(samples),
    }


def say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- direct


def first_accepted_write(nodes: list[ReplicaProcess], deadline: float) -> float:
    """Write to each survivor in turn until one answers 201; when that happened."""
    n = 0
    while time.monotonic() < deadline:
        node = nodes[n % len(nodes)]
        n += 1
        try:
            answer = send_json(node.http_port, "POST", "/playlists", {"name": "failover"})
        except OSError:
            continue
        if answer.status == 201:
            return time.monotonic()
    raise RuntimeError("no write accepted within the round limit")


def direct_round(cluster: Cluster, how: signal.Signals) -> float:
    # The last round's victim may still be restarting: that is not part of the measure.
    leader = wait_until(cluster.agreed_leader, timeout=STARTUP_LIMIT, what="agreement")
    assert leader is not None  # wait_until returns the first truthy answer
    victim = cluster.nodes[leader["node_id"]]
    survivors = [n for n in cluster.nodes.values() if n is not victim]
    stopped = time.monotonic()
    if how == signal.SIGKILL:
        victim.kill()
    else:
        victim.signal(signal.SIGSTOP)
    try:
        accepted = first_accepted_write(survivors, stopped + ROUND_LIMIT)
    finally:
        if how == signal.SIGKILL:
            victim.start(wait=False)
        else:
            victim.signal(signal.SIGCONT)
    return accepted - stopped


def run_direct(fronted: Fronted, rounds: int) -> dict[str, Any]:
    results = {}
    for how in SIGNALS:
        results[how.name] = summary([direct_round(fronted.cluster, how) for _ in range(rounds)])
        say(f"direct {how.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in
                                               results[how.name].items()))
    return results


def run_direct_without_keys(tree: Path, rounds: int) -> dict[str, Any]:
    """The direct rounds on three replicas of TREE, the code from before cluster keys."""
    started: list[ReplicaProcess] = []
    with tempfile.TemporaryDirectory(prefix="dp-failover-keyless-") as tmp:
        try:
            cluster = Cluster(Path(tmp), started)
            for node_id in (1, 2, 3):
                keyless.run_from(cluster.add(node_id, start=False), tree).start(wait=False)
            results = {}
            for how in SIGNALS:
                results[how.name] = summary([direct_round(cluster, how) for _ in range(rounds)])
                say(f"direct without keys {how.name}: " + ", ".join(
                    f"{k}={v:.3f}" for k, v in results[how.name].items()))
            return results
        finally:
            for node in started:
                node.kill()


# ---------------------------------------------------------------- writes through the proxy


class ProxyWrites:
    """Writes through the proxy, each sent just after the leader fails, and their checks."""

    def __init__(self, fronted: Fronted, tmp: Path) -> None:
        self.fronted = fronted
        self.tmp = tmp
        self.client = Client(fronted.proxy)
        self.rng = random.Random(13)
        self.expected: list[tuple[str, int, str | None]] = []  # kind, number, target
        self.number = 0
        song = self.client.call("POST", "/songs?title=bench%20shared", self.audio(10**6),
                                {"Content-Type": "audio/wav"})
        self.song_id = song.json()["song"]["id"]
        self.everywhere(f"/songs/{self.song_id}")

    def audio(self, number: int) -> bytes:
        return make_wav(self.tmp / "w.wav", 40 * 1024, seed=number).read_bytes()

    def everywhere(self, path: str) -> None:
        wait_until(lambda: all(n.get(path, timeout=2).status == 200 for n in self.fronted.nodes),
                   timeout=ROUND_LIMIT, what=f"{path} everywhere")

    def one_round(self, how: signal.Signals) -> tuple[int, float]:
        kind, number = KINDS[self.number % len(KINDS)], self.number
        self.number += 1
        leader = self.fronted.cluster.nodes[self.fronted.proxy_follows(timeout=STARTUP_LIMIT)]
        # The previous round's failed leader may still be coming back: the target is made
        # once the proxy writes again (its key makes a retry safe), not counted as a result.
        key = {"Idempotency-Key": f"target-{number}-{uuid.uuid4()}"}
        target = wait_until(
            lambda: (answer := self.client.send_json(
                "POST", "/playlists", {"name": f"target {number}"}, key)).status in (200, 201)
            and answer, timeout=ROUND_LIMIT, what=f"target playlist {number}")
        target_id = target.json()["playlist"]["id"]
        self.everywhere(f"/playlists/{target_id}")  # and the pool holds a connection to it
        if how == signal.SIGKILL:
            leader.kill()
        else:
            leader.signal(signal.SIGSTOP)
        time.sleep(self.rng.uniform(0, 0.05))
        started = time.monotonic()
        try:
            answer = self.write(kind, number, target_id)
        finally:
            took = time.monotonic() - started
            self.fronted.restore(leader, how)
        self.expected.append((kind, number, target_id))
        return answer, took

    def write(self, kind: str, number: int, target: str) -> int:
        client = self.client
        if kind == "create":
            answer = client.send_json("POST", "/playlists", {"name": f"created {number}"})
        elif kind == "add":
            answer = client.send_json("POST", f"/playlists/{target}/items",
                                      {"song_id": self.song_id})
        elif kind == "rename":
            answer = client.send_json("PATCH", f"/playlists/{target}",
                                      {"name": f"renamed {number}"})
        elif kind == "delete":
            answer = client.call("DELETE", f"/playlists/{target}")
        else:
            answer = client.call("POST", f"/songs?title=bench%20once%20{number}",
                                 self.audio(number), {"Content-Type": "audio/wav"})
        return answer.status

    def not_exactly_once(self) -> int:
        """Writes whose effect is missing or doubled on some replica."""
        wrong = 0
        for node in self.fronted.nodes:
            playlists = node.get("/playlists").json()["playlists"]
            names = [p["name"] for p in playlists]
            by_id = {p["id"]: p for p in playlists}
            titles = [s["title"] for s in node.get("/songs?limit=500").json()["songs"]]
            for kind, number, target in self.expected:
                if kind == "create":
                    ok = names.count(f"created {number}") == 1
                elif kind == "add":
                    items = node.get(f"/playlists/{target}").json()["playlist"]["items"]
                    ok = [i["song_id"] for i in items] == [self.song_id]
                elif kind == "rename":
                    ok = names.count(f"renamed {number}") == 1 and target in by_id
                elif kind == "delete":
                    ok = target not in by_id
                else:
                    ok = titles.count(f"bench once {number}") == 1
                wrong += not ok
        return wrong


def run_proxy(fronted: Fronted, rounds: int, tmp: Path) -> dict[str, Any]:
    writes = ProxyWrites(fronted, tmp)
    results: dict[str, Any] = {}
    for how in SIGNALS:
        outcomes = [writes.one_round(how) for _ in range(rounds)]
        took = [t for _, t in outcomes]
        results[how.name] = {
            "writes": len(outcomes),
            "answered_2xx": sum(200 <= status < 300 for status, _ in outcomes) / len(outcomes),
            "statuses": sorted({status for status, _ in outcomes}),
            "latency_median_s": statistics.median(took),
            "latency_max_s": max(took),
        }
        say(f"proxy {how.name}: {results[how.name]}")
    fronted.proxy_follows(timeout=STARTUP_LIMIT)
    fronted.converged()
    results["not_exactly_once"] = writes.not_exactly_once()
    results["proxy_counters"] = fronted.proxy.status()["counters"]
    return results


# ---------------------------------------------------------------- the key table's cost


def write_rate(port: int, keyed: bool, writes: int, threads: int) -> float:
    """Writes/s of POST /playlists at ``port`` from ``threads`` clients."""
    per_thread = writes // threads
    failures: list[str] = []

    def client() -> None:
        # Made before the clock starts: the figure is the replicas' cost, not the client's.
        sent = [{"Content-Type": "application/json"} for _ in range(per_thread)]
        if keyed:  # in the proxy's form (a UUIDv7: its row is stored in time order)
            for headers in sent:
                headers["Idempotency-Key"] = f'"{new_key()}"'
        ready.wait()
        for headers in sent:
            answer = request(port, "POST", "/playlists", b'{"name": "rate"}', headers)
            if answer.status != 201:
                failures.append(f"{answer.status} {answer.body[:100]!r}")

    ready = threading.Barrier(threads + 1)
    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()
    started = time.monotonic()
    for thread in pool:
        thread.join()
    if failures:
        raise RuntimeError(f"writes failed: {failures[:3]}")
    return per_thread * threads / (time.monotonic() - started)


def run_keys(fronted: Fronted, writes: int, threads: int, blocks: int) -> dict[str, Any]:
    leader = fronted.cluster.nodes[fronted.proxy_follows()]
    write_rate(leader.http_port, True, threads * 5, threads)  # warm both paths up
    write_rate(leader.http_port, False, threads * 5, threads)
    rates: dict[str, list[float]] = {"without_keys": [], "with_keys": []}
    for block in range(2 * blocks):
        keyed = block % 2 == 1
        rates["with_keys" if keyed else "without_keys"].append(
            write_rate(leader.http_port, keyed, writes, threads))
    result: dict[str, Any] = {name: statistics.median(values) for name, values in rates.items()}
    result["keys_slower_by"] = 1 - result["with_keys"] / result["without_keys"]
    result["blocks"] = rates
    say(f"keys: {result['without_keys']:.1f} writes/s without, {result['with_keys']:.1f} with:"
        f" {100 * result['keys_slower_by']:.1f} % slower (target under 10 %)")
    if shutil.which("wrk") is not None:
        roles = {"leader": leader} | {f"follower {node_id}": node for node_id, node
                                      in fronted.cluster.nodes.items() if node is not leader}
        result["wrk"] = run_keys_by_wrk(leader.http_port, threads, blocks, {
            role: node.process.pid for role, node in roles.items() if node.process is not None})
    return result


WRK_BLOCK = 2  # seconds


def run_keys_by_wrk(port: int, connections: int, blocks: int,
                    replicas: dict[str, int] | None = None) -> dict[str, Any]:
    """The same comparison by wrk (``connections`` keep-alive connections), in pairs of
    blocks whose order alternates; each pair's ratio, so the machine's own swings between
    pairs cancel out. With ``replicas`` (a role, ``leader`` or ``follower N``, to its pid),
    also each one's CPU time per write of each kind over all its blocks (the leader's is
    what bounds a cluster whose replicas each have cores of their own)."""
    wrk_rate(port, True, connections)  # warm both paths up
    wrk_rate(port, False, connections)
    pids = replicas or {}
    cpu = {keyed: {role: dict.fromkeys(THREAD_PARTS, 0.0) for role in pids}
           for keyed in (False, True)}
    writes = dict.fromkeys((False, True), 0.0)
    pairs: list[tuple[float, float]] = []
    for pair in range(2 * blocks):
        order = (False, True) if pair % 2 == 0 else (True, False)
        rates = {}
        for keyed in order:
            before = {role: thread_cpu_seconds(pid) for role, pid in pids.items()}
            rates[keyed] = wrk_rate(port, keyed, connections)
            for role, pid in pids.items():
                after = thread_cpu_seconds(pid)
                for part in THREAD_PARTS:
                    cpu[keyed][role][part] += after[part] - before[role][part]
            writes[keyed] += rates[keyed] * WRK_BLOCK
        pairs.append((rates[False], rates[True]))
    ratios = sorted(with_keys / without for without, with_keys in pairs)
    quartiles = statistics.quantiles(ratios, n=4)[::2]
    result: dict[str, Any] = {
        "without_keys": statistics.median(without for without, _ in pairs),
        "with_keys": statistics.median(with_keys for _, with_keys in pairs),
        "pair_ratio": statistics.median(ratios),
        "pair_ratio_quartiles": quartiles,
        "pairs": pairs,
    }
    say(f"keys by wrk: {result['without_keys']:.1f} writes/s without, {result['with_keys']:.1f}"
        f" with; median pair ratio {result['pair_ratio']:.3f} (quartiles"
        f" {quartiles[0]:.3f}-{quartiles[1]:.3f})")
    if pids:
        def us(keyed: bool, role: str, parts: tuple[str, ...] = THREAD_PARTS) -> float:
            return 1e6 * sum(cpu[keyed][role][part] for part in parts) / writes[keyed]

        per_write: dict[str, dict[str, Any]] = {
            role: {"without_keys": us(False, role), "with_keys": us(True, role),
                   **{part: {"without_keys": us(False, role, (part,)),
                             "with_keys": us(True, role, (part,))} for part in THREAD_PARTS}}
            for role in pids}
        result["cpu_us_per_write"] = per_write
        say("CPU per write, unkeyed -> keyed: " + ", ".join(
            f"{role} {row['without_keys']:.0f} -> {row['with_keys']:.0f} us"
            f" (x{row['without_keys'] / row['with_keys']:.3f})" for role, row in per_write.items()))
        # The reactor (HTTP, keys parsed, pushes) and the other threads (the store's).
        say("  by thread: " + ", ".join(
            f"{role} " + " / ".join(
                f"{part} {row[part]['without_keys']:.0f} -> {row[part]['with_keys']:.0f}"
                for part in THREAD_PARTS) for role, row in per_write.items()))
    return result


def wrk_rate(port: int, keyed: bool, connections: int) -> float:
    """Writes/s of POST /playlists at ``port`` by wrk in one block of WRK_BLOCK seconds."""
    keys = BlockKeys() if keyed else None
    summary = playlist_writes(port, WRK_BLOCK, connections, keys)
    if keys is not None and not replayed(port, keys):
        raise RuntimeError("the keyed block stored no key: its writes were not keyed")
    return float(summary["req_per_s"])


def replayed(port: int, keys: BlockKeys) -> bool:
    """Whether one of a keyed block's first writes, sent again, gets its key's stored answer
    (wrk calls the script once to check it before the run, so the first sent may be the
    second made)."""
    for n in (1, 2, 3):
        again = request(port, "POST", "/playlists", f'{{"name": "bench {n}"}}'.encode(),
                        {"Content-Type": "application/json", "Idempotency-Key": keys.key(n)})
        if again.status == 201 and again.headers.get("idempotent-replayed") == "true":
            return True
    return False


# ---------------------------------------------------------------- read your writes


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    answer = call()
    return time.monotonic() - started, answer


def run_ryw(fronted: Fronted, rounds: int) -> dict[str, Any]:
    writer, other = Client(fronted.proxy), Client(fronted.proxy)
    playlist = writer.send_json("POST", "/playlists", {"name": "ryw"}).json()["playlist"]["id"]
    path = f"/playlists/{playlist}"
    fronted.proxy_follows()
    mine, theirs, stale = [], [], 0
    for number in range(rounds):
        name = f"ryw {number}"
        assert writer.send_json("PATCH", path, {"name": name}).status == 200
        took, answer = timed(lambda: writer.get(path))
        mine.append(took)
        stale += answer.json()["playlist"]["name"] != name
        took, _ = timed(lambda: other.get(path))
        theirs.append(took)
    result = {
        "reads": rounds,
        "stale_reads_of_the_writer": stale,
        "writer_ms": {"p50": 1000 * percentile(mine, 0.5), "p99": 1000 * percentile(mine, 0.99)},
        "other_ms": {"p50": 1000 * percentile(theirs, 0.5),
                     "p99": 1000 * percentile(theirs, 0.99)},
        "proxy_counters": fronted.proxy.status()["counters"],
    }
    for q in ("p50", "p99"):
        result[f"added_{q}_ms"] = result["writer_ms"][q] - result["other_ms"][q]
    say(f"ryw: writer p50 {result['writer_ms']['p50']:.2f} ms, p99"
        f" {result['writer_ms']['p99']:.2f} ms; a client that did not write p50"
        f" {result['other_ms']['p50']:.2f} ms, p99 {result['other_ms']['p99']:.2f} ms;"
        f" stale reads {stale}")
    return result


# ---------------------------------------------------------------- report


def report(results: dict[str, Any]) -> None:
    if "direct" in results:
        say("\nkill-to-first-accepted-write, direct to the replicas (target: median < 1 s,"
            " max < 2 s)")
        say(f"{'signal':8} {'rounds':>6} {'median':>8} {'p90':>8} {'max':>8}")
        for name, row in results["direct"].items():
            say(f"{name:8} {row['rounds']:>6} {row['median_s']:>7.3f}s {row['p90_s']:>7.3f}s"
                f" {row['max_s']:>7.3f}s")
        for name, row in results.get("direct_without_keys", {}).items():
            reference = row["median_s"]
            say(f"{name:8} without keys: median {reference:.3f}s, p90 {row['p90_s']:.3f}s,"
                f" max {row['max_s']:.3f}s; median with keys / without ="
                f" {results['direct'][name]['median_s'] / reference:.2f}")
    if "proxy" in results:
        proxy = results["proxy"]
        say("\nwrites through the proxy sent 0-50 ms after the leader fails (targets: 100 % 2xx,"
            " max < 2 s, 0 not exactly once)")
        say(f"{'signal':8} {'writes':>6} {'2xx':>6} {'median':>8} {'max':>8}")
        for name in (s.name for s in SIGNALS):
            row = proxy[name]
            say(f"{name:8} {row['writes']:>6} {100 * row['answered_2xx']:>5.0f}%"
                f" {row['latency_median_s']:>7.3f}s {row['latency_max_s']:>7.3f}s")
        say(f"writes not there exactly once on every replica after the heal:"
            f" {proxy['not_exactly_once']}")
    if "keys" in results:
        keys = results["keys"]
        ratio = keys["with_keys"] / keys["without_keys"]
        say(f"\nkey table: {keys['with_keys']:.1f} writes/s with keys vs"
            f" {keys['without_keys']:.1f} without (ratio {ratio:.3f}; target >= 0.90)")
        if "wrk" in keys:
            by_wrk = keys["wrk"]
            say(f"key table by wrk: {by_wrk['with_keys']:.1f} writes/s with keys vs"
                f" {by_wrk['without_keys']:.1f} without (median pair ratio"
                f" {by_wrk['pair_ratio']:.3f}; target >= 0.90)")
            for role, row in by_wrk.get("cpu_us_per_write", {}).items():
                say(f"  {role} CPU per write: {row['without_keys']:.0f} us without keys,"
                    f" {row['with_keys']:.0f} with (unkeyed / keyed"
                    f" {row['without_keys'] / row['with_keys']:.3f})")
    if "ryw" in results:
        ryw = results["ryw"]
        say(f"\nread-your-writes: a writer's read p50 {ryw['writer_ms']['p50']:.2f} ms / p99"
            f" {ryw['writer_ms']['p99']:.2f} ms vs another client's p50"
            f" {ryw['other_ms']['p50']:.2f} ms / p99 {ryw['other_ms']['p99']:.2f} ms"
            f" (added p50 {ryw['added_p50_ms']:+.2f} ms, p99 {ryw['added_p99_ms']:+.2f} ms);"
            f" stale reads {ryw['stale_reads_of_the_writer']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20,
                        help="failovers per signal (direct, proxy)")
    parser.add_argument("--mode", action="append", choices=MODES,
                        help="what to measure (repeatable; default: all)")
    parser.add_argument("--writes", type=int, default=400, help="writes per block (keys)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent writers (keys)")
    parser.add_argument("--blocks", type=int, default=3,
                        help="alternating blocks with and without keys (keys)")
    parser.add_argument("--reads", type=int, default=300, help="write-then-read rounds (ryw)")
    parser.add_argument("--without-keys", type=Path, metavar="TREE",
                        help="also run the direct rounds on a checkout from before cluster keys")
    args = parser.parse_args()
    modes = args.mode or list(MODES)
    results: dict[str, Any] = {}
    started: list[ReplicaProcess] = []
    with tempfile.TemporaryDirectory(prefix="dp-failover-") as tmp:
        fronted = Fronted(Path(tmp), started, "--anti-entropy-interval", "2",
                          "--chunk-size", "16K")
        try:
            fronted.start(timeout=STARTUP_LIMIT)
            if "keys" in modes:
                results["keys"] = run_keys(fronted, args.writes, args.threads, args.blocks)
            if "ryw" in modes:
                results["ryw"] = run_ryw(fronted, args.reads)
            if "proxy" in modes:
                results["proxy"] = run_proxy(fronted, args.rounds, Path(tmp))
            if "direct" in modes:
                results["direct"] = run_direct(fronted, args.rounds)
        finally:
            fronted.stop_all()
            for node in started:
                node.kill()
    if args.without_keys is not None and "direct" in modes:
        tree = keyless.checkout(args.without_keys)
        results["direct_without_keys"] = run_direct_without_keys(tree, args.rounds)
    report(results)
    save_result("failover", results)


if __name__ == "__main__":
    main()
