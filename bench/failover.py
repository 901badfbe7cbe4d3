"""Failover time: from SIGKILL (or SIGSTOP) of the leader to the first write accepted again.

Starts three replicas on 127.0.0.1 with default timers (and the cluster key), then N times:
find the leader, stop it, write to the survivors until one accepts, bring the old leader back
and wait for agreement. Prints median, p90 and max per signal and saves JSON under
bench/results/. With --without-keys TREE (a checkout from before cluster keys, see
bench/keyless.py) the same rounds run on that code too, and the medians are compared.

    .venv/bin/python bench/failover.py [--rounds 20] [--without-keys /tmp/dp-keyless]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keyless

from tests.helpers.replica import STARTUP, Cluster, ReplicaProcess, send_json, wait_until

ROUND_LIMIT = 20.0  # seconds: a round that takes longer is a failure, not a wait
# Waits for agreement are not measured: generous, so a loaded machine makes a run slower only.
SETTLE = 4 * STARTUP


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


def one_round(cluster: Cluster, how: signal.Signals) -> float:
    # Includes the restart of the last round's victim: a start-up, not a failover.
    leader = wait_until(cluster.agreed_leader, timeout=SETTLE, what="agreement")
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


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "rounds": len(ordered),
        "median_s": statistics.median(ordered),
        "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max_s": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--without-keys", type=Path, metavar="TREE",
                        help="also run a checkout from before cluster keys, for reference")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for variant, tree in keyless.variants(args.without_keys):
        results[variant] = {}
        started: list[ReplicaProcess] = []
        with tempfile.TemporaryDirectory(prefix="dp-failover-") as tmp:
            try:
                cluster = Cluster(Path(tmp), started)
                for node_id in (1, 2, 3):
                    node = cluster.add(node_id, start=False)
                    (keyless.run_from(node, tree) if tree else node).start(wait=False)
                for how in (signal.SIGKILL, signal.SIGSTOP):
                    samples = [one_round(cluster, how) for _ in range(args.rounds)]
                    row = results[variant][how.name] = summary(samples)
                    print(f"{variant}, {how.name}: " + ", ".join(
                        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()), flush=True)
            finally:
                for node in started:
                    node.kill()
    print("\nkill-to-first-accepted-write with default timers (target with keys: median < 1 s,"
          " max < 2 s)")
    print(f"{'':8} {'signal':8} {'rounds':>6} {'median':>8} {'p90':>8} {'max':>8}")
    for variant, rows in results.items():
        for name, row in rows.items():
            print(f"{variant:8} {name:8} {row['rounds']:>6} {row['median_s']:>7.3f}s"
                  f" {row['p90_s']:>7.3f}s {row['max_s']:>7.3f}s")
    if keyless.WITHOUT_KEYS in results:
        for name, row in results[keyless.WITH_KEYS].items():
            reference = results[keyless.WITHOUT_KEYS][name]["median_s"]
            print(f"{name}: median with keys / without = {row['median_s'] / reference:.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"failover-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
