"""The cost of one password check (argon2id verify) on this machine, for the default
parameters of distpotify/auth/passwords.py and the two settings either side of them.

docs/architecture.md ("Accounts") asks for 50-250 ms per check: slow enough that a stolen
hash is costly to guess, quick enough that a login does not feel slow and a burst of them
does not starve the machine. Each setting makes one hash and times ``--verifies`` verifies
of it (wall clock and this process's CPU time), so a run is a few dozen hashes: a few
seconds. The neighbours are one pass fewer and one more over the same memory, the knob that
moves the cost in steps without changing the memory a check takes. The target is judged on
the CPU time: on a shared machine the wall time moves with whatever else runs (the load
average is printed beside the figures), the CPU time hardly does, and on a quiet machine the
two are equal (one lane, one thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import attrs
from common import environment, save_result, say

from distpotify.auth.passwords import HashParams

TARGET_MS = (50, 250)
PASSWORD = "correct horse battery staple"


def settings(default: HashParams) -> list[tuple[str, HashParams]]:
    """The default, and one pass fewer and one more over the same memory."""
    fewer = attrs.evolve(default, time_cost=default.time_cost - 1)
    more = attrs.evolve(default, time_cost=default.time_cost + 1)
    return [("fewer passes", fewer), ("default", default), ("more passes", more)]


def measure(params: HashParams, verifies: int) -> dict[str, Any]:
    hasher = params.hasher()
    stored = hasher.hash(PASSWORD)
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(verifies):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        hasher.verify(stored, PASSWORD)
        wall.append((time.perf_counter() - wall_start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    return {
        "params": attrs.asdict(params),
        "verifies": verifies,
        "wall_ms": {"median": statistics.median(wall), "min": min(wall), "max": max(wall)},
        "cpu_ms_median": statistics.median(cpu),
    }


def report(rows: list[tuple[str, dict[str, Any]]]) -> str:
    low, high = TARGET_MS
    lines = [f"argon2id verify, ms per check (target {low}-{high} ms of CPU on this machine;"
             " the wall time is that on a quiet one)",
             f"{'setting':<13} {'t':>2} {'m (MiB)':>8} {'p':>2}  {'median':>7} {'min':>7}"
             f" {'max':>7} {'cpu':>7}  in target"]
    for name, row in rows:
        p, w = row["params"], row["wall_ms"]
        inside = "yes" if low <= row["cpu_ms_median"] <= high else "NO"
        lines.append(
            f"{name:<13} {p['time_cost']:>2} {p['memory_cost'] // 1024:>8} {p['parallelism']:>2}"
            f"  {w['median']:7.1f} {w['min']:7.1f} {w['max']:7.1f} {row['cpu_ms_median']:7.1f}"
            f"  {inside}")
    lines.append("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verifies", type=int, default=9,
                   help="verifies timed per setting, after its one hash (at most 30)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if not 1 <= args.verifies <= 30:
        p.error("--verifies is 1 to 30: a few dozen hashes in all")
    rows = []
    for name, params in settings(HashParams()):
        say(f"{name}: {params}")
        rows.append((name, measure(params, args.verifies)))
    print(report(rows))
    if not args.no_save:
        result = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "settings": dict(rows), "environment": environment()}
        save_result("hashcost", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
