"""The convergence checker: after the faults end, read every replica directly until they
agree (or a deadline passes), then compare them with each other and with every write the
workload saw acknowledged, down to the chunk bytes.
"""
# test-case-name: tests.lab.test_checker

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from lab.lab import HTTP_PORT, Lab
from lab.workload import Operation

PAGE = 100
MAX_PAGES = 200
POLL_INTERVAL = 0.25
READ_TIMEOUT = 3.0
EXAMPLES = 5


@attrs.frozen
class ReplicaView:
    """What one replica lists: songs (id -> sha256) and playlist ids, or why it could not."""

    node_id: int
    songs: dict[str, str | None] = attrs.field(factory=dict)
    playlists: frozenset[str] = frozenset()
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None


@attrs.frozen
class SongCopy:
    """One replica's copy of a song: its chunk registry and what its chunk bytes hash to."""

    chunks: tuple[tuple[int, int, str], ...]  # (idx, size, sha256) as the replica lists them
    bytes_sha256: str | None  # sha256 of all chunk bytes in order; None if unreadable
    bad_chunks: tuple[int, ...]  # chunks whose bytes do not match their listed sha256
    error: str | None = None


def read_replica(lab: Lab, node_id: int) -> ReplicaView:
    """List every song and playlist of NODE_ID, asking from its own host."""
    host = lab.replicas[node_id].host
    client = lab.client(host, READ_TIMEOUT)
    songs: dict[str, str | None] = {}
    try:
        for page in range(MAX_PAGES):
            body = client.get_json(host.address, HTTP_PORT,
                                   f"/songs?limit={PAGE}&offset={page * PAGE}")
            batch = body.get("songs") or []
            songs.update((song["id"], song.get("sha256")) for song in batch)
            if len(batch) < PAGE or len(songs) >= int(body.get("total") or 0):
                break
        listing = client.get_json(host.address, HTTP_PORT, "/playlists").get("playlists") or []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return ReplicaView(node_id, error=f"{type(exc).__name__}: {exc}")
    playlists = frozenset(p["id"] for p in listing if isinstance(p, dict) and "id" in p)
    return ReplicaView(node_id, songs, playlists)


def read_song(lab: Lab, node_id: int, song_id: str) -> SongCopy:
    """Fetch a song's metadata and every chunk from NODE_ID and hash what came back."""
    host = lab.replicas[node_id].host
    client = lab.client(host, READ_TIMEOUT)
    try:
        meta = client.get_json(host.address, HTTP_PORT, f"/songs/{song_id}")
        chunks = tuple(sorted((int(c["idx"]), int(c["size"]), str(c["sha256"]))
                              for c in meta.get("chunks") or []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return SongCopy((), None, (), f"{type(exc).__name__}: {exc}")
    whole = hashlib.sha256()
    bad: list[int] = []
    for idx, _size, digest in chunks:
        try:
            answer = client.request("GET", host.address, HTTP_PORT,
                                    f"/songs/{song_id}/chunks/{idx}")
        except OSError as exc:
            return SongCopy(chunks, None, tuple(bad), f"chunk {idx}: {exc}")
        if answer.status != 200:
            return SongCopy(chunks, None, tuple(bad), f"chunk {idx}: HTTP {answer.status}")
        if hashlib.sha256(answer.body).hexdigest() != digest:
            bad.append(idx)
        whole.update(answer.body)
    return SongCopy(chunks, whole.hexdigest(), tuple(bad))


def acked_writes(operations: Iterable[Operation]) -> list[Operation]:
    return [op for op in operations if op.ok and op.kind != "read" and op.key]


def uploaded(acked: Iterable[Operation]) -> dict[str, str | None]:
    """Song id -> sha256 of the bytes the client uploaded, for acknowledged uploads."""
    return {op.key: op.sha256 for op in acked if op.kind == "upload" and op.key is not None}


def missing_writes(
    views: dict[int, ReplicaView], acked: Sequence[Operation]
) -> list[dict[str, Any]]:
    """Acknowledged writes absent from (or different on) some replica."""
    missing = []
    for op in acked:
        absent, different = [], []
        for node_id, view in sorted(views.items()):
            if op.kind == "upload":
                if op.key not in view.songs:
                    absent.append(node_id)
                elif view.songs[op.key] != op.sha256:
                    different.append(node_id)
            elif op.key not in view.playlists:
                absent.append(node_id)
        if absent or different:
            missing.append({
                "worker": op.worker, "index": op.index, "kind": op.kind, "key": op.key,
                "acknowledged_at": op.finished, "missing_on": absent,
                "different_on": different,
            })
    return missing


def divergence(views: dict[int, ReplicaView]) -> list[dict[str, Any]]:
    """Replicas that lack a row another has, or hold a song with a different sha256."""
    songs: dict[str, set[str | None]] = {}
    playlists: set[str] = set()
    for view in views.values():
        for song_id, digest in view.songs.items():
            songs.setdefault(song_id, set()).add(digest)
        playlists |= view.playlists
    found = []
    for node_id, view in sorted(views.items()):
        lacking_songs = sorted(set(songs) - set(view.songs))
        lacking_playlists = sorted(playlists - view.playlists)
        conflicting = sorted(s for s in view.songs if len(songs[s]) > 1)
        if lacking_songs or lacking_playlists or conflicting:
            found.append({
                "node": node_id,
                "songs_missing": len(lacking_songs),
                "playlists_missing": len(lacking_playlists),
                "songs_conflicting": len(conflicting),
                "examples": (lacking_songs + lacking_playlists + conflicting)[:EXAMPLES],
            })
    return found


def chunk_divergence(lab: Lab, views: dict[int, ReplicaView],
                     expected: dict[str, str | None]) -> list[dict[str, Any]]:
    """Songs whose chunk registry or bytes differ between replicas or from what was uploaded."""
    problems = []
    for song_id in sorted(set().union(*(view.songs for view in views.values()))):
        copies = {n: read_song(lab, n, song_id) for n, v in views.items() if song_id in v.songs}
        registries = {copy.chunks for copy in copies.values()}
        want = expected.get(song_id)
        for node_id, copy in sorted(copies.items()):
            reasons = []
            if copy.error:
                reasons.append(copy.error)
            if copy.bad_chunks:
                reasons.append(f"chunks {list(copy.bad_chunks)} fail their sha256")
            if len(registries) > 1:
                reasons.append("chunk registry differs from another replica's")
            if want and copy.bytes_sha256 and copy.bytes_sha256 != want:
                reasons.append("chunk bytes do not add up to the uploaded file")
            if reasons:
                problems.append({"node": node_id, "song": song_id, "reasons": reasons})
    return problems


@attrs.frozen
class Convergence:
    views: dict[int, ReplicaView]
    seconds: float | None  # from the start of the wait until agreement; None: never agreed
    waited: float


def converged(views: dict[int, ReplicaView], acked: Sequence[Operation]) -> bool:
    return (all(view.reachable for view in views.values())
            and not missing_writes(views, acked) and not divergence(views))


def await_convergence(
    lab: Lab, acked: Sequence[Operation], timeout: float, nodes: Iterable[int] | None = None
) -> Convergence:
    """Read NODES (default: every running replica) until they agree and hold every
    acknowledged write, or TIMEOUT passes."""
    chosen = sorted(nodes if nodes is not None else
                    (n for n, r in lab.replicas.items() if r.running))
    started = time.monotonic()
    deadline = started + timeout
    while True:
        views = {node_id: read_replica(lab, node_id) for node_id in chosen}
        now = time.monotonic()
        if converged(views, acked):
            return Convergence(views, round(now - started, 3), round(now - started, 3))
        if now >= deadline:
            return Convergence(views, None, round(now - started, 3))
        time.sleep(min(POLL_INTERVAL, max(deadline - now, 0.0)))
