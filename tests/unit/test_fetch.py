"""Chunk downloads: verified before they become visible, one writer per chunk."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from distpotify.replication.client import Joining, NotHeld, PeerError
from distpotify.replication.fetch import (
    JOINING_FOR,
    ChunkFetcher,
    ChunkRef,
    Fetched,
    sources_for,
)
from distpotify.store.chunks import PART_SUFFIX, ChunkStore
from tests.helpers.api import result_of, run_now
from tests.helpers.chunks import HeldPeer

SONG = "abcdef01-2345-4678-8abc-def012345678"
DATA = b"the right bytes" * 100
REF = ChunkRef(SONG, 0, len(DATA), hashlib.sha256(DATA).hexdigest())


def fetcher(tmp_path: Path, peer: HeldPeer) -> tuple[ChunkFetcher, ChunkStore]:
    chunks = ChunkStore(tmp_path / "chunks")
    return ChunkFetcher(peer, chunks, run_now, Clock()), chunks  # type: ignore[arg-type]


def test_the_same_chunk_asked_twice_is_downloaded_once(tmp_path: Path) -> None:
    peer = HeldPeer(DATA)
    fetch, chunks = fetcher(tmp_path, peer)

    first = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    second = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    peer.calls[0].callback(None)

    assert result_of(first) is True and result_of(second) is True
    assert len(peer.calls) == 1
    assert chunks.read(SONG, 0) == DATA


def test_wrong_bytes_never_become_the_chunk(tmp_path: Path) -> None:
    peer = HeldPeer(b"x" * len(DATA))
    fetch, chunks = fetcher(tmp_path, peer)

    d = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    peer.calls[0].callback(None)

    assert result_of(d) is False
    assert not chunks.path(SONG, 0).exists()
    assert fetch.counters.bad_bytes == 1


def test_a_broken_download_resumes_from_the_next_source(tmp_path: Path) -> None:
    class Breaking(HeldPeer):
        def chunk(self, base, song_id, idx, offset, sha256, write):  # type: ignore[no-untyped-def]
            d = super().chunk(base, song_id, idx, offset, sha256, write)
            if base == "http://broken":
                def cut(_: object) -> None:
                    write(self.body[:100])
                    raise PeerError("connection lost")
                d = Deferred()
                d.addCallback(cut)
                self.calls[-1] = d
            return d

    peer = Breaking(DATA)
    fetch, chunks = fetcher(tmp_path, peer)
    d = Deferred.fromCoroutine(fetch.fetch(REF, ["http://broken", "http://good"]))
    peer.calls[0].callback(None)
    peer.calls[1].callback(None)

    assert result_of(d) is True and chunks.read(SONG, 0) == DATA


def test_a_cancelled_caller_leaves_the_download_in_flight_for_the_next(tmp_path: Path) -> None:
    """A push that times out, or a reader who leaves, cancels its fetch: the download goes on,
    and a retry meanwhile joins it instead of writing the same .part beside it."""
    peer = HeldPeer(DATA)
    fetch, chunks = fetcher(tmp_path, peer)

    first = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    first.addErrback(lambda f: f.trap(CancelledError))
    first.cancel()
    retry = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    peer.calls[0].callback(None)

    assert len(peer.calls) == 1  # one download, joined by the retry
    assert result_of(retry) is True and chunks.read(SONG, 0) == DATA


class Streamer:
    """Serves ranges of a song's stream; records the ranges asked for."""

    def __init__(self, song: bytes) -> None:
        self.song = song
        self.ranges: list[tuple[int, int]] = []

    async def stream_range(self, base: str, song_id: str, start: int, end: int,
                           song_sha256: str, write: Callable[[bytes], None]) -> None:
        self.ranges.append((start, end))
        write(self.song[start:end + 1])


def test_a_run_resumes_the_part_file_its_first_chunk_left(tmp_path: Path) -> None:
    pieces = [bytes([n]) * 1000 for n in range(3)]
    refs = [ChunkRef(SONG, n, 1000, hashlib.sha256(p).hexdigest())
            for n, p in enumerate(pieces)]
    peer = Streamer(b"".join(pieces))
    chunks = ChunkStore(tmp_path / "chunks")
    fetch = ChunkFetcher(peer, chunks, run_now, Clock())  # type: ignore[arg-type]
    # A crash left 400 bytes of chunk 1, the first one still missing.
    part = chunks.path(SONG, 1).with_name(f"{SONG}_1.part")
    part.write_bytes(pieces[1][:400])

    done = result_of(Deferred.fromCoroutine(fetch.fetch_run(refs[1:], 1000, "ab" * 32, "x")))

    assert peer.ranges == [(1400, 2999)]  # only the bytes still missing
    assert done == refs[1:]
    assert chunks.read(SONG, 1) == pieces[1] and chunks.read(SONG, 2) == pieces[2]
    assert not part.exists()


def test_a_run_whose_chunks_fail_their_sha256_says_so_in_one_warning_naming_its_peer(
    tmp_path: Path,
) -> None:
    """A chunk of a run that arrives whole but wrong is discarded and counted, as a single
    chunk's is; a run counted them with no log line, so an operator could not tell which
    peer sent bad bytes."""
    pieces = [bytes([n]) * 1000 for n in range(4)]
    refs = [ChunkRef(SONG, n, 1000, hashlib.sha256(p).hexdigest())
            for n, p in enumerate(pieces)]
    corrupt = [pieces[0], b"x" * 1000, pieces[2], b"y" * 1000]
    chunks = ChunkStore(tmp_path / "chunks")
    fetch = ChunkFetcher(Streamer(b"".join(corrupt)), chunks, run_now, Clock())  # type: ignore[arg-type]

    with capturedLogs() as events:
        d = Deferred.fromCoroutine(fetch.fetch_run(refs, 0, "ab" * 32, "http://a"))

    assert result_of(d) == [refs[0], refs[2]]
    assert not chunks.path(SONG, 1).exists() and not chunks.path(SONG, 3).exists()
    assert fetch.counters.bad_bytes == 2 and fetch.counters.fetched == 2
    said = [(e["log_level"], formatEvent(e)) for e in events]
    assert said == [(LogLevel.warn, f"run of 4 chunks of {SONG} from http://a: 2 failed their"
                                    " SHA-256; discarded: chunks 1, 3")]


def test_the_sender_of_a_batch_is_asked_first_when_it_is_a_known_peer() -> None:
    peers = ["http://a:8000", "http://leader:8000", "http://b:8000"]
    assert sources_for("http://leader:8000", lambda: peers) == [
        "http://leader:8000", "http://a:8000", "http://b:8000"]


def test_a_source_that_is_no_known_peer_is_never_fetched_from() -> None:
    peers = ["http://a:8000", "http://b:8000"]
    assert sources_for("http://169.254.169.254/latest", lambda: peers) == peers
    assert sources_for(None, lambda: peers) == peers
    assert sources_for("http://evil:1", lambda: []) == []


class Answering:
    """Each source answers as told: "404" (NotHeld), "503" (Joining: a replica still
    joining), "down" (another PeerError), or the chunk's bytes; records the sources asked,
    in order."""

    def __init__(self, answers: dict[str, str], data: bytes = DATA) -> None:
        self.answers = answers
        self.data = data
        self.asked: list[str] = []

    async def chunk(self, base: str, song_id: str, idx: int, offset: int, sha256: str,
                    write: Callable[[bytes], None]) -> None:
        self.asked.append(base)
        if self.answers[base] == "503":
            raise Joining(f"chunk {song_id}/{idx} from {base}: HTTP 503 joining")
        if self.answers[base] == "404":
            raise NotHeld(f"chunk {song_id}/{idx} from {base}: HTTP 404")
        if self.answers[base] == "down":
            raise PeerError("connection refused")
        write(self.data[offset:])


@pytest.mark.parametrize(("answers", "outcome"), [
    ({"http://a": "404", "http://b": "404"}, Fetched.NOT_HELD),
    ({"http://a": "down", "http://b": "404"}, Fetched.NOT_HELD),
    ({"http://a": "down", "http://b": "down"}, Fetched.FAILED),
    ({"http://a": "404", "http://b": "bytes"}, Fetched.DONE),
])
def test_a_fetch_tells_a_chunk_not_held_from_one_not_reachable(
    tmp_path: Path, answers: dict[str, str], outcome: Fetched,
) -> None:
    fetch = ChunkFetcher(Answering(answers), ChunkStore(tmp_path / "chunks"),  # type: ignore[arg-type]
                         run_now, Clock())

    d = Deferred.fromCoroutine(fetch.fetch_outcome(REF, ["http://a", "http://b"]))

    assert result_of(d) is outcome


def test_a_peer_that_answered_503_is_asked_after_the_others_for_a_while(
        tmp_path: Path) -> None:
    """A peer joining the cluster itself answers 503 joining while our view of it still says
    ACTIVE: each chunk asked of it first cost a request and a log line. For JOINING_FOR
    seconds the others are asked first, and it only when they fail; then it is first again."""
    peer = Answering({"http://a": "503", "http://b": "bytes", "http://c": "down"})
    clock = Clock()
    fetch = ChunkFetcher(peer, ChunkStore(tmp_path / "chunks"), run_now, clock)  # type: ignore[arg-type]
    refs = [ChunkRef(SONG, n, len(DATA), REF.sha256) for n in range(4)]

    def fetched(ref: ChunkRef, sources: list[str]) -> tuple[Fetched, list[str]]:
        peer.asked.clear()
        return result_of(Deferred.fromCoroutine(fetch.fetch_outcome(ref, sources))), peer.asked

    assert fetched(refs[0], ["http://a", "http://b"]) == (Fetched.DONE, ["http://a", "http://b"])
    clock.advance(JOINING_FOR - 0.1)
    assert fetched(refs[1], ["http://a", "http://b"]) == (Fetched.DONE, ["http://b"])
    assert fetched(refs[2], ["http://a", "http://c"]) == (Fetched.FAILED,
                                                           ["http://c", "http://a"])
    assert fetch.by_readiness(["http://a", "http://c", "http://b"]) == [
        "http://c", "http://b", "http://a"]
    clock.advance(JOINING_FOR)
    assert fetched(refs[3], ["http://a", "http://b"]) == (Fetched.DONE, ["http://a", "http://b"])


class Refusing(Streamer):
    """Answers a ranged request 503, as a replica still joining does."""

    async def stream_range(self, base: str, song_id: str, start: int, end: int,
                           song_sha256: str, write: Callable[[bytes], None]) -> None:
        self.ranges.append((start, end))
        raise Joining(f"song {song_id} from {base}: HTTP 503 joining")


def test_a_run_answered_503_puts_its_peer_after_the_others(tmp_path: Path) -> None:
    clock = Clock()
    fetch = ChunkFetcher(Refusing(DATA), ChunkStore(tmp_path / "chunks"), run_now, clock)  # type: ignore[arg-type]

    done = result_of(Deferred.fromCoroutine(fetch.fetch_run([REF], 0, "ab" * 32, "http://a")))

    assert done == []
    assert fetch.by_readiness(["http://a", "http://b"]) == ["http://b", "http://a"]
    clock.advance(JOINING_FOR)
    assert fetch.by_readiness(["http://a", "http://b"]) == ["http://a", "http://b"]


class Stalling(Streamer):
    """Sends the first chunk of a run, then nothing until its caller cancels it."""

    async def stream_range(self, base: str, song_id: str, start: int, end: int,
                           song_sha256: str, write: Callable[[bytes], None]) -> None:
        self.ranges.append((start, end))
        write(self.song[start:start + 1000])
        await Deferred()


def test_a_run_whose_caller_is_cancelled_ends_cancelled_with_what_it_verified(
    tmp_path: Path,
) -> None:
    """A join cancelled (its replica stopping) must not take the run for merely failed: its
    caller would go on to the next one."""
    pieces = [bytes([n]) * 1000 for n in range(2)]
    refs = [ChunkRef(SONG, n, 1000, hashlib.sha256(p).hexdigest())
            for n, p in enumerate(pieces)]
    chunks = ChunkStore(tmp_path / "chunks")
    fetch = ChunkFetcher(Stalling(b"".join(pieces)), chunks, run_now, Clock())  # type: ignore[arg-type]
    d = Deferred.fromCoroutine(fetch.fetch_run(refs, 0, "ab" * 32, "x"))
    assert not d.called

    d.cancel()

    with pytest.raises(CancelledError):
        result_of(d)
    assert chunks.read(SONG, 0) == pieces[0]  # verified before the cancellation, kept
    assert not chunks.path(SONG, 1).exists() and fetch.counters.fetched == 1


@pytest.mark.parametrize("size", [len(DATA), 64 * 1024])
def test_a_chunk_that_finds_the_disk_full_is_no_room_and_asks_no_other_source(
    tmp_path: Path, size: int,
) -> None:
    """Its part file is /dev/full, whose every write fails ENOSPC: a chunk larger than the
    file's buffer fails as it is written, a small one as its file closes. Before, the first
    was 'not available from' every source in turn (each sending the bytes again: a random
    lab run logged 4,744 such warnings), the second an error out of the fetch."""
    data = (DATA * (size // len(DATA) + 1))[:size]
    ref = ChunkRef(SONG, 0, size, hashlib.sha256(data).hexdigest())
    chunks = ChunkStore(tmp_path / "chunks")
    final = chunks.path(SONG, 0)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.with_name(final.name + PART_SUFFIX).symlink_to("/dev/full")
    peer = Answering({"http://a": "bytes", "http://b": "bytes"}, data)
    fetch = ChunkFetcher(peer, chunks, run_now, Clock())  # type: ignore[arg-type]

    d = Deferred.fromCoroutine(fetch.fetch_outcome(ref, ["http://a", "http://b"]))

    assert result_of(d) is Fetched.NO_ROOM
    assert peer.asked == ["http://a"]
    assert not final.exists()
    assert fetch.counters.failed == 1 and fetch.counters.fetched == 0


def test_a_chunk_whose_fsync_finds_the_disk_full_is_no_room_and_asks_no_other_source(
    tmp_path: Path,
) -> None:
    """The bytes were written, but the fsync before the rename found no room (the blocks
    allocated only then): NO_ROOM as when the write failed, not an error out of the fetch
    that the apply would not take for a full disk."""
    def blocking(f: Any, *args: Any) -> Deferred[Any]:
        if f.__name__ == "_finish_part":
            return fail(OSError(errno.ENOSPC, "No space left on device"))
        return run_now(f, *args)

    peer = Answering({"http://a": "bytes", "http://b": "bytes"})
    fetch = ChunkFetcher(peer, ChunkStore(tmp_path / "chunks"), blocking, Clock())  # type: ignore[arg-type]

    d = Deferred.fromCoroutine(fetch.fetch_outcome(REF, ["http://a", "http://b"]))

    assert result_of(d) is Fetched.NO_ROOM
    assert peer.asked == ["http://a"]


def test_a_fetch_with_no_peer_to_ask_fails_at_info_and_names_no_empty_list(
    tmp_path: Path,
) -> None:
    """With every peer down there is nobody to ask: the fetch fails at once and says so at
    info, where it warned 'not available from []' (100 times in one random lab run)."""
    peer = HeldPeer(DATA)
    fetch, chunks = fetcher(tmp_path, peer)

    with capturedLogs() as events:
        d = Deferred.fromCoroutine(fetch.fetch_outcome(REF, []))

    assert result_of(d) is Fetched.FAILED
    assert peer.calls == [] and not chunks.path(SONG, 0).exists()
    assert fetch.counters.failed == 1
    said = [(e["log_level"], formatEvent(e)) for e in events]
    assert said == [(LogLevel.info, f"chunk {SONG}/0 not fetched: no peer to ask")]


def test_a_run_whose_last_part_file_meets_a_full_disk_as_it_closes_still_waits_its_checks(
    tmp_path: Path,
) -> None:
    """A stream cut inside a chunk leaves that chunk's bytes in its file's buffer, which meet
    the full disk as the file closes: that error skipped the wait for the chunks already
    being checked, so the run failed with the OSError while their checks still ran (and
    their in-flight entries were gone), and a join judged its attempt too early."""
    pieces = [bytes([n]) * 1000 for n in range(2)]
    refs = [ChunkRef(SONG, n, 1000, hashlib.sha256(p).hexdigest())
            for n, p in enumerate(pieces)]

    class CutInChunkOne(Streamer):
        async def stream_range(self, base: str, song_id: str, start: int, end: int,
                               song_sha256: str, write: Callable[[bytes], None]) -> None:
            write(self.song[:1100])
            raise PeerError("connection lost")

    checks: list[Deferred[Any]] = []

    def blocking(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        checks.append(Deferred())
        return checks[-1].addCallback(lambda _: f(*args))

    chunks = ChunkStore(tmp_path / "chunks")
    part = chunks.path(SONG, 1).with_name(f"{SONG}_1{PART_SUFFIX}")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.symlink_to("/dev/full")
    fetch = ChunkFetcher(CutInChunkOne(b"".join(pieces)), chunks, blocking, Clock())  # type: ignore[arg-type]
    d = Deferred.fromCoroutine(fetch.fetch_run(refs, 0, "ab" * 32, "x"))
    checks.pop(0).callback(None)  # what the first chunk's part file held before

    assert not d.called and len(checks) == 1  # chunk 0 is being checked
    checks.pop(0).callback(None)

    assert result_of(d) == refs[:1]
    assert chunks.read(SONG, 0) == pieces[0] and not chunks.path(SONG, 1).exists()
    assert fetch.counters.fetched == 1


def test_a_download_whose_part_file_was_removed_fails_at_info_and_raises_nothing(
    tmp_path: Path,
) -> None:
    """A clean-up that removed the part file during its scan (a download begun after it
    listed those in flight): not fetched, nothing left behind, no critical log."""
    peer = HeldPeer(DATA)
    fetch, chunks = fetcher(tmp_path, peer)
    d = Deferred.fromCoroutine(fetch.fetch(REF, ["http://a"]))
    part = chunks.path(SONG, 0).with_name(chunks.path(SONG, 0).name + PART_SUFFIX)
    assert chunks.path(SONG, 0).name in fetch.downloading()
    part.unlink()

    with capturedLogs() as events:
        peer.calls[0].callback(None)

    assert result_of(d) is False
    assert not chunks.path(SONG, 0).exists() and not part.exists()
    assert fetch.downloading() == set()
    assert [e["log_level"] for e in events] == [LogLevel.info, LogLevel.warn]
    assert "removed during the download" in formatEvent(events[0])
