"""The key table's cost in this tree against another checkout, both clusters up side by side.

``failover.py --mode keys`` compares keyed and unkeyed writes on one cluster, in pairs of
blocks; on this VM the same block swings by +-20 % from one minute to the next, so a change
of a few per cent to the keyed path shows only over many runs. Here two clusters run at
once, this tree's and TREE's (make one with ``git worktree add /tmp/dp-before COMMIT``; its
replicas run on this venv's Python with the checkout first on PYTHONPATH, so only the code
differs). Each round writes one 2-s wrk block without keys and one with on each cluster, back
to back (the orders rotate), so both trees meet the same minutes of the VM; a keyed block
proves its writes stored their keys (failover.wrk_rate). Reported: each
tree's median pair ratio (keyed writes/s over unkeyed, target >= 0.90), and TREE's writes/s
over this tree's for each kind, round by round.

    .venv/bin/python bench/keys_against.py /tmp/dp-before [--rounds 20]

Needs wrk (apt-get install wrk). Saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import save_result
from failover import WRK_BLOCK, wrk_rate
from stack import Stack, say

CONNECTIONS = 8
TREES = ("this", "other")


def checkout(tree: Path) -> Path:
    tree = tree.resolve()
    if not (tree / "distpotify" / "tap.py").is_file():
        raise SystemExit(f"{tree}: not a distpotify checkout")
    return tree


def cluster(root: Path, tree: Path | None) -> Stack:
    """Three replicas and the proxy, running TREE's code when given (this tree's else)."""
    stack = Stack(root)
    if tree is not None:
        for node in stack.nodes:
            node.env = {**node.env, "PYTHONPATH": str(tree)}
    stack.start()
    return stack


def measure(ports: dict[str, int], rounds: int) -> dict[str, Any]:
    for port in ports.values():  # warm both paths of both clusters up
        wrk_rate(port, True, CONNECTIONS)
        wrk_rate(port, False, CONNECTIONS)
    rates: dict[str, dict[bool, list[float]]] = {t: {False: [], True: []} for t in TREES}
    for n in range(rounds):
        trees = TREES if n % 2 == 0 else TREES[::-1]
        kinds = (False, True) if (n // 2) % 2 == 0 else (True, False)
        for tree in trees:
            for keyed in kinds:
                rates[tree][keyed].append(wrk_rate(ports[tree], keyed, CONNECTIONS))
        say(f"round {n}: " + "  ".join(
            f"{tree} {rates[tree][False][-1]:.0f} / {rates[tree][True][-1]:.0f} writes/s"
            f" ({rates[tree][True][-1] / rates[tree][False][-1]:.3f})" for tree in TREES))
    result: dict[str, Any] = {"rounds": rounds, "block_s": WRK_BLOCK, "rates": {
        tree: {"without_keys": rates[tree][False], "with_keys": rates[tree][True]}
        for tree in TREES}}
    for tree in TREES:
        result[f"{tree}_pair_ratio"] = statistics.median(
            k / p for p, k in zip(rates[tree][False], rates[tree][True], strict=True))
    for keyed, name in ((False, "without_keys"), (True, "with_keys")):
        result[f"other_over_this_{name}"] = statistics.median(
            o / t for t, o in zip(rates["this"][keyed], rates["other"][keyed], strict=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    other = checkout(args.tree)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dp-this-") as this_root, \
            tempfile.TemporaryDirectory(prefix="dp-other-") as other_root:
        clusters = {"this": cluster(Path(this_root), None)}
        stack.callback(clusters["this"].stop)
        clusters["other"] = cluster(Path(other_root), other)
        stack.callback(clusters["other"].stop)
        result = measure({tree: c.leader().http_port for tree, c in clusters.items()},
                         args.rounds)
    result["other"] = str(other)
    say(f"median pair ratio keyed / unkeyed: this tree {result['this_pair_ratio']:.3f},"
        f" {other} {result['other_pair_ratio']:.3f} (target >= 0.90)")
    say(f"{other} over this tree: unkeyed writes/s x{result['other_over_this_without_keys']:.3f},"
        f" keyed x{result['other_over_this_with_keys']:.3f}")
    save_result("keys-against", result)


if __name__ == "__main__":
    main()
