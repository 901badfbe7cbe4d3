"""The apply rule: newer fields win, whatever order ops arrive in, however often."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from distpotify.model import Op, Row, Version
from distpotify.store.merge import merge, row_ops, won_fields

FIELDS = ("title", "artist", "deleted")

versions = st.builds(
    Version, st.integers(1, 5), st.integers(1, 3), st.integers(1, 50)
)
ops = st.lists(
    st.builds(
        lambda version, fields: Op(version, "songs", "k", fields),
        versions,
        st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 3), min_size=1),
    ),
    unique_by=lambda op: op.version,
    max_size=12,
)


@given(versions, versions)
def test_versions_compare_as_their_tuples_and_their_text(a: Version, b: Version) -> None:
    as_tuples = (a.epoch, a.leader_id, a.seq), (b.epoch, b.leader_id, b.seq)
    for compare in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__"):
        expected = getattr(as_tuples[0], compare)(as_tuples[1])
        assert getattr(a, compare)(b) == expected
        assert getattr(a.encode(), compare)(b.encode()) == expected


def apply_all(sequence: list[Op], row: Row | None = None) -> Row | None:
    for op in sequence:
        row = merge(row, op) or row
    return row


def test_first_op_creates_the_row() -> None:
    op = Op(Version(1, 1, 1), "songs", "k", {"title": "a"})

    row = merge(None, op)

    assert row is not None
    assert row.fields == {"title": "a"} and row.version == Version(1, 1, 1)


def test_older_op_changes_nothing() -> None:
    row = merge(None, Op(Version(2, 1, 1), "songs", "k", {"title": "new"}))

    assert merge(row, Op(Version(1, 3, 9), "songs", "k", {"title": "old"})) is None


def test_newer_op_wins_only_the_fields_it_writes() -> None:
    row = merge(None, Op(Version(1, 1, 1), "songs", "k", {"title": "a", "artist": "x"}))

    row = merge(row, Op(Version(1, 1, 2), "songs", "k", {"artist": "y"}))

    assert row is not None and row.fields == {"title": "a", "artist": "y"}


def test_tombstone_is_a_field_write_and_a_later_edit_keeps_it_deleted() -> None:
    row = merge(None, Op(Version(1, 1, 1), "songs", "k", {"title": "a", "deleted": 0}))
    row = merge(row, Op(Version(1, 1, 3), "songs", "k", {"deleted": 1}))

    row = merge(row, Op(Version(1, 1, 2), "songs", "k", {"deleted": 0})) or row
    row = merge(row, Op(Version(1, 1, 4), "songs", "k", {"title": "b"})) or row

    assert row.fields == {"title": "b", "deleted": 1}


@given(ops, st.randoms(use_true_random=False))
def test_any_order_converges_to_the_same_row(sequence: list[Op], rng) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(sequence)
    rng.shuffle(shuffled)

    assert apply_all(sequence) == apply_all(shuffled)


watermarks = st.lists(
    st.builds(lambda version, through: Op(version, "purges", "idempotency",
                                          {"through": through.encode()}), versions, versions),
    unique_by=lambda op: op.version, min_size=1, max_size=8,
)


@given(watermarks, st.randoms(use_true_random=False))
def test_a_purge_watermark_only_moves_forward_in_any_order(sequence: list[Op], rng) -> None:  # type: ignore[no-untyped-def]
    """A leader's lower mark, newer by version (written before it saw a dead leader's higher
    one), does not take the watermark back: the largest ``through`` wins, in any order."""
    shuffled = list(sequence)
    rng.shuffle(shuffled)
    row = apply_all(shuffled)

    assert row == apply_all(sequence)
    assert row.fields["through"] == max(op.fields["through"] for op in sequence)


@given(ops)
def test_applying_again_changes_nothing(sequence: list[Op]) -> None:
    once = apply_all(sequence)

    assert apply_all(sequence, once) == once
    assert all(merge(once, op) is None for op in sequence)


@given(ops)
def test_each_field_holds_the_value_of_its_newest_write(sequence: list[Op]) -> None:
    row = apply_all(sequence)

    for name in FIELDS:
        writes = [op for op in sequence if name in op.fields]
        if writes:
            newest = max(writes, key=lambda op: op.version)
            assert row is not None and row.fields[name] == newest.fields[name]
            assert row.versions[name] == newest.version


@given(ops)
def test_a_rows_ops_rebuild_it_field_by_field_with_their_versions(sequence: list[Op]) -> None:
    row = apply_all(sequence)

    if row is not None:
        rebuilt = row_ops(row)
        assert apply_all(rebuilt) == row
        assert [op.version for op in rebuilt] == sorted({*row.versions.values()})


@given(ops, ops)
def test_won_fields_are_those_the_later_ops_wrote_newer(first: list[Op], later: list[Op]) -> None:
    before = apply_all(first)
    after = apply_all(later, before)

    if after is not None:
        current = before.versions if before is not None else {}
        assert won_fields(before, after) == {
            op_field for op in later for op_field in op.fields
            if after.versions[op_field] != current.get(op_field)
        }


def test_version_text_sorts_like_the_tuple() -> None:
    a, b = Version(2, 1, 999), Version(10, 1, 1)

    assert a < b and a.encode() < b.encode()
    assert Version.decode(b.encode()) == b
