"""The convergence checker: after the faults end, read every replica directly until they
agree (or a deadline passes), then compare them with each other and with every write the
workload saw acknowledged, down to the chunk bytes.
"""
# test-case-name: tests.lab.test_checker

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from distpotify.model import ENTITIES
from lab import convergence
from lab.convergence import JOIN_ALLOWANCE, Waited
from lab.invariants import LibraryView
from lab.lab import HTTP_PORT, Lab
from lab.workload import Operation

PAGE = 100
LIBRARY_PAGE = 500
DATABASE = "metadata.sqlite3"
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
    wait: Waited

    @property
    def seconds(self) -> float | None:
        """From the start of the wait until agreement; None: never agreed."""
        return self.wait.seconds if self.wait.agreed else None


def converged(views: dict[int, ReplicaView], acked: Sequence[Operation]) -> bool:
    return (all(view.reachable for view in views.values())
            and not missing_writes(views, acked) and not divergence(views))


def await_convergence(
    lab: Lab, acked: Sequence[Operation], timeout: float, nodes: Iterable[int] | None = None,
    join_allowance: float = JOIN_ALLOWANCE,
) -> Convergence:
    """Read NODES (default: every running replica) until they agree and hold every
    acknowledged write, or TIMEOUT passes (later while one of them joins and moves on, up to
    JOIN_ALLOWANCE more: convergence.wait)."""
    chosen = sorted(nodes if nodes is not None else
                    (n for n, r in lab.replicas.items() if r.running))
    views, waited = convergence.wait(
        lambda: {node_id: read_replica(lab, node_id) for node_id in chosen},
        lambda views: converged(views, acked),
        lambda: convergence.read_joins(lab, chosen),
        timeout, join_allowance, interval=POLL_INTERVAL, echo=lab.echo)
    return Convergence(views, waited)


# -- the randomized run: whole libraries, and the rows as stored -----------------------------


def read_library(lab: Lab, node_id: int) -> LibraryView:
    """Every song (with its fields) and every playlist (with its items) NODE_ID serves."""
    host = lab.replicas[node_id].host
    client = lab.client(host, READ_TIMEOUT)
    songs: dict[str, dict[str, Any]] = {}
    playlists: dict[str, dict[str, Any]] = {}
    try:
        for page in range(MAX_PAGES):
            body = client.get_json(host.address, HTTP_PORT,
                                   f"/songs?limit={LIBRARY_PAGE}&offset={page * LIBRARY_PAGE}")
            batch = body.get("songs") or []
            songs.update((song["id"], {field: song.get(field) for field in SONG_FIELDS})
                         for song in batch)
            if len(batch) < LIBRARY_PAGE:
                break
        listing = client.get_json(host.address, HTTP_PORT, "/playlists").get("playlists") or []
        for entry in listing:
            answer = client.request("GET", host.address, HTTP_PORT, f"/playlists/{entry['id']}")
            if answer.status == 404:
                continue  # deleted between the listing and now
            if answer.status != 200:
                raise OSError(f"GET /playlists/{entry['id']} answered {answer.status}")
            playlist = answer.json()["playlist"]
            playlists[playlist["id"]] = {
                "name": playlist.get("name"),
                "items": {item["id"]: item["song_id"] for item in playlist.get("items") or []},
            }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return LibraryView(node_id, error=f"{type(exc).__name__}: {exc}")
    return LibraryView(node_id, songs, playlists)


SONG_FIELDS = ("sha256", "size", "chunk_count", "title", "artist", "album", "genre")


@contextlib.contextmanager
def _database(data_dir: Path) -> Any:
    """A read-only connection to a replica's database (it may be running: WAL readers do not
    block it), or None when there is none."""
    path = data_dir / DATABASE
    if not path.exists():
        yield None
        return
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        yield connection
    finally:
        connection.close()


EVIDENCE = "evidence"  # the lab folder's subfolder that keep_evidence fills


def keep_evidence(lab: Lab, nodes: Iterable[int]) -> list[str]:
    """Each of NODES' database, copied whole (SQLite's online backup: a running replica goes
    on writing), and its /status, into the lab folder's EVIDENCE folder, which the run's out
    folder receives with the logs: taken as the wait for convergence gives up, they tell a
    later reader what the logs cannot, such as a row stored but not served from one not
    stored at all. What it kept, one line each."""
    folder = lab.dir / EVIDENCE
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for node_id in sorted(nodes):
        status = lab.status(node_id, timeout=READ_TIMEOUT)
        (folder / f"node{node_id}.status.json").write_text(json.dumps(status, indent=1))
        target = folder / f"node{node_id}.sqlite3"
        try:
            with _database(lab.replicas[node_id].data_dir) as source:
                if source is None:
                    kept.append(f"node {node_id}: no database")
                    continue
                with contextlib.closing(sqlite3.connect(target)) as copy:
                    source.backup(copy)
        except sqlite3.Error as exc:
            kept.append(f"node {node_id}: database not copied ({exc})")
            continue
        kept.append(f"node {node_id}: database and /status kept in {EVIDENCE}/")
    return kept


def stored_digest(data_dir: Path) -> tuple[tuple[int, str], ...] | None:
    """The replica's 256 anti-entropy bucket hashes as stored: equal digests, equal rows."""
    try:
        with _database(data_dir) as db:
            if db is None:
                return None
            return tuple(db.execute("SELECT bucket, hash FROM digest ORDER BY bucket"))
    except sqlite3.Error:
        return None


def stored_versions(data_dir: Path) -> dict[tuple[str, str], dict[str, str]] | None:
    """Every replicated row's field versions as stored: (table, key) -> field -> version
    (encoded versions compare as strings); None when the database cannot be read."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    try:
        with _database(data_dir) as db:
            if db is None:
                return None
            for name, entity in ENTITIES.items():
                keys = ", ".join(entity.keys)
                for row in db.execute(f"SELECT {keys}, field_versions FROM {name}"):
                    found[(name, "/".join(map(str, row[:-1])))] = json.loads(row[-1])
    except (sqlite3.Error, ValueError):
        return None
    return found


def covered(mine: dict[tuple[str, str], dict[str, str]],
            others: Sequence[dict[tuple[str, str], dict[str, str]]]) -> bool:
    """Whether every field version in MINE is held, as new or newer, by one of OTHERS: a
    replica storing MINE can be wiped without losing a write."""
    return all(any(other.get(row, {}).get(field, "") >= version for other in others)
               for row, fields in mine.items() for field, version in fields.items())


def stored_rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]] | None:
    """Every row of every replicated table (tombstones and field versions included)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    try:
        with _database(data_dir) as db:
            if db is None:
                return None
            for name, entity in ENTITIES.items():
                keys = ", ".join(entity.keys)
                # The key columns first, so a row's first len(keys) values are its key.
                rows[name] = list(db.execute(f"SELECT {keys}, * FROM {name} ORDER BY {keys}"))
    except sqlite3.Error:
        return None
    return rows


def row_divergence(lab: Lab, nodes: Iterable[int]) -> list[dict[str, Any]]:
    """Rows, as the replicas store them, that differ between replicas: (table, key, nodes)."""
    stored = {n: stored_rows(lab.replicas[n].data_dir) for n in sorted(nodes)}
    problems: list[dict[str, Any]] = [{"node": n, "table": None, "key": None,
                                       "detail": "database unreadable"}
                                      for n, rows in stored.items() if rows is None]
    readable = {n: rows for n, rows in stored.items() if rows is not None}
    if len(readable) < 2:
        return problems
    for name, entity in ENTITIES.items():
        width = len(entity.keys)
        tables = {n: {row[:width]: row for row in rows[name]} for n, rows in readable.items()}
        for key in sorted(set().union(*tables.values()), key=repr):
            copies = {n: table.get(key) for n, table in tables.items()}
            if len({repr(copy) for copy in copies.values()}) > 1:
                problems.append({"table": name, "key": "/".join(map(str, key)),
                                 "nodes": {n: copy for n, copy in copies.items()}})
    return problems


def stream_divergence(lab: Lab, views: dict[int, LibraryView],
                      uploaded: dict[str, str]) -> list[dict[str, Any]]:
    """Songs whose whole stream, as each replica serves it, is not the bytes uploaded (the
    replicas are read at the same time, one thread each)."""
    with concurrent.futures.ThreadPoolExecutor(max(len(views), 1)) as pool:
        found = pool.map(lambda view: _stream_problems(lab, view, uploaded),
                         [view for _, view in sorted(views.items())])
        return [problem for problems in found for problem in problems]


def _stream_problems(lab: Lab, view: LibraryView,
                     uploaded: dict[str, str]) -> list[dict[str, Any]]:
    problems = []
    node_id = view.node_id
    host = lab.replicas[node_id].host
    client = lab.client(host, READ_TIMEOUT)
    for song_id, song in sorted(view.songs.items()):
        want = uploaded.get(song_id) or song.get("sha256")
        try:
            answer = client.request("GET", host.address, HTTP_PORT, f"/songs/{song_id}/stream")
        except OSError as exc:
            problems.append({"node": node_id, "song": song_id, "reasons": [str(exc)]})
            continue
        if answer.status != 200:
            problems.append({"node": node_id, "song": song_id,
                             "reasons": [f"stream answered {answer.status}"]})
        elif hashlib.sha256(answer.body).hexdigest() != want:
            problems.append({"node": node_id, "song": song_id, "reasons": [
                f"served {len(answer.body)} bytes that are not the {want} uploaded"]})
    return problems


def chunk_file_problems(lab: Lab, nodes: Iterable[int]) -> list[dict[str, Any]]:
    """Live chunk registry rows whose file is missing or does not hash to the row's sha256."""
    problems = []
    for node_id in sorted(nodes):
        data_dir = lab.replicas[node_id].data_dir
        try:
            with _database(data_dir) as db:
                rows = [] if db is None else list(db.execute(
                    "SELECT song_id, idx, sha256 FROM chunks WHERE deleted = 0"))
        except sqlite3.Error as exc:
            problems.append({"node": node_id, "song": None, "reasons": [str(exc)]})
            continue
        for song_id, idx, digest in rows:
            path = data_dir / "chunks" / f"{song_id}_{idx}"
            try:
                actual = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                problems.append({"node": node_id, "song": song_id,
                                 "reasons": [f"chunk {idx}: {exc.strerror}"]})
                continue
            if actual != digest:
                problems.append({"node": node_id, "song": song_id,
                                 "reasons": [f"chunk {idx} on disk fails its sha256"]})
    return problems


def replication_state(lab: Lab) -> tuple[dict[int, str], list[str]]:
    """Why replicas may not have converged: each one's state (ACTIVE, JOINING; None when it
    does not answer /status), and a line for each follower whose push from the leader is
    failing, with the error it last met and the ops waiting for it."""
    statuses = {n: lab.status(n, timeout=READ_TIMEOUT) for n in sorted(lab.replicas)}
    states = {n: str(s.get("state")) if s else "unreachable" for n, s in statuses.items()}
    lines = []
    for leader, status in statuses.items():
        push = ((status or {}).get("replication") or {}).get("push") or {}
        for follower, link in sorted((push.get("followers") or {}).items()):
            if isinstance(link, dict) and link.get("last_error"):
                lines.append(f"leader {leader}'s push to node {follower} is failing "
                             f"({link.get('hints_pending')} ops waiting, {link.get('batches')} "
                             f"batches sent): {str(link['last_error'])[:300]}")
    return states, lines


ERROR_EVENT = re.compile(r"#(error|critical)\]|Unhandled [Ee]rror")
TRACEBACK = "Traceback (most recent call last)"
ERROR_KINDS = 3  # distinct errors named per log


def log_errors(logs: Iterable[Path]) -> list[str]:
    """One line per log holding error events (an ``#error`` or ``#critical`` line, an
    unhandled error, a traceback): how many, and the commonest kinds by their exception."""
    lines = []
    for path in logs:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        kinds: Counter[str] = Counter()
        for number, line in enumerate(text):
            if not line or line[0].isspace():
                continue
            block = list(itertools.takewhile(lambda more: more[:1].isspace(),
                                             text[number + 1:]))
            if TRACEBACK in line:  # a bare Python traceback: its exception line ends it
                after = number + 1 + len(block)
                kinds[text[after].strip()[:200] if after < len(text) else line] += 1
            elif ERROR_EVENT.search(line) or any(TRACEBACK in more for more in block):
                kinds[_error_kind(line, block)] += 1
        if kinds:
            named = "; ".join(f"{count} x {kind}"
                              for kind, count in kinds.most_common(ERROR_KINDS))
            others = len(kinds) - ERROR_KINDS
            lines.append(f"{path.name}: {sum(kinds.values())} error(s) logged: {named}"
                         + (f"; and {others} other kind(s)" if others > 0 else ""))
    return lines


def _error_kind(line: str, block: list[str]) -> str:
    """The exception a logged error ends in (the first line after the traceback's frames,
    which are indented twice), else the event's own message."""
    after = next((n for n, more in enumerate(block) if TRACEBACK in more), None)
    if after is not None:
        for more in block[after + 1:]:
            if more.strip() and not more[1:2].isspace():
                return more.strip()[:200]
    return line.split("] ", 1)[-1].strip()[:200]
