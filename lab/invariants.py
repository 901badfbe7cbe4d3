"""The randomized run's checker: the invariants the history of operations (``traffic.py``)
must leave true in what every replica serves once the faults are healed and it converged.

Pure functions of the history and the replicas' views, so each rule is tested on made-up
histories (tests/lab/test_invariants.py). A write that ended ``info`` may have happened or
not, but at most once; one that ended ``fail`` must not have happened; one that ended ``ok``
must be there, exactly once, unless a later delete (``ok`` or ``info``) may have removed it.
"""
# test-case-name: tests.lab.test_invariants

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from lab.traffic import Op

EXAMPLES = 5
INVARIANTS = (
    "no acknowledged write lost",
    "no acknowledged delete undone",
    "every write takes effect at most once",
    "a refused write changes nothing",
    "no phantom records",
    "replicas serve the same rows",
    "bytes served equal bytes uploaded",
)


@attrs.frozen
class LibraryView:
    """What one replica serves: songs (id -> their fields, sha256 included) and live
    playlists (id -> {"name", "items": {item id: song id}})."""

    node_id: int
    songs: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    playlists: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None

    def comparable(self) -> tuple[Any, Any]:
        return self.songs, self.playlists


@attrs.frozen
class Violation:
    invariant: str
    record: str
    detail: str
    nodes: tuple[int, ...] = ()
    ops: tuple[dict[str, Any], ...] = ()

    def line(self) -> str:
        where = f" on {list(self.nodes)}" if self.nodes else ""
        return f"{self.invariant}: {self.record}{where}: {self.detail}"


def _possible(ops: Iterable[Op]) -> list[Op]:
    """The operations that may have taken effect."""
    return [op for op in ops if op.outcome in ("ok", "info")]


class _Index:
    """The history arranged by record."""

    def __init__(self, history: Sequence[Op]) -> None:
        self.uploads_by_sha: dict[str, list[Op]] = defaultdict(list)
        self.song_of_upload: dict[str, Op] = {}  # song id -> the acknowledged upload
        self.creates: list[Op] = []
        self.edits: dict[tuple[str, str], list[Op]] = defaultdict(list)  # (song, field)
        self.renames: dict[str, list[Op]] = defaultdict(list)
        self.song_deletes: dict[str, list[Op]] = defaultdict(list)
        self.playlist_deletes: dict[str, list[Op]] = defaultdict(list)
        self.adds: dict[tuple[str, str], list[Op]] = defaultdict(list)  # (playlist, song)
        self.removes: dict[str, list[Op]] = defaultdict(list)  # item id
        self.streams: list[Op] = []
        for op in history:
            args = op.args
            if op.kind == "upload":
                self.uploads_by_sha[args["sha256"]].append(op)
                if op.outcome == "ok" and op.result.get("id"):
                    self.song_of_upload[op.result["id"]] = op
            elif op.kind == "edit_song":
                self.edits[(args["song"], args["field"])].append(op)
            elif op.kind == "delete_song":
                self.song_deletes[args["song"]].append(op)
            elif op.kind == "create_playlist":
                self.creates.append(op)
            elif op.kind == "rename_playlist":
                self.renames[args["playlist"]].append(op)
            elif op.kind == "delete_playlist":
                self.playlist_deletes[args["playlist"]].append(op)
            elif op.kind == "add_item":
                self.adds[(args["playlist"], args["song"])].append(op)
            elif op.kind == "remove_item":
                self.removes[args["item"]].append(op)
            elif op.kind == "stream":
                self.streams.append(op)

    def song_maybe_deleted(self, song: str) -> bool:
        return bool(_possible(self.song_deletes.get(song, ())))

    def playlist_maybe_deleted(self, playlist: str) -> bool:
        return bool(_possible(self.playlist_deletes.get(playlist, ())))

    def create_for(self, playlist_id: str, name: str, renamed: bool) -> Op | None:
        """The create that made this playlist: by the id it asked for or was answered, else
        (an unknown outcome with the server's id, never renamed by us) by its name."""
        for op in self.creates:
            if playlist_id in (op.args.get("id"), op.result.get("id")):
                return op
        if not renamed:
            for op in self.creates:
                if op.args["name"] == name and not op.args.get("id"):
                    return op
        return None


def check(history: Sequence[Op], views: dict[int, LibraryView]) -> list[Violation]:
    """Every invariant, on every reachable replica's view."""
    index = _Index(history)
    found: list[Violation] = []
    reachable = {n: v for n, v in sorted(views.items()) if v.reachable}
    found += _replicas_equal(reachable)
    for view in reachable.values():
        found += _songs(index, view)
        found += _playlists(index, view)
    found += _streams(index)
    return _merged(found)


def _merged(found: list[Violation]) -> list[Violation]:
    """One violation per (invariant, record, detail), naming every node that shows it."""
    merged: dict[tuple[str, str, str], Violation] = {}
    for violation in found:
        key = (violation.invariant, violation.record, violation.detail)
        if key in merged:
            nodes = tuple(sorted(set(merged[key].nodes) | set(violation.nodes)))
            merged[key] = attrs.evolve(merged[key], nodes=nodes)
        else:
            merged[key] = violation
    return list(merged.values())


def _replicas_equal(views: dict[int, LibraryView]) -> list[Violation]:
    if len({repr(v.comparable()) for v in views.values()}) <= 1:
        return []
    found = []
    songs = set().union(*(v.songs for v in views.values()))
    for song in sorted(songs):
        copies = {n: v.songs.get(song) for n, v in views.items()}
        if len({repr(c) for c in copies.values()}) > 1:
            found.append(Violation("replicas serve the same rows", f"song {song}",
                                   _differences(copies), tuple(copies)))
    playlists = set().union(*(v.playlists for v in views.values()))
    for playlist in sorted(playlists):
        copies = {n: v.playlists.get(playlist) for n, v in views.items()}
        if len({repr(c) for c in copies.values()}) > 1:
            found.append(Violation("replicas serve the same rows", f"playlist {playlist}",
                                   _differences(copies), tuple(copies)))
    return found


def _differences(copies: dict[int, Any]) -> str:
    return "; ".join(f"node {n}: {'absent' if c is None else c}" for n, c in copies.items())


def _songs(index: _Index, view: LibraryView) -> list[Violation]:
    found = []
    node = (view.node_id,)
    by_sha: dict[str | None, list[str]] = defaultdict(list)
    for song_id, song in view.songs.items():
        by_sha[song.get("sha256")].append(song_id)
    for sha, ids in sorted(by_sha.items(), key=lambda item: str(item[0])):
        uploads = index.uploads_by_sha.get(sha or "", [])
        if not uploads:
            found.append(Violation("no phantom records", f"songs {sorted(ids)}",
                                   f"sha256 {sha} was never uploaded", node))
            continue
        if len(ids) > 1:
            found.append(Violation(
                "every write takes effect at most once", f"upload sha256 {sha}",
                f"{len(ids)} songs hold these bytes: {sorted(ids)}", node,
                tuple(op.brief() for op in uploads)))
        if not _possible(uploads):
            found.append(Violation(
                "a refused write changes nothing", f"song {ids[0]}",
                "present although every upload of its bytes was refused", node,
                tuple(op.brief() for op in uploads)))
    present = {song.get("sha256") for song in view.songs.values()}
    for sha, uploads in index.uploads_by_sha.items():
        acked = [op for op in uploads if op.outcome == "ok"]
        if not acked or sha in present:
            continue
        acked_ids = sorted(str(op.result.get("id")) for op in acked)
        if any(index.song_maybe_deleted(song_id) for song_id in acked_ids):
            continue
        found.append(Violation(
            "no acknowledged write lost", f"song {acked_ids[0]}",
            f"acknowledged upload (sha256 {sha}) is missing", node,
            tuple(op.brief() for op in acked)))
    for song_id, deletes in index.song_deletes.items():
        acked = [op for op in deletes if op.outcome == "ok"]
        if acked and song_id in view.songs:
            found.append(Violation("no acknowledged delete undone", f"song {song_id}",
                                   "deleted with an acknowledgement, served again", node,
                                   tuple(op.brief() for op in acked)))
    for (song_id, field), edits in index.edits.items():
        copy = view.songs.get(song_id)
        upload = index.song_of_upload.get(song_id)
        if copy is None or upload is None:
            continue
        found += _field(f"song {song_id}", field, copy.get(field), upload.args.get(field),
                        edits, node)
    return found


def _field(record: str, field: str, value: Any, original: Any, edits: Sequence[Op],
           node: tuple[int, ...]) -> list[Violation]:
    """A field written by EDITS (each with a unique value): it holds the original or a value
    some edit may have written; not the original once one was acknowledged; the one
    acknowledged edit's value when no other edit may have happened."""
    possible = _possible(edits)
    acked = [op for op in edits if op.outcome == "ok"]
    refused = {op.args["value"]: op for op in edits if op.outcome == "fail"}
    if value in refused:
        return [Violation("a refused write changes nothing", f"{record} {field}",
                          f"holds {value!r}, written only by a refused edit", node,
                          (refused[value].brief(),))]
    allowed = {original} | {op.args["value"] for op in possible}
    if value not in allowed:
        return [Violation("no phantom records", f"{record} {field}",
                          f"holds {value!r}, which nobody wrote", node)]
    if acked and value == original:
        return [Violation("no acknowledged write lost", f"{record} {field}",
                          f"still {value!r} after {len(acked)} acknowledged edit(s)", node,
                          tuple(op.brief() for op in acked))]
    if len(possible) == 1 and acked and value != acked[0].args["value"]:
        return [Violation("no acknowledged write lost", f"{record} {field}",
                          f"holds {value!r}, not the only edit's {acked[0].args['value']!r}",
                          node, (acked[0].brief(),))]
    return []


def _playlists(index: _Index, view: LibraryView) -> list[Violation]:
    found = []
    node = (view.node_id,)
    made_by: dict[int, list[str]] = defaultdict(list)  # id(create op) -> playlists
    creates = {id(op): op for op in index.creates}
    for playlist_id, playlist in sorted(view.playlists.items()):
        create = index.create_for(playlist_id, str(playlist.get("name")),
                                  bool(index.renames.get(playlist_id)))
        if create is None:
            found.append(Violation("no phantom records", f"playlist {playlist_id}",
                                   f"named {playlist.get('name')!r}, never created", node))
            continue
        made_by[id(create)].append(playlist_id)
        if create.outcome == "fail":
            found.append(Violation("a refused write changes nothing", f"playlist {playlist_id}",
                                   "present although its create was refused", node,
                                   (create.brief(),)))
        found += _field(f"playlist {playlist_id}", "name", playlist.get("name"),
                        create.args["name"], index.renames.get(playlist_id, ()), node)
        found += _items(index, view, playlist_id, playlist)
    for key, playlists in made_by.items():
        if len(playlists) > 1:
            found.append(Violation("every write takes effect at most once",
                                   f"create {creates[key].args['name']}",
                                   f"{len(playlists)} playlists: {playlists}", node,
                                   (creates[key].brief(),)))
    for op in index.creates:
        created_id = str(op.result.get("id") or op.args.get("id"))
        if (op.outcome == "ok" and id(op) not in made_by
                and not index.playlist_maybe_deleted(created_id)):
            found.append(Violation("no acknowledged write lost", f"playlist {created_id}",
                                   "acknowledged create is missing", node, (op.brief(),)))
    for playlist_id, deletes in index.playlist_deletes.items():
        acked = [op for op in deletes if op.outcome == "ok"]
        if acked and playlist_id in view.playlists:
            found.append(Violation("no acknowledged delete undone", f"playlist {playlist_id}",
                                   "deleted with an acknowledgement, served again", node,
                                   tuple(op.brief() for op in acked)))
    return found


def _items(index: _Index, view: LibraryView, playlist_id: str,
           playlist: dict[str, Any]) -> list[Violation]:
    found = []
    node = (view.node_id,)
    items: dict[str, str] = playlist.get("items") or {}
    per_song = Counter(items.values())
    for song_id, count in sorted(per_song.items()):
        adds = index.adds.get((playlist_id, song_id), [])
        record = f"item ({playlist_id}, {song_id})"
        if not adds:
            found.append(Violation("no phantom records", record, "never added", node))
            continue
        if count > 1:
            found.append(Violation("every write takes effect at most once", record,
                                   f"{count} items for one add", node,
                                   tuple(op.brief() for op in adds)))
        if not _possible(adds):
            found.append(Violation("a refused write changes nothing", record,
                                   "present although its add was refused", node,
                                   tuple(op.brief() for op in adds)))
    for item_id, removes in index.removes.items():
        acked = [op for op in removes if op.outcome == "ok"]
        if acked and item_id in items:
            found.append(Violation("no acknowledged delete undone", f"item {item_id}",
                                   "removed with an acknowledgement, served again", node,
                                   tuple(op.brief() for op in acked)))
    for (listed_in, song_id), adds in index.adds.items():
        if listed_in != playlist_id or song_id in per_song:
            continue
        for op in adds:
            item_id = str(op.result.get("id"))
            if (op.outcome == "ok" and not _possible(index.removes.get(item_id, ()))
                    and not index.song_maybe_deleted(song_id)):
                found.append(Violation("no acknowledged write lost",
                                       f"item ({playlist_id}, {song_id})",
                                       "acknowledged add is missing from its live playlist",
                                       node, (op.brief(),)))
    return found


def _streams(index: _Index) -> list[Violation]:
    """Bytes served while the faults ran: a 200 is the whole song, byte for byte."""
    found = []
    for op in index.streams:
        want = op.args.get("sha256")
        if op.status == 200 and want and op.result.get("sha256") != want:
            found.append(Violation(
                "bytes served equal bytes uploaded", f"song {op.args['song']}",
                f"a 200 served {op.result.get('bytes')} bytes hashing to "
                f"{op.result.get('sha256')}, uploaded {want}", (), (op.brief(),)))
    return found


def summary(history: Sequence[Op]) -> dict[str, dict[str, int]]:
    """Operations by kind and outcome."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for op in history:
        counts[op.kind][op.outcome] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}
