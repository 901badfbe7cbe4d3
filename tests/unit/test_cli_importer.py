"""distpotify-import's parts without a cluster: the state file, the walk, the key, what a
refusal says, the summary, and an upload sent again under its key after a lost answer (to
a small HTTP server in a thread)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distpotify.cli.importer import (
    UPLOADED,
    FileEntry,
    Result,
    Server,
    State,
    _batch,
    file_sha256,
    idempotency_key,
    refusal,
    summary_text,
    walk,
)
from distpotify.idempotency import MAX_KEY


def entry(path: Path, rel: str) -> FileEntry:
    stat = path.stat()
    return FileEntry(path, rel, stat.st_size, stat.st_mtime_ns)


def test_the_state_remembers_unchanged_files_and_survives_a_cut_line(tmp_path: Path) -> None:
    song = tmp_path / "a.mp3"
    song.write_bytes(b"one")
    state = State(tmp_path / "state" / "s.jsonl")
    state.add(Result(entry(song, "a.mp3"), UPLOADED, "ab" * 32, 201, song_id="s1"))
    state.close()
    with open(tmp_path / "state" / "s.jsonl", "a") as f:
        f.write('{"rel": "b.mp3", "si')  # Ctrl-C in the middle of a line

    again = State(tmp_path / "state" / "s.jsonl")
    known = again.known(entry(song, "a.mp3"))
    song.write_bytes(b"changed")

    assert known is not None and known["sha256"] == "ab" * 32 and known["outcome"] == UPLOADED
    assert again.known(entry(song, "a.mp3")) is None  # another size: hashed and asked again


def test_the_walk_takes_every_file_but_dotfiles_and_the_state_file(tmp_path: Path) -> None:
    for rel in ("b/2.mp3", "b/1.ogg", "a.flac", ".DS_Store", "b/.hidden/x.mp3", "state.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")

    found = [e.rel for e in walk(tmp_path, skip=tmp_path / "state.jsonl")]

    assert found == ["a.flac", "b/1.ogg", "b/2.mp3"]


def test_the_idempotency_key_names_the_bytes_and_the_run() -> None:
    sha = hashlib.sha256(b"x").hexdigest()

    key = idempotency_key(sha, "0123456789abcdef")

    assert sha in key and key != idempotency_key(sha, "fedcba9876543210")
    assert len(key) <= MAX_KEY and key.isascii() and " " not in key and key.isprintable()


@pytest.mark.parametrize(("status", "value", "said"), [
    (415, {"error": "unsupported_media", "message": "not an audio file"},
     "not audio (415): not an audio file"),
    (413, {"error": "too_large", "message": "over 96 KiB"}, "too big (413): over 96 KiB"),
    (400, None, "not audio (400)"),
    (403, {"message": "listeners may not"}, "answered 403: listeners may not"),
])
def test_a_refusal_says_why_in_the_servers_words(status: int, value: Any, said: str) -> None:
    assert refusal(status, value) == said


def test_the_summary_lists_each_refusal_and_how_to_go_on() -> None:
    item = {"file": "notes.txt", "status": 415, "reason": "not audio (415): no", "earlier": False}
    summary = {"files": 3, "folder": "/m", "server": "http://p", "uploaded": 1,
               "uploaded_bytes": 3 << 20, "seconds": 2.0, "mib_per_s": 1.5, "files_per_s": 0.5,
               "present": 0, "done_before": 0, "duplicates": [], "refused": [item],
               "failed": [], "left": 1, "interrupted": True}

    text = summary_text(summary)

    assert "uploaded               1  (3.0 MiB in 2.0 s" in text
    assert "notes.txt: not audio (415): no" in text
    assert "1 files left; run the same command again" in text


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Drops the connection of the first upload unanswered, answers the next 201; records
    each upload's headers."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(dict(self.headers))
            if len(seen) == 1:
                self.close_connection = True
                self.connection.close()
                return
            body = json.dumps({"song": {"id": "s1"}}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_an_upload_whose_answer_is_lost_is_sent_again_under_the_same_key(
        tmp_path: Path, flaky_server: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = flaky_server
    song = tmp_path / "a.mp3"
    song.write_bytes(b"ID3" + bytes(5000))
    sha = file_sha256(song)
    assert sha is not None
    counted: list[int] = []

    status, value, sent = Server(url, token="t0k").upload(
        entry(song, "a.mp3"), sha, idempotency_key(sha, "run"), threading.Event(),
        counted.append)

    assert (status, value, sent) == (201, {"song": {"id": "s1"}}, 5003)
    assert [h["Idempotency-Key"] for h in seen] == [idempotency_key(sha, "run")] * 2
    assert all(h["Authorization"] == "Bearer t0k" for h in seen)
    assert sum(counted) == 5003  # the lost attempt's bytes taken back from the progress


def test_a_lookup_batch_ends_at_its_count_or_once_its_files_are_big(tmp_path: Path) -> None:
    small = [FileEntry(tmp_path / f"{n}", f"{n}", 1000, 0) for n in range(250)]
    big = [FileEntry(tmp_path / f"b{n}", f"b{n}", 30 << 20, 0) for n in range(5)]

    assert [len(_batch(small, start)) for start in (0, 100, 200)] == [100, 100, 50]
    assert [len(_batch(big, start)) for start in (0, 2, 4)] == [2, 2, 1]
    assert len(_batch([FileEntry(tmp_path / "huge", "huge", 1 << 33, 0)], 0)) == 1
