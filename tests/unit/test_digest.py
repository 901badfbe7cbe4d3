"""Bucket digests: equal tables have equal digests, and one exchange of differing buckets in
each direction makes any two replicas equal."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpotify.auth.access import UNRESTRICTED
from distpotify.idempotency import IdempotencyKey
from distpotify.library import _create_playlist, _keyed
from distpotify.model import ENTITIES, KEY_ROWS, Op, Row, Version
from distpotify.store.metadata import BUCKETS, Change, MetadataDB
from distpotify.store.schema import Transaction, row_hash, versions_text, written_whole

KEYS = [f"{n:08x}-1111-4111-8111-111111111111" for n in range(6)]

all_ops = st.lists(
    st.builds(
        lambda version, key, fields: Op(version, "playlists", key, fields),
        st.builds(Version, st.integers(1, 3), st.integers(1, 3), st.integers(1, 40)),
        st.sampled_from(KEYS),
        st.dictionaries(st.sampled_from(["name", "owner", "deleted"]), st.integers(0, 9),
                        min_size=1),
    ),
    unique_by=lambda op: op.version,
    max_size=25,
)


def fresh(directory: Path, name: str) -> MetadataDB:
    return MetadataDB(directory / f"{name}.sqlite3", node_id=1)


def pull(into: MetadataDB, peer: MetadataDB) -> int:
    """One anti-entropy pass: rows of differing buckets whose versions differ."""
    moved = 0
    for bucket, (mine, theirs) in enumerate(zip(into.digest(), peer.digest(), strict=True)):
        if mine == theirs:
            continue
        local = {(e, k): v for e, k, v in into.bucket_rows(bucket)}
        wanted = [(e, k) for e, k, v in peer.bucket_rows(bucket) if local.get((e, k)) != v]
        moved += len(wanted)
        into.apply_rows(peer.rows(wanted))
    return moved


def digest_of_rows(db: MetadataDB) -> list[str]:
    """The digest computed from the rows themselves, as digest() should give it."""
    hashes = []
    for bucket in range(BUCKETS):
        expected = 0
        for entity, key, versions in db.bucket_rows(bucket):
            expected ^= row_hash(entity, key, versions)
        hashes.append(f"{expected:032x}")
    return hashes


def table(db: MetadataDB) -> list[tuple]:
    return [tuple(r) for r in db._conn.execute("SELECT * FROM playlists ORDER BY id")]


@settings(max_examples=40, deadline=None)
@given(all_ops, st.data())
def test_one_exchange_each_way_converges(ops: list[Op], data: st.DataObject) -> None:
    subset = st.sets(st.sampled_from(range(len(ops)))) if ops else st.just(set())
    left_ops = [ops[i] for i in data.draw(subset)]
    right_ops = [ops[i] for i in data.draw(subset)]
    with tempfile.TemporaryDirectory() as tmp:
        left, right = fresh(Path(tmp), "l"), fresh(Path(tmp), "r")
        left.apply_ops(left_ops)
        right.apply_ops(right_ops)

        pull(left, right)
        pull(right, left)

        assert left.digest() == right.digest()
        assert table(left) == table(right)


@settings(max_examples=40, deadline=None)
@given(all_ops, st.integers(0, 40))
def test_each_bucket_digest_is_the_xor_of_its_rows_after_writes_and_a_purge(
    ops: list[Op], through: int
) -> None:
    watermark = Op(Version(9, 9, 1), "purges", "tombstones",
                   {"through": Version(2, 3, through).encode()})
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh(Path(tmp), "db")
        db.apply_ops(ops)
        db.apply_ops([watermark])

        assert db.digest() == digest_of_rows(db)


def test_same_ops_in_any_order_give_the_same_digest(tmp_path: Path) -> None:
    ops = [Op(Version(1, 1, n), "playlists", KEYS[n % 3], {"name": str(n)}) for n in range(1, 7)]
    digests = set()
    for n, order in enumerate(itertools.islice(itertools.permutations(ops), 6)):
        db = fresh(tmp_path, str(n))
        db.apply_ops(order)
        digests.add(tuple(db.digest()))

    assert len(digests) == 1


def test_ten_differing_rows_among_many_touch_only_their_buckets(tmp_path: Path) -> None:
    left, right = fresh(tmp_path, "l"), fresh(tmp_path, "r")
    shared = [Op(Version(1, 1, n), "playlists", f"{n:08x}-0000-4000-8000-000000000000",
                 {"name": f"p{n}", "deleted": 0}) for n in range(1, 2001)]
    left.apply_ops(shared)
    right.apply_ops(shared)
    right.apply_ops([Op(Version(2, 1, n), "playlists", f"{n:08x}-0000-4000-8000-000000000000",
                        {"name": "edited"}) for n in range(1, 11)])

    differing = [b for b in range(BUCKETS) if left.digest()[b] != right.digest()[b]]

    assert 1 <= len(differing) <= 10
    assert pull(left, right) == 10
    assert left.digest() == right.digest()


def test_a_purge_watermark_drops_old_tombstones_and_their_digest_share(tmp_path: Path) -> None:
    purged, never = fresh(tmp_path, "purged"), fresh(tmp_path, "never")
    keep = Op(Version(1, 1, 1), "playlists", KEYS[0], {"name": "keep", "deleted": 0})
    old = [Op(Version(1, 1, 2), "playlists", KEYS[1], {"name": "old", "deleted": 0}),
           Op(Version(1, 1, 3), "playlists", KEYS[1], {"deleted": 1})]
    recent = [Op(Version(1, 1, 4), "playlists", KEYS[2], {"name": "recent", "deleted": 0}),
              Op(Version(1, 1, 6), "playlists", KEYS[2], {"deleted": 1})]
    watermark = Op(Version(1, 1, 7), "purges", "tombstones",
                   {"through": Version(1, 1, 5).encode()})
    purged.apply_ops([keep, *old, *recent, watermark])
    never.apply_ops([keep, *recent, watermark])

    assert purged.get_row("playlists", KEYS[1]) is None
    assert purged.get_row("playlists", KEYS[2]) is not None  # deleted after the watermark
    assert purged.digest() == never.digest()
    assert purged.tombstones() == 1


@given(st.sets(st.sampled_from(ENTITIES[KEY_ROWS].fields), min_size=1),
       st.builds(Version, st.integers(0, 10**9), st.integers(0, 99999), st.integers(0, 10**11)))
def test_a_row_written_whole_has_the_versions_text_of_that_row(
    fields: set[str], version: Version
) -> None:
    """A key row's field versions are written without building its Row (written_whole): the
    text must be the very one versions_text gives, or its digest would differ."""
    row = Row(KEY_ROWS, "k", dict.fromkeys(fields, 1), dict.fromkeys(fields, version))

    assert written_whole(fields, version) == versions_text(row)


def proxy_key(n: int) -> IdempotencyKey:
    """The proxy's key of write ``n``: a UUIDv7 of one same second (their rows share a bucket)."""
    ms = 1_796_500_000_000 + n
    return IdempotencyKey(f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7abc-8def-{n:012x}", f"{n:064x}")


def keyed_creates(db: MetadataDB, count: int, first: int = 0) -> list:
    fields = {"name": "p", "owner": None, "created_at": "x", "deleted": 0, "public": 0}
    return [lambda n=n: _keyed(db, proxy_key(n), _create_playlist, str(uuid.UUID(int=n + 1)),
                               fields, UNRESTRICTED) for n in range(first, first + count)]


def test_a_group_of_writes_updates_each_digest_row_it_touches_once_as_it_commits(
        tmp_path: Path) -> None:
    """Four keyed creates committed together: their four key rows share a bucket (the
    second of their keys), so the group writes five digest rows, not eight, each once and
    after every row, just before its COMMIT; and the digests are the rows'."""
    db = fresh(tmp_path, "db")
    db.begin_leading(1)
    statements: list[str] = []
    db._conn.set_trace_callback(statements.append)

    outcomes = db.write_together(keyed_creates(db, 4))

    db._conn.set_trace_callback(None)
    assert [o.status for o in outcomes] == [201] * 4
    touched = {bucket for bucket, digest in enumerate(db.digest()) if int(digest, 16)}
    updates = [n for n, sql in enumerate(statements) if sql.startswith("INSERT INTO digest")]
    assert len(touched) == len(updates) == 5
    assert updates == list(range(updates[0], updates[0] + 5))
    assert statements[updates[0] - 1] == "RELEASE nested"  # the last write's savepoint
    assert statements[updates[-1] + 1] == "COMMIT"
    assert db.digest() == digest_of_rows(db)


def test_a_write_undone_in_its_group_takes_its_digest_changes_back(tmp_path: Path) -> None:
    """A write that wrote rows, then failed, is rolled back to its savepoint: the changes to
    the digests it made go with its rows, and those of the writes around it stay."""
    db = fresh(tmp_path, "db")
    db.begin_leading(1)
    before, after = keyed_creates(db, 2), keyed_creates(db, 2, first=10)

    def write_then_fail() -> None:
        db.write([Change("playlists", KEYS[n], {"name": "half", "deleted": 0})
                  for n in range(6)])
        raise ValueError("changed its mind")

    outcomes = db.write_together([*before, write_then_fail, *after])

    assert outcomes[2].check(ValueError)
    assert all(db.get_row("playlists", key) is None for key in KEYS)
    assert len(db.playlists()) == 4
    assert db.digest() == digest_of_rows(db)


def test_a_transaction_rolled_back_or_failing_as_it_commits_leaves_the_digests_unchanged(
        tmp_path: Path) -> None:
    """Nothing of a transaction rolled back reaches the digests, nor the next transaction's:
    one that raises, and one whose digest rows cannot be written as it commits (SQLite
    refusing, as a full disk makes it)."""
    db = fresh(tmp_path, "db")
    db.begin_leading(1)
    db.write_together(keyed_creates(db, 2))
    digests = db.digest()

    def fails() -> None:
        with Transaction(db._conn):
            db.apply_ops([Op(Version(5, 1, 1), "playlists", KEYS[0], {"name": "x"})])
            raise ValueError("no")

    with pytest.raises(ValueError):
        fails()
    db._conn.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON digest"
                     " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
        db.apply_ops([Op(Version(5, 1, 2), "playlists", KEYS[1], {"name": "y"}),
                      Op(Version(5, 1, 3), "playlists", KEYS[2], {"name": "z"})])
    db._conn.execute("DROP TRIGGER full")

    assert db.digest() == digests == digest_of_rows(db)
    assert not db._conn.in_transaction
    db.apply_ops([Op(Version(5, 1, 4), "playlists", KEYS[3], {"name": "w"})])
    assert db.digest() == digest_of_rows(db) != digests
