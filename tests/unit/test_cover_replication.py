"""Cover pictures between replicas (replication/covers.py): fetched by SHA-256 and checked,
the next source tried on wrong bytes, one download per cover, fetched before the batch that
names them, and the sweep that fills in what is missing."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from distpotify.model import Op, Version
from distpotify.replication.client import NotHeld, PeerError
from distpotify.replication.covers import FULL_SWEEP_EVERY, CoverFetcher, covers_named
from distpotify.replication.receive import validate_op
from distpotify.store.covers import CoverStore
from distpotify.store.metadata import MetadataDB, MetadataStore
from tests.helpers.api import InMemoryReplica, result_of, run_now
from tests.helpers.covers import audio_with_cover, picture

PICTURE = b"\x89PNG pretend picture bytes"
SHA = hashlib.sha256(PICTURE).hexdigest()


class FakePeers:
    """Peers answering GET /sync/covers/<sha256> from a table: bytes, or an exception."""

    def __init__(self, answers: dict[str, bytes | Exception]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []
        self.waiting: Deferred[None] | None = None

    async def cover(self, base: str, sha256: str, limit: int) -> bytes:
        self.asked.append((base, sha256))
        if self.waiting is not None:
            await self.waiting
        answer = self.answers.get(base, NotHeld("404"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def fetcher(tmp_path: Path, peers: FakePeers, sources: Sequence[str] = (),
            store: object = None, files: CoverStore | None = None
            ) -> tuple[CoverFetcher, CoverStore]:
    files = files or CoverStore(tmp_path / "covers")
    return CoverFetcher(peers, files, run_now, store, lambda: list(sources),  # type: ignore[arg-type]
                        Clock(), 10.0), files


def fetch(covers: CoverFetcher, sha256: str, sources: list[str]) -> bool:
    return result_of(Deferred.fromCoroutine(covers.fetch(sha256, sources)))


def test_a_cover_is_fetched_and_stored_once_verified(tmp_path: Path) -> None:
    covers, files = fetcher(tmp_path, FakePeers({"http://a": PICTURE}))

    assert fetch(covers, SHA, ["http://a"])
    assert files.read(SHA) == PICTURE and covers.counters.fetched == 1


def test_wrong_bytes_are_discarded_and_the_next_source_asked(tmp_path: Path) -> None:
    peers = FakePeers({"http://bad": b"not the picture", "http://good": PICTURE})
    covers, files = fetcher(tmp_path, peers)

    assert fetch(covers, SHA, ["http://bad", "http://good"])
    assert [base for base, _ in peers.asked] == ["http://bad", "http://good"]
    assert covers.counters.bad_bytes == 1 and files.read(SHA) == PICTURE


def test_no_source_holding_it_is_a_failed_fetch_with_nothing_stored(tmp_path: Path) -> None:
    covers, files = fetcher(tmp_path, FakePeers({"http://down": PeerError("timeout")}))

    assert not fetch(covers, SHA, ["http://down", "http://empty"])
    assert files.names() == set() and covers.counters.failed == 1


def test_a_cover_already_here_is_not_fetched(tmp_path: Path) -> None:
    peers = FakePeers({"http://a": PICTURE})
    covers, files = fetcher(tmp_path, peers)
    files.put(PICTURE)

    assert fetch(covers, SHA, ["http://a"])
    assert peers.asked == []


def test_two_callers_share_one_download(tmp_path: Path) -> None:
    peers = FakePeers({"http://a": PICTURE})
    peers.waiting = Deferred()
    covers, _ = fetcher(tmp_path, peers)

    first = Deferred.fromCoroutine(covers.fetch(SHA, ["http://a"]))
    second = Deferred.fromCoroutine(covers.fetch(SHA, ["http://a"]))
    peers.waiting.callback(None)

    assert result_of(first) and result_of(second)
    assert len(peers.asked) == 1


def song_op(cover: object) -> Op:
    return Op(Version(1, 1, 1), "songs", "0b0b3a48-2f5c-4b1e-9d4e-3a6f0c2d1e7a",
              {"cover_sha256": cover})


def test_the_covers_a_batch_names_are_fetched_before_it_applies(tmp_path: Path) -> None:
    peers = FakePeers({"http://a": PICTURE})
    covers, files = fetcher(tmp_path, peers)

    result_of(Deferred.fromCoroutine(covers.for_ops([song_op(SHA), song_op(None)],
                                                    ["http://a"])))

    assert covers_named([song_op(SHA), song_op(None)]) == {SHA}
    assert files.read(SHA) == PICTURE


@pytest.mark.parametrize("cover", ["../../etc/passwd", "A" * 64, "0" * 63, 7, "0" * 64 + "\n"])
def test_an_op_naming_a_malformed_cover_is_refused(cover: object) -> None:
    with pytest.raises(ValueError, match="cover_sha256"):
        validate_op(song_op(cover))


def test_the_sweep_fetches_covers_live_rows_name_and_lack(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path / "replica")
    cover = picture("PNG")
    song = replica.upload(audio_with_cover(tmp_path / "a.mp3", "mp3", cover), "audio/mpeg")
    assert song.status == 201, song.body
    files = CoverStore(tmp_path / "replica" / "covers")
    sha = hashlib.sha256(cover).hexdigest()
    files.path(sha).unlink()
    peers = FakePeers({"http://a": cover})
    covers, _ = fetcher(tmp_path, peers, ["http://a"], MetadataStore(replica.db, run_now), files)

    assert result_of(Deferred.fromCoroutine(covers.sweep())) == 1
    assert files.read(sha) == cover and covers.counters.missing == 0


class Sweeps:
    """A replica with a covered song and its cover repair, counting the sweeps that read
    the covers live rows name; ``intervals`` runs what the loop runs each interval."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replica = InMemoryReplica(tmp_path / "replica")
        self.cover = picture("PNG")
        song = self.replica.upload(audio_with_cover(tmp_path / "a.mp3", "mp3", self.cover),
                                   "audio/mpeg")
        assert song.status == 201, song.body
        self.song = song.json()["song"]
        self.files = CoverStore(tmp_path / "replica" / "covers")
        self.sha = hashlib.sha256(self.cover).hexdigest()
        self.peers = FakePeers({"http://a": self.cover})
        self.covers = CoverFetcher(
            self.peers, self.files, run_now,  # type: ignore[arg-type]
            MetadataStore(self.replica.db, run_now), lambda: ["http://a"], Clock(), 10.0)
        self.reads = 0
        named = MetadataDB.live_cover_names

        def counted(db: MetadataDB) -> set[str]:
            self.reads += 1
            return named(db)

        monkeypatch.setattr(MetadataDB, "live_cover_names", counted)

    def intervals(self, n: int) -> None:
        for _ in range(n):
            result_of(Deferred.fromCoroutine(self.covers.sweep_if_due()))


def test_the_sweep_reads_nothing_more_while_no_song_or_album_cover_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweeps = Sweeps(tmp_path, monkeypatch)

    sweeps.intervals(20)

    assert sweeps.reads == 1 and sweeps.covers.counters.sweeps == 1


def test_a_changed_song_brings_a_sweep_at_the_next_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweeps = Sweeps(tmp_path, monkeypatch)
    sweeps.intervals(3)
    sweeps.files.path(sweeps.sha).unlink()  # lost, and the song edited: a sweep finds it

    assert sweeps.replica.send_json("PATCH", f"/songs/{sweeps.song['id']}",
                                    {"title": "Renamed"}).status == 200
    sweeps.intervals(1)

    assert sweeps.reads == 2 and sweeps.files.read(sweeps.sha) == sweeps.cover


def test_covers_still_missing_are_swept_for_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweeps = Sweeps(tmp_path, monkeypatch)
    sweeps.files.path(sweeps.sha).unlink()
    sweeps.peers.answers.clear()  # nobody has it now
    sweeps.replica.send_json("PATCH", f"/songs/{sweeps.song['id']}", {"title": "Renamed"})
    sweeps.intervals(1)
    assert sweeps.covers.counters.missing == 1

    sweeps.intervals(3)

    assert sweeps.reads == 4


def test_a_whole_sweep_comes_every_so_often_whatever_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweeps = Sweeps(tmp_path, monkeypatch)
    sweeps.intervals(FULL_SWEEP_EVERY)
    assert sweeps.reads == 1

    sweeps.intervals(1)

    assert sweeps.reads == 2
