"""One real replica process: the API end to end, early 413, crash safety, shutdown, bad options."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.audio import make_audio, make_wav
from tests.helpers.replica import (
    TWISTD,
    ReplicaProcess,
    make_key_file,
    raw_exchange,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TAGS = {"title": "Sine of the Times", "artist": "The Oscillators", "album": "Waveforms",
        "track": "3", "date": "2021", "genre": "Test"}


@pytest.fixture
def small_chunks(tmp_path: Path, replicas: list[ReplicaProcess]) -> ReplicaProcess:
    """A replica with 16 KiB chunks, so a few seconds of audio span many chunks."""
    process = ReplicaProcess(1, tmp_path, "--chunk-size", "16K", "--max-upload", "8M")
    replicas.append(process)
    return process.start()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_uploaded_mp3_streams_back_whole_and_by_range_with_its_tags(
    small_chunks: ReplicaProcess, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path / "song.mp3", "mp3", seconds=12, tags=TAGS).read_bytes()

    created = small_chunks.post("/songs", audio, "audio/mpeg")

    assert created.status == 201, created.body
    song = created.json()["song"]
    assert (song["title"], song["artist"], song["album"]) == (
        "Sine of the Times", "The Oscillators", "Waveforms")
    assert (song["track"], song["year"], song["genre"], song["mime"]) == (
        3, 2021, "Test", "audio/mpeg")
    assert song["duration"] == pytest.approx(12, abs=0.2)
    assert song["sha256"] == sha256(audio) and song["size"] == len(audio)
    assert created.headers["x-served-by"] == "1"

    meta = small_chunks.get(f"/songs/{song['id']}").json()
    assert len(meta["chunks"]) == song["chunk_count"] == -(-len(audio) // (16 * 1024))
    for chunk in meta["chunks"]:
        got = small_chunks.get(f"/songs/{song['id']}/chunks/{chunk['idx']}")
        assert got.status == 200
        assert sha256(got.body) == chunk["sha256"] == got.headers["etag"].strip('"')

    whole = small_chunks.get(f"/songs/{song['id']}/stream")
    assert whole.status == 200 and whole.headers["content-type"] == "audio/mpeg"
    assert sha256(whole.body) == sha256(audio)

    start, end = 20_000, 50_000  # crosses chunk boundaries
    part = small_chunks.get(f"/songs/{song['id']}/stream", {"Range": f"bytes={start}-{end}"})
    assert part.status == 206
    assert part.headers["content-range"] == f"bytes {start}-{end}/{len(audio)}"
    assert part.body == audio[start:end + 1]


def test_ffmpeg_plays_and_seeks_the_stream(small_chunks: ReplicaProcess, tmp_path: Path) -> None:
    audio = make_audio(tmp_path / "song.ogg", "ogg", seconds=8, tags=TAGS).read_bytes()
    song = small_chunks.post("/songs", audio, "audio/ogg").json()["song"]
    url = f"http://127.0.0.1:{small_chunks.http_port}/songs/{song['id']}/stream"

    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream_tags=title",
         "-of", "json", url], capture_output=True, check=True, timeout=30)
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "5", "-i", url, "-f", "null", "-"],
        capture_output=True, timeout=30)

    info = json.loads(probe.stdout)
    assert float(info["format"]["duration"]) == pytest.approx(8, abs=0.3)
    assert info["streams"][0]["tags"]["title"] == "Sine of the Times"
    assert decoded.returncode == 0, decoded.stderr


def test_same_bytes_uploaded_twice_return_the_first_song(
    replica: ReplicaProcess, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path / "song.flac", "flac", seconds=2).read_bytes()

    first = replica.post("/songs", audio, "audio/flac")
    second = replica.post("/songs", audio, "audio/flac")

    assert (first.status, second.status) == (201, 200)
    assert first.json()["song"]["id"] == second.json()["song"]["id"]
    assert replica.get("/songs").json()["total"] == 1


def test_multipart_upload_takes_the_file_field_and_its_name(
    replica: ReplicaProcess, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path / "untitled.wav", "wav", seconds=1).read_bytes()
    boundary = "distpotify-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"artist\"\r\n\r\nMe\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\";"
        f" filename=\"Morning Song.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    ).encode() + audio + f"\r\n--{boundary}--\r\n".encode()

    answer = replica.post("/songs", body, f"multipart/form-data; boundary={boundary}")

    assert answer.status == 201, answer.body
    song = answer.json()["song"]
    assert (song["title"], song["artist"], song["sha256"]) == ("Morning Song", "Me", sha256(audio))


def test_oversized_upload_is_refused_before_its_body_is_sent(small_chunks: ReplicaProcess) -> None:
    head = (
        "POST /songs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
        f"Content-Length: {64 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()

    answer = raw_exchange(small_chunks.http_port, head)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"


def test_oversized_chunked_upload_is_refused_while_it_streams(
    small_chunks: ReplicaProcess,
) -> None:
    head = (b"POST /songs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    block = b"%x\r\n%s\r\n" % (1024 * 1024, b"\0" * 1024 * 1024)

    answer = raw_exchange(small_chunks.http_port, head, block * 9)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert small_chunks.get("/songs").json()["total"] == 0
    # What was spooled into chunk files goes once the spool has stopped.
    wait_until(lambda: os.listdir(small_chunks.data_dir / "chunks") == [], timeout=10,
               what="the refused upload's pieces removed")


def test_kill_during_upload_leaves_the_whole_song_or_nothing(
    replicas: list[ReplicaProcess], tmp_path: Path
) -> None:
    node = ReplicaProcess(1, tmp_path, "--chunk-size", "64K")
    replicas.append(node.start())
    wav = make_wav(tmp_path / "big.wav", 160 * 1024 * 1024)
    chunks_dir = node.data_dir / "chunks"
    upload = threading.Thread(
        target=lambda: _swallow(lambda: node.post("/songs", wav.read_bytes(), "audio/wav")),
        daemon=True,
    )

    upload.start()
    wait_until(lambda: len(os.listdir(chunks_dir)) >= 3, timeout=60, interval=0.005,
               what="chunk files being written")
    node.kill()
    upload.join(30)
    node.start()

    songs = node.get("/songs").json()
    if songs["total"]:  # the kill came after the commit: the song must be whole
        song = songs["songs"][0]
        assert sha256(node.get(f"/songs/{song['id']}/stream").body) == sha256(wav.read_bytes())
        assert len(os.listdir(chunks_dir)) == song["chunk_count"]
    else:
        assert os.listdir(chunks_dir) == []
    assert os.listdir(node.data_dir / "tmp") == []


def _swallow(call: Callable[[], object]) -> None:
    """Run an upload whose connection the test is about to cut."""
    with contextlib.suppress(OSError):
        call()


def test_the_http_port_queues_a_burst_of_connections(replica: ReplicaProcess) -> None:
    """The listen backlog (ss shows it as Send-Q of a listening socket) is 1024, not 50."""
    shown = subprocess.run(["ss", "-ltnH", f"sport = :{replica.http_port}"],
                           capture_output=True, text=True, check=True, timeout=10).stdout

    assert shown.split()[2] == "1024", shown


def test_sigterm_stops_the_replica_cleanly(replica: ReplicaProcess) -> None:
    # twistd re-raises the signal after its orderly shutdown, so the status says SIGTERM.
    assert replica.stop() in (0, -signal.SIGTERM)
    log = replica.log()
    assert "replica 1 stopped" in log and "Traceback" not in log
    assert "Port" in log and "Closed)" in log


def test_data_survives_a_restart(replicas: list[ReplicaProcess], tmp_path: Path) -> None:
    node = ReplicaProcess(1, tmp_path)
    replicas.append(node.start())
    playlist = send_json(node.http_port, "POST", "/playlists", {"name": "Keep"}).json()
    node.kill()

    node.start()

    got = node.get(f"/playlists/{playlist['playlist']['id']}")
    assert got.status == 200 and got.json()["playlist"]["name"] == "Keep"
    assert node.wait_ready()["head"][2] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heartbeat", "smoke-signals"], "--heartbeat must be 'multicast' or 'unicast'"),
        (["--http-port", "70000"], "--http-port must be a port number"),
        (["--http-port", "eighty"], "bad value for --http-port"),
        (["--max-upload", "lots"], "bad value for --max-upload"),
        ([], "--cluster-key-file is required"),
        (["--cluster-key-file", "/nonexistent/cluster.key"],
         "cannot read cluster key file /nonexistent/cluster.key: No such file or directory;"
         " make a key with `distpotify-keygen > /nonexistent/cluster.key`"),
    ],
)
def test_bad_option_stops_with_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "distpotify", "--node-id", "1",
         "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=30,
    )

    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_unusable_data_dir_stops_with_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    run = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "distpotify", "--node-id", "1",
         "--data-dir", str(blocker), "--cluster-key-file", str(make_key_file(tmp_path / "k"))],
        capture_output=True, text=True, timeout=30,
    )

    assert run.returncode != 0
    assert f"data dir {blocker} is not usable" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_environment_configures_the_replica(replicas: list[ReplicaProcess], tmp_path: Path
                                            ) -> None:
    node = ReplicaProcess(4, tmp_path, env={"DISTPOTIFY_CHUNK_SIZE": "32K"})
    replicas.append(node.start())
    audio = make_audio(tmp_path / "a.wav", "wav", seconds=1).read_bytes()

    song = node.post("/songs", audio, "audio/wav").json()["song"]

    assert song["chunk_size"] == 32 * 1024
    assert node.wait_ready()["node_id"] == 4


def test_hostile_paths_never_reach_the_filesystem(replica: ReplicaProcess) -> None:
    for path in ("/songs/..%2F..%2Fetc%2Fpasswd/chunks/0", "/songs/../../etc/passwd/stream",
                 "/songs/%00/chunks/0", "/songs/00000000-0000-4000-8000-000000000000/chunks/-1"):
        answer = request(replica.http_port, "GET", path)
        assert answer.status == 404, path
        assert answer.json()["error"] == "not_found"
