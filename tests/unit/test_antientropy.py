"""Anti-entropy between in-memory replicas: cost follows the difference, garbage is skipped."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from distpotify.config import ReplicaConfig
from distpotify.model import Op, Version
from distpotify.replication.antientropy import (
    REQUESTS_IN_FLIGHT,
    AntiEntropy,
    abandon,
    run_limited,
)
from distpotify.replication.client import PeerClient, PeerError
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.repair import VERIFIED_MAX
from distpotify.service import build_replica
from tests.helpers.api import InMemoryReplica, result_of, run_now
from tests.helpers.audio import make_wav

ROWS = 20_000


class CountingRoot(Resource):
    """Counts the response bytes a replica sends."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.bytes = 0
        self.requests = 0

    def render(self, request: Request) -> Any:
        self.requests += 1
        write = request.write

        def counted(data: bytes) -> None:
            self.bytes += len(data)
            write(data)

        request.write = counted  # type: ignore[method-assign]
        return self.inner.render(request)


def playlists(n: int, version: int, name: str) -> list[Op]:
    return [Op(Version(version, 1, i + 1), "playlists", f"{i:08x}-0000-4000-8000-000000000000",
               {"name": name, "deleted": 0}) for i in range(n)]


def anti_entropy(into: InMemoryReplica, stub: RequestTraversalAgent, chunk_page: int = 2048
                 ) -> AntiEntropy:
    return AntiEntropy(
        store=into.library.store, client=PeerClient(stub, into.clock, into.keys),
        receiver=into.receiver, guard=into.guard, chunks=into.chunks, blocking=run_now,
        peers=lambda: ["http://peer"], clock=into.clock, interval=10, rng=random.Random(1),
        chunk_page=chunk_page,
    )


def run(d: Deferred[Any], stub: RequestTraversalAgent) -> Any:
    # Not d.called: a Deferred waiting on another (a round queued behind a lock) is called.
    fired: list[bool] = []
    d.addBoth(lambda result: fired.append(True) or result)
    for _ in range(10_000):
        if fired:
            break
        stub.flush()
    return result_of(d)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[Op]:
    return playlists(ROWS, 1, "same")


def test_ten_differing_rows_among_20000_cost_a_fraction_of_a_full_copy(
    tmp_path: Path, library: list[Op]
) -> None:
    for name in ("a", "b", "empty"):
        (tmp_path / name).mkdir()
    a, b, empty = (InMemoryReplica(tmp_path / name) for name in ("a", "b", "empty"))
    a.db.apply_ops(library)
    b.db.apply_ops(library)
    b.db.apply_ops(playlists(10, 2, "newer"))
    root = CountingRoot(b.root)
    stub = RequestTraversalAgent(root)

    run(anti_entropy(a, stub).run_round("http://peer"), stub)
    difference = root.bytes
    root.bytes = 0
    run(anti_entropy(empty, stub).run_round("http://peer"), stub)
    full = root.bytes

    assert a.db.digest() == b.db.digest() == empty.db.digest()
    assert difference < full / 20, (difference, full)
    print(f"\n10 of {ROWS} rows differing: {difference} bytes; full copy: {full} bytes")


def test_a_peer_answering_garbage_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    a = InMemoryReplica(tmp_path / "a")
    a.db.apply_ops(playlists(3, 1, "mine"))

    class Garbage(Resource):
        isLeaf = True

        def render(self, request: Request) -> bytes:
            return b'{"buckets": "not a list"}'

    stub = RequestTraversalAgent(Garbage())
    d = anti_entropy(a, stub).run_round("http://peer")

    with pytest.raises(PeerError):
        run(d, stub)
    assert len(a.db.playlists()) == 3


class RecordingGuard:
    """Stands in for the ChunkGuard: records which chunks a round asks it to fetch."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.repairs = True

    async def ensure(self, ref: ChunkRef) -> int:
        self.asked.append(f"{ref.song_id}_{ref.idx}")
        return int(self.repairs)


def test_the_first_round_checks_every_chunk_and_later_ones_a_page_each(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    wav = make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
    song = replica.upload(wav.read_bytes()).json()["song"]
    chunks = song["chunk_count"]
    stub = RequestTraversalAgent(replica.root)  # its own peer: digests are equal, no row is pulled
    guard = RecordingGuard()
    ae = anti_entropy(replica, stub, chunk_page=2)
    ae._guard = guard  # type: ignore[assignment]
    lost = f"{song['id']}_1"
    (replica.chunks.root / lost).unlink()

    run(ae.run_round("http://peer"), stub)  # the first round checks the whole registry
    assert guard.asked == [lost] and ae.last is not None
    assert ae.last["chunks_checked"] == chunks

    checked = []
    for _ in range(-(-chunks // 2)):  # then two registry rows a round, round and round
        run(ae.run_round("http://peer"), stub)
        checked.append(ae.last["chunks_checked"])

    assert guard.asked == [lost, lost]  # found again on the page that holds it
    assert max(checked) == 2 and sum(checked) == chunks
    assert ae.status()["chunk_passes"] == 2


def test_a_round_with_equal_digests_asks_for_the_digest_alone_and_checks_a_page(
    tmp_path: Path,
) -> None:
    """20,000 rows and a song, equal on both sides: one request (the 256 bucket hashes), no
    bucket or row pulled, and no more chunk rows looked at than a page."""
    replica = InMemoryReplica(tmp_path)
    replica.db.apply_ops(playlists(ROWS, 7, "same"))
    replica.db.begin_leading(8)  # above them, as the election has it claim (data_seen)
    replica.upload(make_wav(tmp_path / "song.wav", 3 * replica.chunk_size).read_bytes())
    root = CountingRoot(replica.root)
    stub = RequestTraversalAgent(root)  # its own peer: the digests are equal
    ae = AntiEntropy(
        store=replica.library.store, client=PeerClient(stub, replica.clock, replica.keys),
        receiver=replica.receiver, guard=replica.guard, chunks=replica.chunks,
        blocking=run_now, peers=lambda: ["http://peer"], clock=replica.clock, interval=10,
        chunk_page=2, missing_at_start=[],
    )

    run(ae.run_round("http://peer"), stub)

    assert root.requests == 1
    assert ae.last is not None and ae.last["rows_pulled"] == 0
    assert ae.last["chunks_checked"] == 2 and ae.status()["chunk_passes"] == 1


def test_what_start_up_found_missing_replaces_the_first_whole_check(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    wav = make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
    song = replica.upload(wav.read_bytes()).json()["song"]
    stub = RequestTraversalAgent(replica.root)
    lost, back = (ChunkRef(*row) for row in replica.db.chunk_rows(
        [f"{song['id']}_0", f"{song['id']}_1"]))
    (replica.chunks.root / f"{song['id']}_0").unlink()  # still missing at the first round
    guard = RecordingGuard()
    ae = AntiEntropy(
        store=replica.library.store, client=PeerClient(stub, replica.clock, replica.keys),
        receiver=replica.receiver, guard=guard, chunks=replica.chunks,  # type: ignore[arg-type]
        blocking=run_now, peers=lambda: ["http://peer"], clock=replica.clock, interval=10,
        chunk_page=1, missing_at_start=[lost, back],  # chunk 1 came back meanwhile
    )

    run(ae.run_round("http://peer"), stub)

    assert guard.asked == [f"{song['id']}_0"]
    assert ae.last is not None and ae.last["chunks_checked"] == 1


def test_start_up_hands_the_chunks_it_found_missing_to_anti_entropy(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    song = replica.upload(make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
                          .read_bytes()).json()["song"]
    (replica.chunks.root / f"{song['id']}_1").unlink()
    replica.db.close()

    restarted = InMemoryReplica(tmp_path)

    status = restarted.service.replication.anti_entropy.status()
    assert status["chunks_missing"] == 1 and status["chunk_passes"] == 1


def test_a_join_under_way_keeps_its_missing_chunks_to_itself(tmp_path: Path) -> None:
    """Restarted in the middle of a join: the chunks not here yet are the join's to fetch."""
    replica = InMemoryReplica(tmp_path)
    song = replica.upload(make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
                          .read_bytes()).json()["song"]
    (replica.chunks.root / f"{song['id']}_1").unlink()
    replica.db.set_meta("join_state", "CHUNKS")
    replica.db.close()

    restarted = build_replica(ReplicaConfig(node_id=1, data_dir=tmp_path,
                                            cluster_keys=replica.keys),
                              Clock(), run_db=run_now, blocking=run_now)

    status = restarted.replication.anti_entropy.status()
    assert status["chunks_missing"] == 0 and status["chunk_passes"] == 0
    restarted.db.close()


def test_a_chunk_no_peer_could_give_is_looked_for_again_next_round(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    wav = make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
    song = replica.upload(wav.read_bytes()).json()["song"]
    stub = RequestTraversalAgent(replica.root)
    guard = RecordingGuard()
    guard.repairs = False  # the peers are down for now
    ae = anti_entropy(replica, stub)
    ae._guard = guard  # type: ignore[assignment]
    lost = f"{song['id']}_1"
    (replica.chunks.root / lost).unlink()

    run(ae.run_round("http://peer"), stub)
    run(ae.run_round("http://peer"), stub)  # the repair failed: try again

    assert guard.asked == [lost, lost]


def test_the_guard_remembers_a_bounded_number_of_verified_files(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    guard = replica.guard
    for n in range(VERIFIED_MAX + 10):
        guard._remember(f"chunk-{n}", (n, n, n))

    assert len(guard._verified) == VERIFIED_MAX
    assert "chunk-0" not in guard._verified and f"chunk-{VERIFIED_MAX + 9}" in guard._verified


def test_rounds_a_new_leader_asks_for_cancel_a_periodic_round_and_skip_none_of_their_own(
    tmp_path: Path,
) -> None:
    """The writes wait for a new leader's rounds: a periodic round under way with a peer that
    stopped answering (the old leader, paused) is cancelled rather than waited for, and
    each of the new leader's rounds waits for the one before instead of being skipped."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    a, b, c = (InMemoryReplica(tmp_path / name) for name in ("a", "b", "c"))
    b.db.apply_ops(playlists(2, 1, "from b"))
    c.db.apply_ops(playlists(3, 2, "from c")[2:])
    held = _Held()
    stub = RequestTraversalAgent(_ByHost({"held": held, "b": b.root, "c": c.root}))
    ae = anti_entropy(a, stub)
    under_way = ae.run_round("http://held")  # a periodic round, waiting for its peer
    stub.flush()

    skipped = ae.run_round("http://c")
    reconciled = ae.reconcile(["http://b", "http://c"])
    assert skipped.called and under_way.called
    failures: list[Any] = []
    under_way.addErrback(failures.append)
    assert [failure.type for failure in failures] == [CancelledError]
    failed = run(reconciled, stub)

    assert failed == [] and ae.status()["rounds"] == 2 and ae.status()["errors"] == 0
    assert sorted(p["name"] for p in a.db.playlists()) == ["from b", "from b", "from c"]


def test_a_reconcile_names_the_peers_whose_round_failed(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, b = (InMemoryReplica(tmp_path / name) for name in ("a", "b"))
    b.db.apply_ops(playlists(2, 1, "from b"))

    class Refusing(Resource):
        isLeaf = True

        def render(self, request: Request) -> bytes:
            request.setResponseCode(503)
            return b'{"error": "unavailable"}'

    stub = RequestTraversalAgent(_ByHost({"down": Refusing(), "b": b.root}))
    ae = anti_entropy(a, stub)

    failed = run(ae.reconcile(["http://down", "http://b"]), stub)

    assert failed == ["http://down"] and ae.status()["errors"] == 1
    assert len(a.db.playlists()) == 2


class _Held(Resource):
    """A peer that never answers (paused)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class _ByHost(Resource):
    """Routes each request to the peer its host names."""

    def __init__(self, roots: dict[str, Resource]) -> None:
        super().__init__()
        self._roots = roots

    def getChild(self, path: bytes, request: Request) -> Resource:
        request.postpath.insert(0, request.prepath.pop())
        return self._roots[request.getRequestHostname().decode()]


def test_rows_only_the_peer_holds_older_are_not_fetched(tmp_path: Path) -> None:
    """A peer that lags (a follower behind a new leader) differs in every bucket it has not
    caught up on: its rows there are listed but none is fetched, as none is newer; a row it
    wrote later (in another partition) still is, field by field."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a, b = (InMemoryReplica(tmp_path / name) for name in ("a", "b"))
    a.db.apply_ops(playlists(200, 1, "old") + playlists(200, 3, "newer here"))
    b.db.apply_ops(playlists(200, 1, "old"))
    b.db.apply_ops([Op(Version(4, 2, 1), "playlists", "00000007-0000-4000-8000-000000000000",
                       {"public": 1})])
    root = CountingRoot(b.root)
    stub = RequestTraversalAgent(root)
    ae = anti_entropy(a, stub)

    run(ae.run_round("http://peer"), stub)

    assert ae.last is not None and ae.last["rows_pulled"] == 1
    [row] = [p for p in a.db.playlists() if p["id"].startswith("00000007")]
    assert (row["name"], row["public"]) == ("newer here", True)


def test_a_new_leaders_rounds_compare_rows_and_leave_chunk_files_to_the_periodic_ones(
    tmp_path: Path,
) -> None:
    """The writes wait for these rounds: no sweep of the chunk registry (the first round's
    is the whole registry) and no repair of lost files in them."""
    replica = InMemoryReplica(tmp_path)
    song = replica.upload(make_wav(tmp_path / "song.wav", 3 * replica.chunk_size)
                          .read_bytes()).json()["song"]
    stub = RequestTraversalAgent(replica.root)
    guard = RecordingGuard()
    ae = anti_entropy(replica, stub)
    ae._guard = guard  # type: ignore[assignment]
    (replica.chunks.root / f"{song['id']}_1").unlink()

    run(ae.reconcile(["http://peer", "http://peer"], chunks=False), stub)
    assert ae.status()["rounds"] == 2 and ae.status()["chunk_checks"] == 0
    assert guard.asked == [] and ae.last is not None and ae.last["chunks_checked"] == 0

    run(ae.run_round("http://peer"), stub)
    assert guard.asked == [f"{song['id']}_1"]


def test_a_round_asks_for_at_most_a_few_things_at_once_and_leaves_none_running() -> None:
    """run_limited and abandon, as a round lists buckets and fetches row batches: at most
    REQUESTS_IN_FLIGHT at once, results in order, and once a failure ends the round the
    rest are cancelled (queued ones never start) with no failure left unhandled."""
    answers: list[Deferred[int]] = []
    cancelled: list[int] = []

    async def ask(n: int) -> int:
        answer: Deferred[int] = Deferred(lambda _: cancelled.append(n))
        answers.append(answer)
        return await answer

    runs = run_limited([functools.partial(ask, n) for n in range(20)], REQUESTS_IN_FLIGHT)
    assert len(answers) == REQUESTS_IN_FLIGHT
    answers[1].callback(1)
    answers[0].callback(0)
    assert [result_of(runs[0]), result_of(runs[1])] == [0, 1]
    assert len(answers) == REQUESTS_IN_FLIGHT + 2
    answers[2].errback(PeerError("bucket 2: HTTP 503"))  # its slot goes to the next
    running = list(range(3, REQUESTS_IN_FLIGHT + 3))
    assert len(answers) == running[-1] + 1

    abandon(runs)

    assert sorted(cancelled) == running
    assert len(answers) == running[-1] + 1  # the queued ones never started
    assert all(run.called and run.result is None for run in runs[2:])
