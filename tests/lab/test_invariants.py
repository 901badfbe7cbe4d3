"""The randomized run's invariants on made-up histories and replica views (no namespaces),
and how the workload classifies answers: each rule finds what it names and nothing else."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from lab.invariants import INVARIANTS, LibraryView, check
from lab.traffic import Op, outcome_of

SONG, SONG2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
LIST, ITEM = "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"
SHA, SHA2 = "a" * 64, "b" * 64
_count = itertools.count()


def op(kind: str, outcome: str = "ok", args: dict[str, Any] | None = None,
       result: dict[str, Any] | None = None, status: int | None = None) -> Op:
    n = next(_count)
    return Op("w0-proxy", n, kind, "proxy", f"key-{n}", float(n), n + 0.5, outcome,
              status if status is not None else {"ok": 201, "fail": 404}.get(outcome),
              args=args or {}, result=result or {})


def upload(outcome: str = "ok", song: str | None = SONG, sha: str = SHA) -> Op:
    fields = {"title": f"t-{sha[:4]}", "album": "a", "genre": "g"}
    return op("upload", outcome, {"sha256": sha, **fields},
              {"id": song, "sha256": sha} if outcome == "ok" else {})


def song_row(sha: str = SHA, **fields: Any) -> dict[str, Any]:
    return {"sha256": sha, "title": f"t-{sha[:4]}", "album": "a", "genre": "g", **fields}


def views(*libraries: tuple[dict[str, Any], dict[str, Any]]) -> dict[int, LibraryView]:
    return {n: LibraryView(n, songs, playlists)
            for n, (songs, playlists) in enumerate(libraries, start=1)}


def same(songs: dict[str, Any], playlists: dict[str, Any] | None = None,
         nodes: int = 3) -> dict[int, LibraryView]:
    return views(*[(songs, playlists or {})] * nodes)


def broken(found: list[Any]) -> set[str]:
    return {v.invariant for v in found}


def test_a_history_whose_every_write_is_served_everywhere_passes() -> None:
    history = [
        upload(),
        op("edit_song", args={"song": SONG, "field": "title", "value": "new"}),
        op("create_playlist", args={"name": "p1", "id": LIST}, result={"id": LIST}),
        op("add_item", args={"playlist": LIST, "song": SONG}, result={"id": ITEM}),
        op("stream", args={"song": SONG, "sha256": SHA}, result={"sha256": SHA, "bytes": 9},
           status=200),
    ]
    playlists = {LIST: {"name": "p1", "items": {ITEM: SONG}}}

    assert check(history, same({SONG: song_row(title="new")}, playlists)) == []


def test_an_acknowledged_upload_missing_on_one_replica_is_lost_there() -> None:
    found = check([upload()], views(({SONG: song_row()}, {}), ({}, {}), ({SONG: song_row()}, {})))

    lost = [v for v in found if v.invariant == "no acknowledged write lost"]
    assert [v.nodes for v in lost] == [(2,)]
    assert "replicas serve the same rows" in broken(found)


def test_an_upload_of_unknown_outcome_may_be_there_or_not() -> None:
    assert check([upload("info", None)], same({})) == []
    assert check([upload("info", None)], same({SONG: song_row()})) == []


def test_a_refused_upload_that_is_served_is_reported() -> None:
    found = check([upload("fail", None)], same({SONG: song_row()}))

    assert broken(found) == {"a refused write changes nothing"}


def test_two_songs_from_one_upload_break_exactly_once() -> None:
    found = check([upload()], same({SONG: song_row(), SONG2: song_row()}))

    assert broken(found) == {"every write takes effect at most once"}


def test_a_song_nobody_uploaded_is_a_phantom() -> None:
    assert broken(check([], same({SONG: song_row(SHA2)}))) == {"no phantom records"}


def test_an_acknowledged_delete_undone_is_reported_and_a_deleted_song_may_be_gone() -> None:
    delete = op("delete_song", args={"song": SONG}, status=204)

    assert broken(check([upload(), delete], same({SONG: song_row()}))) == {
        "no acknowledged delete undone"}
    assert check([upload(), delete], same({})) == []
    maybe = op("delete_song", "info", args={"song": SONG})
    assert check([upload(), maybe], same({SONG: song_row()})) == []
    assert check([upload(), maybe], same({})) == []


@pytest.mark.parametrize(("served", "edits", "expected"), [
    ("new", [("ok", "new")], set()),
    ("t-aaaa", [("ok", "new")], {"no acknowledged write lost"}),
    ("t-aaaa", [("info", "new")], set()),
    ("new", [("info", "new")], set()),
    ("new", [("fail", "new")], {"a refused write changes nothing"}),
    ("other", [("ok", "new")], {"no phantom records"}),
    ("one", [("ok", "one"), ("ok", "two")], set()),  # concurrent edits: either may win
    ("two", [("ok", "one"), ("info", "two")], set()),
    ("two", [("ok", "one"), ("fail", "two")], {"a refused write changes nothing"}),
])
def test_an_edited_field_holds_a_value_some_possible_edit_wrote(
        served: str, edits: list[tuple[str, str]], expected: set[str]) -> None:
    history = [upload()] + [op("edit_song", outcome, {"song": SONG, "field": "title",
                                                       "value": value})
                            for outcome, value in edits]

    assert broken(check(history, same({SONG: song_row(title=served)}))) == expected


def test_playlists_are_matched_by_id_or_by_name_and_created_at_most_once() -> None:
    by_server = op("create_playlist", "info", args={"name": "p1"})
    assert check([by_server], same({}, {LIST: {"name": "p1", "items": {}}})) == []
    twice = {LIST: {"name": "p1", "items": {}}, SONG2: {"name": "p1", "items": {}}}
    assert broken(check([by_server], same({}, twice))) == {
        "every write takes effect at most once"}
    acked = op("create_playlist", args={"name": "p2", "id": LIST}, result={"id": LIST})
    assert broken(check([acked], same({}, {}))) == {"no acknowledged write lost"}
    assert broken(check([], same({}, {LIST: {"name": "p9", "items": {}}}))) == {
        "no phantom records"}


def test_playlist_deletes_and_renames() -> None:
    create = op("create_playlist", args={"name": "p1", "id": LIST}, result={"id": LIST})
    rename = op("rename_playlist", args={"playlist": LIST, "field": "name", "value": "p1b"})
    delete = op("delete_playlist", args={"playlist": LIST}, status=204)

    assert check([create, rename], same({}, {LIST: {"name": "p1b", "items": {}}})) == []
    assert broken(check([create, rename], same({}, {LIST: {"name": "p1", "items": {}}}))) == {
        "no acknowledged write lost"}
    assert broken(check([create, delete], same({}, {LIST: {"name": "p1", "items": {}}}))) == {
        "no acknowledged delete undone"}


def test_items_are_there_exactly_once_until_removed() -> None:
    create = op("create_playlist", args={"name": "p1", "id": LIST}, result={"id": LIST})
    add = op("add_item", args={"playlist": LIST, "song": SONG}, result={"id": ITEM})
    remove = op("remove_item", args={"item": ITEM, "playlist": LIST, "song": SONG},
                status=204)
    songs = {SONG: song_row()}
    base = [upload(), create, add]

    def listing(items: dict[str, str]) -> dict[int, LibraryView]:
        return same(songs, {LIST: {"name": "p1", "items": items}})

    assert check(base, listing({ITEM: SONG})) == []
    assert broken(check(base, listing({}))) == {"no acknowledged write lost"}
    assert broken(check(base, listing({ITEM: SONG, "x": SONG}))) == {
        "every write takes effect at most once"}
    assert broken(check([*base, remove], listing({ITEM: SONG}))) == {
        "no acknowledged delete undone"}
    assert check([*base, remove], listing({})) == []
    assert broken(check([upload(), create], listing({ITEM: SONG}))) == {"no phantom records"}


def test_a_stream_answered_200_with_other_bytes_is_reported() -> None:
    good = op("stream", args={"song": SONG, "sha256": SHA}, result={"sha256": SHA}, status=200)
    bad = op("stream", args={"song": SONG, "sha256": SHA}, result={"sha256": SHA2}, status=200)
    failed = op("stream", "info", args={"song": SONG, "sha256": SHA}, status=503)

    assert check([upload(), good, failed], same({SONG: song_row()})) == []
    assert broken(check([upload(), bad], same({SONG: song_row()}))) == {
        "bytes served equal bytes uploaded"}


def test_one_violation_names_every_replica_that_shows_it() -> None:
    found = check([upload()], same({}))

    assert [(v.invariant, v.nodes) for v in found] == [("no acknowledged write lost",
                                                         (1, 2, 3))]
    assert all(v.invariant in INVARIANTS for v in found)


@pytest.mark.parametrize(("status", "sent", "outcome"), [
    (201, True, "ok"), (204, True, "ok"), (404, True, "fail"), (421, True, "fail"),
    (409, True, "fail"), (507, True, "fail"), (500, True, "info"), (502, True, "info"),
    (503, True, "info"), (None, True, "info"), (None, False, "fail"),
])
def test_answers_are_classified_ok_fail_or_unknown(status: int | None, sent: bool,
                                                   outcome: str) -> None:
    assert outcome_of(status, sent) == outcome
