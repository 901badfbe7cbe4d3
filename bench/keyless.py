"""The reference for the cluster-key figures of failover.py and replication.py: the same
replicas run from a checkout of the code before cluster keys, with no key.

Make one with ``git worktree add /tmp/dp-keyless COMMIT`` (COMMIT: the last one without
distpotify/keys.py) and pass ``--without-keys /tmp/dp-keyless``. Its replicas run on this
venv's Python and twistd, with the checkout first on PYTHONPATH, so only the code differs.
Both scripts run it as a script, so this is imported as ``keyless`` from the bench directory.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.replica import ReplicaProcess

WITH_KEYS = "keys"
WITHOUT_KEYS = "no keys"


def checkout(tree: Path) -> Path:
    """TREE, if it is a checkout of distpotify from before cluster keys; else SystemExit."""
    tree = tree.resolve()
    if not (tree / "distpotify" / "tap.py").is_file():
        raise SystemExit(f"--without-keys {tree}: not a distpotify checkout")
    if (tree / "distpotify" / "keys.py").exists():
        raise SystemExit(f"--without-keys {tree}: this checkout has cluster keys already;"
                         " check out the commit before them")
    return tree


def run_from(node: ReplicaProcess, tree: Path) -> ReplicaProcess:
    """Make NODE (not started) run the code of TREE, without a key file."""
    node.key_file = None
    node.auth = ()  # no --auth option either: that tree has no accounts
    node.env = {**(node.env or {}), "PYTHONPATH": str(tree)}
    return node


def variants(tree: Path | None) -> list[tuple[str, Path | None]]:
    """What to measure: with keys, then (given a checkout) the reference without."""
    return [(WITH_KEYS, None)] + ([(WITHOUT_KEYS, checkout(tree))] if tree else [])
