"""The one rule for applying an op to a row, used by the leader and by every replica.

A field takes the op's value only if the op is newer than the version that wrote the field
(a purge watermark: only if its value is larger, FORWARD_ONLY), so applying is idempotent
and commutative: replicas converge whatever order ops arrive in.
Deletes are tombstones (``deleted = 1`` under a new version), never removed rows.
"""
# test-case-name: tests.unit.test_merge

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpotify.model import ZERO, Op, Row, Version

# Fields that only move forward: the larger value wins whatever version wrote it (ties by
# version). A purge watermark (a version, as fixed-width text) written higher by a leader that
# died before replicating it must not be taken back by the next leader's lower mark, newer by
# version: the rows the higher one purged would come back from replicas that kept them.
FORWARD_ONLY = frozenset({("purges", "through")})


def merge(row: Row | None, op: Op) -> Row | None:
    """The row after ``op``, or None when the op changes nothing (it is old or repeated)."""
    if row is not None and (row.entity, row.key) != (op.entity, op.key):
        raise ValueError(f"op for {op.entity}/{op.key} applied to {row.entity}/{row.key}")
    current = row.versions if row is not None else {}
    won = {
        name: value
        for name, value in op.fields.items()
        if _wins(op, name, value, row, current)
    }
    if not won:
        return None
    fields = {**(row.fields if row is not None else {}), **won}
    versions = {**current, **dict.fromkeys(won, op.version)}
    return Row(op.entity, op.key, fields, versions)


def _wins(op: Op, name: str, value: Any, row: Row | None, current: Mapping[str, Version]
          ) -> bool:
    if (op.entity, name) in FORWARD_ONLY and row is not None and name in current:
        return (str(value), op.version) > (str(row.fields[name]), current[name])
    return op.version > current.get(name, ZERO)


def won_fields(old: Row | None, new: Row) -> set[str]:
    """The fields whose version changed from ``old`` to ``new``."""
    before = old.versions if old is not None else {}
    return {name for name, version in new.versions.items() if before.get(name) != version}


def row_ops(row: Row) -> list[Op]:
    """A row as the ops that would rebuild its fields, one per distinct version."""
    by_version: dict[Version, dict[str, Any]] = {}
    for name, version in row.versions.items():
        by_version.setdefault(version, {})[name] = row.fields[name]
    return [
        Op(version, row.entity, row.key, fields) for version, fields in sorted(by_version.items())
    ]
