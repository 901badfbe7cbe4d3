"""Cover art across three real replicas: an upload's cover reaches every follower, fetched and
verified by SHA-256; a follower SIGKILLed, or wiped, gets the covers back; an album cover set
on the leader is served everywhere; refusals change nothing anywhere."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers.covers import audio_with_cover, picture
from tests.helpers.replica import (
    Cluster,
    ReplicaProcess,
    agreed_cluster,
    request,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

COVER = picture("PNG", size=(300, 200), color=(250, 120, 0))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cluster(tmp_path: Path, replicas: list[ReplicaProcess]) -> Cluster:
    return agreed_cluster(tmp_path, replicas, "--chunk-size", "16K", "--anti-entropy-interval", "1")


def roles(cluster: Cluster) -> tuple[ReplicaProcess, list[ReplicaProcess]]:
    leader = cluster.leader()
    return leader, [n for n in cluster.nodes.values() if n is not leader]


def upload(node: ReplicaProcess, data: bytes) -> dict[str, Any]:
    answer = node.post("/songs", data, "audio/mpeg")
    assert answer.status in (200, 201), answer.body
    return answer.json()["song"]  # type: ignore[no-any-return]


def served(node: ReplicaProcess, path: str) -> bytes | None:
    answer = node.get(path)
    return answer.body if answer.status == 200 else None


def cover_file(node: ReplicaProcess, digest: str) -> Path:
    return node.data_dir / "covers" / digest


@pytest.fixture(scope="module")
def covered(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return audio_with_cover(tmp_path_factory.mktemp("covers") / "covered.mp3", "mp3", COVER,
                            seconds=2, tags={"title": "Sunset", "artist": "Band",
                                             "album": "Colours"})


def test_an_uploads_cover_is_served_by_every_follower(cluster: Cluster, covered: bytes) -> None:
    leader, followers = roles(cluster)

    song = upload(leader, covered)

    assert song["cover_sha256"] == sha(COVER)
    for node in followers:
        wait_until(lambda node=node: served(node, f"/covers/{sha(COVER)}") == COVER,
                   timeout=10, what=f"the cover on replica {node.node_id}")
        assert cover_file(node, sha(COVER)).read_bytes() == COVER  # fetched, verified
        small = node.get(f"/covers/{sha(COVER)}?size=100")
        assert small.headers["x-served-by"] == str(node.node_id)
        with Image.open(io.BytesIO(small.body)) as image:
            assert image.size == (100, 67)
        album = node.get(f"/albums/{song['album_id']}/cover")
        assert album.status == 200 and album.body == COVER


def test_a_lost_cover_file_is_fetched_again_on_read(cluster: Cluster, covered: bytes) -> None:
    leader, followers = roles(cluster)
    upload(leader, covered)
    node = followers[0]
    # Served, not only on disk: a follower fetches a cover before it applies the rows that
    # name it, and serves none that no live song names (404 in between).
    wait_until(lambda: served(node, f"/covers/{sha(COVER)}") == COVER, timeout=10,
               what="the cover")
    cover_file(node, sha(COVER)).write_bytes(b"corrupted on disk")

    answer = node.get(f"/covers/{sha(COVER)}")

    assert answer.status == 200 and answer.body == COVER
    assert cover_file(node, sha(COVER)).read_bytes() == COVER


def test_a_follower_killed_while_a_cover_was_uploaded_gets_it(cluster: Cluster,
                                                              covered: bytes) -> None:
    leader, followers = roles(cluster)
    away = followers[0]
    away.kill()

    upload(leader, covered)
    away.start()

    wait_until(lambda: cover_file(away, sha(COVER)).exists(), timeout=30,
               what="the cover on the restarted follower")
    assert served(away, f"/covers/{sha(COVER)}") == COVER


def test_a_wiped_follower_gets_the_covers_back_by_its_join(cluster: Cluster,
                                                           covered: bytes) -> None:
    leader, followers = roles(cluster)
    song = upload(leader, covered)
    mine = picture("JPEG", size=(50, 50), color=(9, 9, 9))
    assert request(leader.http_port, "PUT", f"/albums/{song['album_id']}/cover", mine,
                   {"Content-Type": "image/jpeg"}).status == 200
    wiped = followers[-1]
    wait_until(lambda: cover_file(wiped, sha(mine)).exists(), timeout=10, what="the cover")

    wiped.kill()
    shutil.rmtree(wiped.data_dir)
    wiped.start()

    # Files, not reads: a read would fetch a missing cover itself. The join's sweep does.
    wait_until(lambda: cover_file(wiped, sha(COVER)).exists()
               and cover_file(wiped, sha(mine)).exists(), timeout=30,
               what="both covers on the wiped follower")
    assert cover_file(wiped, sha(COVER)).read_bytes() == COVER
    assert served(wiped, f"/albums/{song['album_id']}/cover") == mine


def test_an_album_cover_set_on_the_leader_is_served_everywhere(cluster: Cluster,
                                                               covered: bytes) -> None:
    leader, followers = roles(cluster)
    song = upload(leader, covered)
    mine = picture("WEBP", size=(64, 64), color=(0, 200, 100))

    answer = request(leader.http_port, "PUT", f"/albums/{song['album_id']}/cover", mine,
                     {"Content-Type": "image/webp"})

    assert answer.status == 200, answer.body
    for node in followers:
        wait_until(lambda node=node: served(node, f"/albums/{song['album_id']}/cover") == mine,
                   timeout=10, what=f"the album cover on replica {node.node_id}")
        assert cover_file(node, sha(mine)).read_bytes() == mine
        assert node.get(f"/covers/{sha(COVER)}").status == 200  # the song's stays too


def digests(cluster: Cluster) -> list[list[str]]:
    return [node.signed("GET", "/sync/digest").json()["buckets"]
            for node in cluster.nodes.values()]


def test_refused_album_covers_change_nothing_anywhere(cluster: Cluster, covered: bytes,
                                                     tmp_path: Path) -> None:
    leader, _ = roles(cluster)
    song = upload(leader, covered)
    wait_until(lambda: len({str(d) for d in digests(cluster)}) == 1, timeout=10,
               what="convergence")
    before = digests(cluster), [sorted(p.name for p in (n.data_dir / "covers").iterdir())
                                for n in cluster.nodes.values()]
    album = f"/albums/{song['album_id']}/cover"

    refusals = [
        request(leader.http_port, "PUT", album, b"GIF89a but not really", {}).status,
        request(leader.http_port, "PUT", album, picture("BMP"), {}).status,
        request(leader.http_port, "PUT", f"/albums/{'1' * 8}-1111-4111-8111-{'1' * 12}/cover",
                COVER, {}).status,
        request(leader.http_port, "PUT", "/albums/..%2F..%2Fchunks/cover", COVER, {}).status,
        request(leader.http_port, "PUT", album, b"\xff" * (10 * 1024 * 1024 + 1), {}).status,
    ]

    assert refusals == [415, 415, 404, 404, 413]
    after = digests(cluster), [sorted(p.name for p in (n.data_dir / "covers").iterdir())
                               for n in cluster.nodes.values()]
    assert after == before
