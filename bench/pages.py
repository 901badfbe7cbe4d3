"""Pages a write adds to the WAL, by table and index: a playlist create with and without an
Idempotency-Key (the proxy's, a UUIDv7, or a client's own of no order), on a leader's
database, in this process.

A commit writes each page it changed to the WAL whole (4 KiB), fsyncs it, and a checkpoint
later writes the page again into the database file, so the pages a write dirties are most of
what it costs the disk (docs/architecture.md section 2.8). Unlike writes/s, the count does
not move with the machine's load, so a change to the schema or the write path shows here
exactly, run after run. (Time is not measured: with checkpoints off the WAL grows, which
makes every commit slower than in a replica.)

Each kind of write runs on a fresh database (``MetadataDB``, as a leader's store thread runs
it): ``--warm`` writes first (so the tables are past the size where a group's rows share
index pages), then ``--writes`` writes with checkpoints off, ``--group`` writes per commit
(the group commit; 2.6-4 with 8 writers on this machine, 10 with 32). The WAL's frame
headers then name each page written, and SQLite's dbstat table names the table or index each
page belongs to. The unkeyed write is the reference: a keyed write's extra pages are what
its key row costs on every replica. The proxy's keys carry their time, here one millisecond
a write (1,000 writes/s), and their rows are stored in that order; a client's own keys here
are ``bench-N``, whose rows fall anywhere in their index, as any random key's do.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import environment, save_result, say

from distpotify.auth.access import UNRESTRICTED
from distpotify.idempotency import IdempotencyKey, request_digest
from distpotify.library import _create_playlist, _keyed
from distpotify.store.metadata import MetadataDB

WAL_HEADER = 32
FRAME_HEADER = 24


KINDS = ("unkeyed", "proxy keys", "client keys")
START_MS = 1_796_500_000_000  # the proxy's keys' time: 2026-12-05, one millisecond a write


def key_text(kind: str, n: int) -> str | None:
    """The Idempotency-Key of write ``n`` of ``kind``."""
    if kind == "unkeyed":
        return None
    if kind == "client keys":
        return f"bench-{n}"
    ms = START_MS + n
    tail = uuid.UUID(int=n).hex[-15:]
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{tail[:3]}-8{tail[3:6]}-{tail[6:]}000"


def playlist_create(db: MetadataDB, n: int, kind: str) -> Callable[[], Any]:
    """The database call of ``POST /playlists {"name": "bench n"}``, with a key of ``kind``
    or without, as the library's store thread makes it (Library._write)."""
    key = None
    text = key_text(kind, n)
    if text is not None:
        body = json.dumps({"name": f"bench {n}"}).encode()
        key = IdempotencyKey(text, request_digest(b"POST", b"/playlists", io.BytesIO(body)))
    playlist_id = key.record_id() if key is not None else str(uuid.uuid4())
    fields = {"name": f"bench {n}", "owner": None, "created_at": "2026-12-05T00:00:00.000Z",
              "deleted": 0, "public": 0}
    return lambda: _keyed(db, key, _create_playlist, playlist_id, fields, UNRESTRICTED)


def write(db: MetadataDB, start: int, count: int, group: int, kind: str) -> None:
    for first in range(start, start + count, group):
        db.write_together([playlist_create(db, n, kind)
                           for n in range(first, min(first + group, start + count))])


def wal_pages(wal: Path) -> list[int]:
    """The page number of every frame in the WAL file ``wal``, in the order written."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    return [struct.unpack(">I", data[at:at + 4])[0]
            for at in range(WAL_HEADER, len(data) - FRAME_HEADER - page_size + 1,
                            FRAME_HEADER + page_size)]


def measure(kind: str, warm: int, writes: int, group: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="distpotify-bench-pages-") as tmp:
        path = Path(tmp) / "metadata.db"
        db = MetadataDB(path, node_id=1)
        try:
            db.begin_leading(1)
            write(db, 0, warm, group, kind)
            conn = db._conn
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL from empty
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            write(db, warm, writes, group, kind)
            pages = wal_pages(path.with_name(path.name + "-wal"))
            names = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
        finally:
            db.close()
    counts = collections.Counter(names.get(page, "(page freed since)") for page in pages)
    return {
        "frames_per_write": len(pages) / writes,
        "by_btree": {name: n / writes for name, n in counts.most_common()},
    }


def report(runs: dict[str, dict[str, Any]], group: int) -> str:
    plain = runs["unkeyed"]
    names = list(dict.fromkeys(name for run in runs.values() for name in run["by_btree"]))
    lines = [f"WAL pages per write, {group} writes a commit (4 KiB each; a checkpoint writes"
             " them again)",
             f"{'table or index':<34} " + " ".join(f"{kind:>12}" for kind in runs)]
    for name in names:
        lines.append(f"{name:<34} " + " ".join(
            f"{run['by_btree'].get(name, 0.0):12.2f}" for run in runs.values()))
    lines.append(f"{'all':<34} " + " ".join(
        f"{run['frames_per_write']:12.2f}" for run in runs.values()))
    lines.append(f"{'over unkeyed':<34} " + " ".join(
        f"{'x' + format(run['frames_per_write'] / plain['frames_per_write'], '.2f'):>12}"
        for run in runs.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warm", type=int, default=20000, help="writes before the measured ones")
    p.add_argument("--writes", type=int, default=2000, help="writes measured")
    p.add_argument("--group", type=int, default=4, help="writes a commit")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if not (0 <= args.warm <= 500_000 and 1 <= args.writes <= 50_000
            and 1 <= args.group <= 64):
        p.error("--warm 0-500000, --writes 1-50000, --group 1-64 (the group commit's most)")
    runs = {}
    for kind in KINDS:
        say(f"{kind}: {args.warm} writes, then {args.writes} measured")
        runs[kind] = measure(kind, args.warm, args.writes, args.group)
    print(report(runs, args.group))
    if not args.no_save:
        save_result("pages", {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "args": vars(args), **runs, "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
