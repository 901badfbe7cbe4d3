"""distpotify-import against three real replicas behind the real proxy, with accounts on: a
folder of 200 distinct songs (MP3 and Ogg Vorbis) with junk mixed in, stopped with Ctrl-C
halfway and run again; every song ends up in the library once, nothing is sent twice, and
the junk is reported with the server's reasons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audio import make_audio, tagged_copy
from tests.helpers.fronted import ADMIN_NAME, ADMIN_PASSWORD, Client, Fronted
from tests.helpers.replica import ReplicaProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SONGS = 200
OGG_EVERY = 4  # one song in four is Ogg Vorbis, the rest MP3
MAX_UPLOAD = "96K"  # on the test cluster: a 128 KiB file is too big
STOP_AFTER = 60  # files done when the first run gets its Ctrl-C
IMPORTER = Path(sys.executable).with_name("distpotify-import")


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    with Fronted(tmp_path, replicas, "--max-upload", MAX_UPLOAD, auth=True,
                 proxy_args=("--max-upload", MAX_UPLOAD, "--check-timeout", "3")) as running:
        yield running


def music_folder(root: Path) -> tuple[Path, set[str]]:
    """SONGS distinct songs in album folders, plus junk; and the songs' relative paths."""
    folder = root / "Music"
    bases = {".mp3": make_audio(root / "base.mp3", "mp3", seconds=0.3),
             ".ogg": make_audio(root / "base.ogg", "ogg", seconds=0.3)}
    songs = set()
    for n in range(SONGS):
        suffix = ".ogg" if n % OGG_EVERY == 0 else ".mp3"
        album = folder / f"Artist {n % 7}" / f"Album {n % 20}"
        album.mkdir(parents=True, exist_ok=True)
        path = tagged_copy(bases[suffix], album / f"{n:03d} Song {n}{suffix}", {
            "title": f"Song {n}", "artist": f"Artist {n % 7}", "album": f"Album {n % 20}",
            "tracknumber": str(n % 12 + 1)})
        songs.add(path.relative_to(folder).as_posix())
    (folder / "notes.txt").write_text("not a song\n" * 40)
    (folder / "Artist 0" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(2000))
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "huge.mp3").write_bytes(os.urandom(128 * 1024))
    (folder / ".DS_Store").write_bytes(b"\0" * 64)  # a dotfile: not even looked at
    return folder, songs


def importer(fronted: Fronted, folder: Path, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(IMPORTER), str(folder), "--server", f"http://127.0.0.1:{fronted.proxy.port}",
         "--user", ADMIN_NAME, "--jobs", "4", "--state", str(state), "--json", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DISTPOTIFY_PASSWORD": ADMIN_PASSWORD})


def finished(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=timeout)
    assert out.strip(), err
    return process.returncode, json.loads(out.strip().splitlines()[-1])


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def library(client: Client) -> list[dict[str, Any]]:
    songs: list[dict[str, Any]] = []
    while True:
        page = client.get(f"/songs?limit=500&offset={len(songs)}").json()
        songs += page["songs"]
        if len(songs) >= page["total"]:
            return songs


def test_an_import_stopped_with_ctrl_c_goes_on_when_run_again_and_sends_nothing_twice(
        fronted: Fronted, tmp_path: Path) -> None:
    folder, _ = music_folder(tmp_path)
    state = tmp_path / "import-state.jsonl"
    admin = fronted.admin()

    first = importer(fronted, folder, state)
    wait_until(lambda: lines(state) >= STOP_AFTER or first.poll() is not None, timeout=120,
               interval=0.05, what=f"{STOP_AFTER} files imported")
    first.send_signal(signal.SIGINT)
    code, stopped = finished(first)
    code_again, rest = finished(importer(fronted, folder, state))

    assert code == 130 and stopped["interrupted"] and stopped["left"] > 0, stopped
    assert stopped["uploaded"] >= STOP_AFTER - 4  # the junk may be among the first done
    assert code_again == 0 and not rest["interrupted"], rest
    # Every song stored once, by exactly one of the two runs; none sent twice (an upload the
    # server answered "already stored", 200).
    assert stopped["uploaded"] + rest["uploaded"] == SONGS
    assert rest["done_before"] == stopped["uploaded"]
    assert stopped["present"] == rest["present"] == 0
    stored = library(admin)
    assert len(stored) == SONGS
    assert len({song["sha256"] for song in stored}) == SONGS
    assert {song["title"] for song in stored} == {f"Song {n}" for n in range(SONGS)}
    # The junk, with the server's reasons (the empty file is not sent at all).
    refused = {item["file"]: item["reason"] for item in rest["refused"]}
    assert set(refused) == {"notes.txt", "Artist 0/cover.jpg", "empty.mp3", "huge.mp3"}, refused
    assert refused["empty.mp3"] == "empty file"
    assert refused["huge.mp3"].startswith("too big (413)")
    assert refused["notes.txt"].startswith("not audio (415)")
    assert refused["Artist 0/cover.jpg"].startswith("not audio (415)")
    assert rest["failed"] == [] and rest["files"] == SONGS + 4


def test_files_the_library_holds_are_found_by_checksum_and_never_sent(
        fronted: Fronted, tmp_path: Path) -> None:
    folder, songs = music_folder(tmp_path)
    admin = fronted.admin()
    some = sorted(songs)[:10]
    for rel in some:
        uploaded = admin.call("POST", "/songs", (folder / rel).read_bytes(),
                              {"Content-Type": "application/octet-stream"})
        assert uploaded.status == 201, uploaded.body
    (folder / "Artist 1" / "again.mp3").write_bytes((folder / sorted(songs)[20]).read_bytes())

    code, summary = finished(importer(fronted, folder, tmp_path / "state.jsonl"))

    assert code == 0, summary
    assert summary["present"] == 10 and summary["uploaded"] == SONGS - 10
    assert [d["same_as"] for d in summary["duplicates"]] == [sorted(songs)[20]]
    assert len(library(admin)) == SONGS
