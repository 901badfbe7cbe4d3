"""validate_op: what a pushed op must be before any of its batch is applied; pulled rows purged
here stay purged; chunks no peer holds are settled by the source's current rows; the join's
chunk clean-up and the applies in flight."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent as InMemoryAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.errors import InsufficientStorage, Unavailable
from distpotify.model import ZERO, Op, Row, Version
from distpotify.replication.client import PeerClient
from distpotify.replication.fetch import ChunkFetcher, ChunkRef, Fetched
from distpotify.replication.receive import FETCH_WORKERS, ApplyGate, Receiver, validate_op
from distpotify.store.chunks import PART_SUFFIX
from tests.helpers.api import InMemoryReplica, result_of, run_now
from tests.helpers.audio import make_wav
from tests.helpers.chunks import HeldPeer

SONG = "11111111-1111-4111-8111-111111111111"
V = Version(2, 1, 9)


@pytest.mark.parametrize(("entity", "key", "fields"), [
    ("chunks", f"{SONG}/0", {"size": 262144, "sha256": "ab" * 32, "deleted": 0}),
    ("chunks", f"{SONG}/12", {"deleted": 1}),
    ("purges", "tombstones", {"through": Version(2, 1, 3).encode()}),
    ("playlists", SONG, {"name": "n", "deleted": 0}),
])
def test_well_formed_ops_pass(entity: str, key: str, fields: dict[str, Any]) -> None:
    validate_op(Op(V, entity, key, fields))


@pytest.mark.parametrize(("entity", "key", "fields"), [
    ("chunks", f"{SONG}/007", {"deleted": 1}),  # one chunk, two names
    ("chunks", f"{SONG}/²", {"deleted": 1}),
    ("chunks", f"{SONG}/0", {"size": "big", "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": -1, "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": 1.5, "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": 1, "sha256": "../../etc/passwd"}),
    ("chunks", f"{SONG}/0", {"size": 1, "sha256": 7}),
    ("purges", "tombstones", {"through": "everything"}),
    ("purges", "tombstones", {"through": Version(9, 9, 9).encode()}),  # past its own op
    ("nope", SONG, {"name": "n"}),
    ("playlists", SONG, {"colour": "red"}),
    ("playlists", SONG, {"name": ["a", "list"]}),
])
def test_malformed_ops_are_refused(entity: str, key: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        validate_op(Op(V, entity, key, fields))


def test_a_push_while_the_snapshot_is_taken_is_refused_and_applies_nothing(
    tmp_path: Path,
) -> None:
    """Ops applied before the snapshot is installed would be wiped by it, while the leader
    counted them as delivered: the leader is told to try again (503) instead."""
    replica = InMemoryReplica(tmp_path)
    op = Op(Version(2, 3, 1), "playlists", SONG, {"name": "pushed", "deleted": 0})
    batch = json.dumps({"source": None, "ops": [op.to_json()]}).encode()
    replica.receiver.accepting = lambda: False

    refused = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})
    replica.receiver.accepting = lambda: True
    taken = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})

    assert refused.status == 503 and taken.status == 200
    assert replica.db.get_row("playlists", SONG) is not None


def test_a_pushed_batch_fetches_its_chunks_from_known_peers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = InMemoryReplica(tmp_path)
    asked: list[list[str]] = []

    async def fetch(ref: object, sources: list[str]) -> Fetched:
        asked.append(list(sources))
        return Fetched.FAILED

    monkeypatch.setattr(replica.fetcher, "fetch_outcome", fetch)
    replica.service.cluster.membership.heartbeat_received(Heartbeat(
        cluster="c", node=2, epoch=1, role="leader", state="ACTIVE", http="http://peer:8000",
        amp="peer:9000", head=V))
    chunk = Op(V, "chunks", f"{SONG}/0", {"size": 4, "sha256": "ab" * 32, "deleted": 0})
    batch = json.dumps({"source": "http://10.9.9.9:80/anywhere",
                        "ops": [chunk.to_json()]}).encode()

    answer = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})

    assert asked == [["http://peer:8000"]]
    assert answer.status == 503  # the chunk could not be fetched: nothing applied
    assert replica.db.get_row("chunks", f"{SONG}/0") is None


@pytest.mark.parametrize(("error", "status"), [
    (OSError(errno.ENOSPC, "No space left on device"), 507),
    (RuntimeError("a bug"), 500),
])
def test_a_chunk_fetch_that_fails_answers_its_own_error_and_applies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int,
) -> None:
    """A full disk found while storing a fetched chunk is the 507 any write gets (the chaos
    lab's disk fault once made it a 500: the fetches' gathering wrapped it in FirstError)."""
    replica = InMemoryReplica(tmp_path)

    async def fetch(ref: object, sources: list[str]) -> Fetched:
        raise error

    monkeypatch.setattr(replica.fetcher, "fetch_outcome", fetch)
    chunks = [Op(V, "chunks", f"{SONG}/{n}", {"size": 4, "sha256": "ab" * 32, "deleted": 0})
              for n in range(2)]
    batch = json.dumps({"source": None, "ops": [op.to_json() for op in chunks]}).encode()

    answer = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})

    assert answer.status == status
    assert answer.json()["error"] == {507: "insufficient_storage", 500: "internal"}[status]
    assert replica.db.get_row("chunks", f"{SONG}/0") is None


def test_rows_pulled_by_anti_entropy_are_checked_like_pushed_ops(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    good = Row("playlists", SONG, {"name": "ok", "deleted": 0}, {"name": V, "deleted": V})
    bad = Row("chunks", f"{SONG}/0", {"size": -5, "sha256": "nope", "deleted": 0},
              {"size": V, "sha256": V, "deleted": V})

    with pytest.raises(ValueError, match="malformed row"):
        result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([good, bad], "http://peer")))

    assert replica.db.get_row("playlists", SONG) is None  # refused whole


OTHER = "22222222-2222-4222-8222-222222222222"


def purge_through(replica: InMemoryReplica, through: Version) -> None:
    replica.db.apply_ops([Op(Version(through.epoch, through.leader_id, through.seq + 100),
                             "purges", "tombstones", {"through": through.encode()})])


def test_a_row_purged_here_is_not_taken_back_from_a_replica_that_missed_its_delete(
    tmp_path: Path,
) -> None:
    """A replica that was away still holds a row deleted and purged here: every field of it
    is at or below the watermark, and taking it would undo the delete."""
    replica = InMemoryReplica(tmp_path)
    replica.db.apply_ops([Op(Version(2, 1, 1), "playlists", SONG, {"name": "x", "deleted": 0}),
                          Op(Version(2, 1, 5), "playlists", SONG, {"deleted": 1})])
    purge_through(replica, Version(2, 1, 5))
    assert replica.db.get_row("playlists", SONG) is None  # purged
    stale = Row("playlists", SONG, {"name": "x", "deleted": 0},
                {"name": Version(2, 1, 1), "deleted": Version(2, 1, 1)})
    newer = Row("playlists", OTHER, {"name": "new", "deleted": 0},
                {"name": Version(2, 1, 1), "deleted": Version(2, 1, 200)})

    result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([stale, newer], "http://n2")))

    assert replica.db.get_row("playlists", SONG) is None
    assert replica.db.get_row("playlists", OTHER) is not None  # written after the watermark
    assert replica.receiver.rows_fenced == 1


def test_a_row_held_here_takes_a_pulled_update_below_the_watermark(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    replica.db.apply_ops([Op(Version(2, 1, 1), "playlists", SONG, {"name": "x", "deleted": 0})])
    purge_through(replica, Version(2, 1, 9))
    update = Row("playlists", SONG, {"name": "y", "deleted": 0},
                 {"name": Version(2, 1, 3), "deleted": Version(2, 1, 1)})

    result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([update], "http://n2")))

    row = replica.db.get_row("playlists", SONG)
    assert row is not None and row.fields["name"] == "y"


def test_the_chunk_clean_up_waits_for_an_apply_whose_chunks_have_no_row_yet() -> None:
    gate = ApplyGate()
    order: list[str] = []
    applying = Deferred.fromCoroutine(gate.enter())
    assert applying.called

    async def clean() -> None:
        order.append("clean")

    cleaning = Deferred.fromCoroutine(gate.alone(clean))
    late = Deferred.fromCoroutine(gate.enter())  # an apply that arrives during the wait
    assert order == [] and not cleaning.called and not late.called

    order.append("applied")
    gate.leave()

    assert order == ["applied", "clean"] and cleaning.called and late.called
    gate.leave()


def test_the_chunk_clean_up_keeps_the_part_file_of_a_download_whose_caller_went_away(
    tmp_path: Path,
) -> None:
    """A push that timed out leaves its chunk downloads going (and the apply gate free): a
    join's clean-up then must not remove their part files, which no row names yet."""
    follower = InMemoryReplica(tmp_path / "f")
    body = b"chunk bytes" * 100
    ref = ChunkRef(SONG, 0, len(body), hashlib.sha256(body).hexdigest())
    peer = HeldPeer(body)
    fetcher = ChunkFetcher(peer, follower.chunks, run_now, follower.clock)  # type: ignore[arg-type]
    receiver = Receiver(follower.library.store, follower.chunks, fetcher,
                        PeerClient(Unreachable(), follower.clock, follower.keys),
                        run_now, lambda: [LEADER])
    asked = Deferred.fromCoroutine(fetcher.fetch(ref, [LEADER]))
    asked.addErrback(lambda f: f.trap(CancelledError))
    asked.cancel()  # its caller went away; the download goes on
    part = follower.chunks.path(SONG, 0).with_name(f"{SONG}_0{PART_SUFFIX}")
    assert part.exists()

    result_of(Deferred.fromCoroutine(receiver.clean_chunks()))

    assert part.exists()
    peer.calls[0].callback(None)
    assert follower.chunks.read(SONG, 0) == body


# Chunks the peers no longer hold: a follower behind receives an upload whose song was
# deleted since (the delete travels in a later batch).

LEADER = "http://leader"


class Recording(Resource):
    """Answers as ``inner`` does (404 to everything without one), and records the paths
    asked."""

    isLeaf = True

    def __init__(self, inner: Resource | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.paths: list[str] = []

    def render(self, request: Request) -> Any:
        self.paths.append(request.path.decode())
        if self.inner is not None:
            return self.inner.render(request)
        request.setResponseCode(404)
        return b"not here"


@implementer(IAgent)
class Unreachable:
    """Every connection is refused."""

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        return fail(ConnectionRefusedError("refused"))


class Receiving:
    """A follower's Receiver whose chunk downloads go to ``chunks_from`` and whose questions
    about rows go to ``rows_from``, the batch's source (LEADER, a known peer)."""

    def __init__(self, follower: InMemoryReplica, chunks_from: IAgent,
                 rows_from: IAgent) -> None:
        self.stubs = [a for a in (chunks_from, rows_from) if isinstance(a, InMemoryAgent)]
        fetcher = ChunkFetcher(PeerClient(chunks_from, follower.clock, follower.keys),
                               follower.chunks, run_now, follower.clock)
        self.receiver = Receiver(
            follower.library.store, follower.chunks, fetcher,
            PeerClient(rows_from, follower.clock, follower.keys),
            run_now, lambda: [LEADER])

    def apply(self, ops: list[Op]) -> Version:
        d = Deferred.fromCoroutine(self.receiver.apply_ops(ops, LEADER))
        for _ in range(10_000):
            if d.called:
                break
            for stub in self.stubs:
                stub.flush()
        return result_of(d)


def uploaded(leader: InMemoryReplica, tmp_path: Path) -> tuple[str, list[Op]]:
    """A song of three chunks uploaded on ``leader``: its id and the upload's ops."""
    wav = make_wav(tmp_path / "song.wav", 3 * leader.chunk_size)
    answer = leader.upload(wav.read_bytes())
    assert answer.status == 201
    return answer.json()["song"]["id"], leader.db.ops_after(ZERO)


def test_chunks_no_peer_holds_deleted_at_the_source_apply_without_their_bytes(
    tmp_path: Path,
) -> None:
    leader = InMemoryReplica(tmp_path / "leader")
    song, upload = uploaded(leader, tmp_path)
    assert leader.call("DELETE", f"/songs/{song}").status == 204
    follower = InMemoryReplica(tmp_path / "follower")
    source = Recording(leader.root)

    Receiving(follower, InMemoryAgent(source), InMemoryAgent(source)).apply(upload)

    assert any(path.startswith(f"/songs/{song}/chunks/") for path in source.paths)  # all 404
    assert "/sync/rows" in source.paths
    assert follower.db.get_row("songs", song).fields["deleted"] == 1  # type: ignore[union-attr]
    chunk_rows = [follower.db.get_row("chunks", op.key) for op in upload
                  if op.entity == "chunks"]
    assert len(chunk_rows) == 3 and all(row and row.fields["deleted"] for row in chunk_rows)
    assert follower.get(f"/songs/{song}").status == 404
    assert follower.db.has_op(upload[-1].version)  # the batch itself is applied


def test_chunks_no_peer_holds_still_live_at_the_source_refuse_the_batch(
    tmp_path: Path,
) -> None:
    leader = InMemoryReplica(tmp_path / "leader")
    song, upload = uploaded(leader, tmp_path)
    follower = InMemoryReplica(tmp_path / "follower")
    rows = Recording(leader.root)

    with pytest.raises(Unavailable, match="3 of 3 chunks could not be fetched; nothing applied"):
        Receiving(follower, InMemoryAgent(Recording()), InMemoryAgent(rows)).apply(upload)

    assert rows.paths == ["/sync/rows"]  # asked, and the song is still live there
    assert follower.db.get_row("songs", song) is None
    assert not follower.db.has_op(upload[0].version)


def test_chunks_from_unreachable_peers_refuse_the_batch_without_asking_for_rows(
    tmp_path: Path,
) -> None:
    leader = InMemoryReplica(tmp_path / "leader")
    song, upload = uploaded(leader, tmp_path)
    assert leader.call("DELETE", f"/songs/{song}").status == 204
    follower = InMemoryReplica(tmp_path / "follower")
    rows = Recording(leader.root)

    with pytest.raises(Unavailable, match="3 of 3 chunks could not be fetched; nothing applied"):
        Receiving(follower, Unreachable(), InMemoryAgent(rows)).apply(upload)

    assert rows.paths == []  # unreachable is not "not held": nothing to settle
    assert follower.db.get_row("songs", song) is None


def test_chunks_no_peer_holds_and_a_source_that_cannot_say_refuse_the_batch(
    tmp_path: Path,
) -> None:
    leader = InMemoryReplica(tmp_path / "leader")
    song, upload = uploaded(leader, tmp_path)
    follower = InMemoryReplica(tmp_path / "follower")

    with pytest.raises(Unavailable, match="3 of 3 chunks could not be fetched; nothing applied"):
        Receiving(follower, InMemoryAgent(Recording()), Unreachable()).apply(upload)

    assert follower.db.get_row("songs", song) is None


def test_chunks_that_find_the_disk_full_refuse_the_batch_as_a_full_disk(
    tmp_path: Path,
) -> None:
    """507 to the pusher (its link retries; its log says why), not the 503 of chunks no peer
    could give: they came, and this replica had no room for them. The first chunk that
    found the disk full is the last asked for (here the peer answers at once, so no other
    was in flight): the others' bytes would not fit either, and each try of a push or a
    catch-up asked for all of them again (368 'could not be stored' lines in 2 s of a random
    lab run)."""
    leader = InMemoryReplica(tmp_path / "leader")
    song, upload = uploaded(leader, tmp_path)
    follower = InMemoryReplica(tmp_path / "follower")
    for op in upload:
        if op.entity == "chunks":
            final = follower.chunks.path(song, int(op.key.split("/")[1]))
            final.parent.mkdir(parents=True, exist_ok=True)
            final.with_name(final.name + PART_SUFFIX).symlink_to("/dev/full")  # ENOSPC
    source = Recording(leader.root)

    with pytest.raises(InsufficientStorage, match="the disk is full: 3 of 3 chunks could not be"
                                                  " fetched and stored; nothing applied"):
        Receiving(follower, InMemoryAgent(source), InMemoryAgent(source)).apply(upload)

    assert [path for path in source.paths if "/chunks/" in path] == [
        f"/songs/{song}/chunks/0"]
    assert "/sync/rows" not in source.paths
    assert follower.db.get_row("songs", song) is None


class HeldFetches:
    """Stands in for the ChunkFetcher: each fetch waits until the test ends it."""

    def __init__(self) -> None:
        self.asked: list[ChunkRef] = []
        self.pending: list[Deferred[Fetched]] = []

    def fetch_outcome(self, ref: ChunkRef, sources: list[str]) -> Deferred[Fetched]:
        self.asked.append(ref)
        self.pending.append(Deferred())
        return self.pending[-1]


def held_fetches(tmp_path: Path) -> tuple[Receiver, HeldFetches, list[ChunkRef]]:
    """A Receiver whose chunk downloads wait for the test, and 20 chunks to fetch."""
    replica = InMemoryReplica(tmp_path)
    fetches = HeldFetches()
    receiver = Receiver(replica.library.store, replica.chunks, fetches,  # type: ignore[arg-type]
                        PeerClient(Unreachable(), replica.clock, replica.keys), run_now,
                        lambda: [LEADER])
    return receiver, fetches, [ChunkRef(SONG, n, 4, "ab" * 32) for n in range(20)]


def test_an_apply_keeps_eight_chunk_downloads_going_and_starts_none_once_the_disk_is_full(
    tmp_path: Path,
) -> None:
    receiver, fetches, refs = held_fetches(tmp_path)

    d = Deferred.fromCoroutine(receiver._fetch_each(refs, [LEADER]))
    assert fetches.asked == refs[:FETCH_WORKERS]
    fetches.pending[0].callback(Fetched.DONE)
    assert fetches.asked == refs[:FETCH_WORKERS + 1]  # the next, as one ended
    fetches.pending[1].callback(Fetched.NO_ROOM)
    for held in fetches.pending[2:]:
        held.callback(Fetched.DONE)  # those in flight end as they end

    assert fetches.asked == refs[:FETCH_WORKERS + 1]  # none started after the full disk
    outcomes = result_of(d)
    assert [outcomes[ref] for ref in refs] == (
        [Fetched.DONE, Fetched.NO_ROOM] + [Fetched.DONE] * (FETCH_WORKERS - 1)
        + [Fetched.NO_ROOM] * (20 - FETCH_WORKERS - 1))


def test_an_apply_whose_chunk_fetch_fails_asks_for_no_other_chunk(tmp_path: Path) -> None:
    """The apply fails at the first error; its workers still in flight end, and none asks for
    another chunk for an apply that has already answered."""
    receiver, fetches, refs = held_fetches(tmp_path)

    d = Deferred.fromCoroutine(receiver._fetch_each(refs, [LEADER]))
    fetches.pending[0].errback(OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError, match="Input/output error"):
        result_of(d)
    for held in fetches.pending[1:]:
        held.callback(Fetched.DONE)

    assert fetches.asked == refs[:FETCH_WORKERS]


def test_settle_merges_the_sources_current_rows_of_chunks_and_their_songs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a join does with chunks no peer serves: the leader's rows say the song was
    deleted since, so they are wanted no more; rows not asked for are not taken."""
    replica = InMemoryReplica(tmp_path)
    made = Version(1, 3, 1)
    replica.db.apply_ops([
        Op(made, "songs", SONG, {"title": "t", "deleted": 0}),
        Op(made, "chunks", f"{SONG}/0", {"size": 4, "sha256": "ab" * 32, "deleted": 0}),
    ])
    deleted = {"deleted": Version(2, 1, 5)}
    asked: list[list[tuple[str, str]]] = []

    async def rows(base: str, keys: list[tuple[str, str]]) -> list[Row]:
        asked.append(keys)
        return [Row("songs", SONG, {"title": "t", "deleted": 1}, {"title": made, **deleted}),
                Row("chunks", f"{SONG}/0", {"size": 4, "sha256": "ab" * 32, "deleted": 1},
                    {"size": made, "sha256": made, **deleted}),
                Row("playlists", OTHER, {"name": "not asked", "deleted": 0},
                    {"name": made, "deleted": made})]

    monkeypatch.setattr(replica.receiver._client, "rows", rows)

    merged = result_of(Deferred.fromCoroutine(
        replica.receiver.settle([f"{SONG}_0"], "http://peer:8000")))

    assert asked == [[("songs", SONG), ("chunks", f"{SONG}/0")]]
    assert merged == 2
    assert replica.db.live_chunk_names() == set() and replica.db.song(SONG) is None
    assert replica.db.get_row("playlists", OTHER) is None
