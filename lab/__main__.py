"""``python -m lab`` (what ``make lab`` runs): run a scenario, list them, or check, clean or
hold a lab; all but ``list`` need root, since a lab is made of network namespaces.

The command line sits above both ``lab.py`` (hosts and replicas) and ``scenarios.py``
(stories told on a lab, built on ``lab.py``), so ``lab.py`` never imports its own user.
"""
# test-case-name: tests.lab.test_command_line

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from lab import scenarios
from lab.convergence import JOIN_ALLOWANCE, JOIN_WINDOW
from lab.lab import HTTP_PORT, REPLICA_KINDS, Lab, clean_stale_labs
from lab.netns import unavailable_reason


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="Run Distpotify replicas in network namespaces and inject faults.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("scenario", help="run a scenario and print its report")
    run.add_argument("name", choices=sorted(scenarios.SCENARIOS))
    run.add_argument("--nodes", type=int, default=3)
    run.add_argument("--out", type=Path, help="where the report and logs go")
    run.add_argument("--replica", choices=REPLICA_KINDS, default="twistd")
    run.add_argument("--shaper", choices=("auto", "netem", "delayline"), default="auto")
    run.add_argument("--entry", default="leader", help="leader, proxy or a node id")
    run.add_argument("--seed", type=int, default=0,
                     help="seeds the workload's and the random nemesis's choices: "
                          "the same seed replays the same run")
    run.add_argument("--duration", type=float, default=scenarios.RANDOM_DURATION,
                     help="seconds of faults (the random scenario)")
    run.add_argument("--convergence-timeout", type=float, default=30.0,
                     help="seconds the replicas get to agree once the faults end")
    run.add_argument("--join-allowance", type=float, default=JOIN_ALLOWANCE,
                     help="seconds more they may get while a replica still joining moves on"
                          f" (pushed back {JOIN_WINDOW:.0f} s at a time; 0: none)")
    run.add_argument("--replica-args", default="",
                     help='extra replica options, e.g. "--anti-entropy-interval 2"')
    run.add_argument("--auth", action="store_true",
                     help="replicas and proxy with --auth on (as deployed): the leader makes"
                          " an admin, and every request of the workload and the checker"
                          " carries its session")
    commands.add_parser("list", help="list the scenarios")
    commands.add_parser("check", help="say whether the lab can run on this machine")
    commands.add_parser("clean", help="remove labs left behind by killed runs")
    up = commands.add_parser("up", help="start a lab and keep it until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--replica", choices=REPLICA_KINDS, default="auto")
    up.add_argument("--hold", type=float, default=3600.0, help="seconds before it is removed")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, scenario in sorted(scenarios.SCENARIOS.items()):
            print(f"{name:28} {scenario.summary}")
        return 0
    reason = unavailable_reason()
    if args.command == "check":
        print(reason or "the lab can run here")
        return 2 if reason else 0
    if reason:
        print(f"cannot run the lab: {reason}", file=sys.stderr)
        return 2
    # Whatever stops the command, the lab is removed on the way out (Lab.close in finally).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    if args.command == "clean":
        removed = clean_stale_labs()
        print(f"removed {len(removed)} stale lab(s)")
        return 0
    if args.command == "up":
        with Lab(args.nodes, replica=args.replica) as lab:
            for replica in lab.replicas.values():
                print(f"node {replica.node_id}: ip netns exec {replica.host.netns} "
                      f"curl http://{replica.host.address}:{HTTP_PORT}/status")
            print(f"Ctrl-C (or {args.hold:.0f} s) removes the lab", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait(args.hold)
        return 0
    try:
        report = scenarios.run(
            args.name, nodes=args.nodes, out=args.out, replica=args.replica,
            shaper=args.shaper, entry=args.entry, seed=args.seed,
            replica_args=shlex.split(args.replica_args),
            convergence_timeout=args.convergence_timeout,
            join_allowance=args.join_allowance, duration=args.duration,
            auth=args.auth,
        )
    except KeyboardInterrupt:
        print("interrupted: the lab was removed, no report", file=sys.stderr)
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
