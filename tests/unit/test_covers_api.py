"""Cover art through a replica's API, in memory: an upload's embedded cover stored and
served (original and resized, with caching), album covers, and refusals that change
nothing."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from twisted.internet.defer import Deferred
from twisted.web.test.requesthelper import DummyRequest

from distpotify.catalog import VARIOUS
from distpotify.images import MAX_COVER_BYTES
from distpotify.model import new_id
from tests.helpers.api import InMemoryReplica, NoLeader, result_of
from tests.helpers.covers import album_tags, audio_with_cover, embed, picture

COVER = picture("PNG", size=(120, 80), color=(10, 200, 10))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("clips")
    corrupt = root / "corrupt.mp3"
    audio_with_cover(corrupt, "mp3", None, tags={"title": "Corrupt", "album": "Broken"})
    embed(corrupt, "mp3", COVER[:50])
    various = root / "various.flac"
    audio_with_cover(various, "flac", None, tags={"title": "V", "artist": "Someone",
                                                  "album": "Hits"})
    album_tags(various, "flac", compilation=True)
    return {
        "covered": audio_with_cover(root / "covered.mp3", "mp3", COVER,
                                    tags={"title": "One", "artist": "Band", "album": "LP"}),
        "bare": audio_with_cover(root / "bare.mp3", "mp3", None,
                                 tags={"title": "Two", "artist": "Band", "album": "Plain"}),
        "corrupt": corrupt.read_bytes(),
        "various": various.read_bytes(),
    }


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


def upload(api: InMemoryReplica, data: bytes) -> dict[str, Any]:
    answer = api.upload(data, "audio/mpeg")
    assert answer.status == 201, answer.body
    return answer.json()["song"]  # type: ignore[no-any-return]


def cover_files(api: InMemoryReplica) -> list[str]:
    return sorted(os.listdir(api.service.config.data_dir / "covers"))


def test_upload_stores_the_embedded_cover(api: InMemoryReplica, clips: dict[str, bytes]) -> None:
    song = upload(api, clips["covered"])

    assert song["cover_sha256"] == sha(COVER)
    assert cover_files(api) == [sha(COVER)]
    assert api.get(f"/songs/{song['id']}").json()["cover_sha256"] == sha(COVER)


def test_upload_without_picture_has_no_cover(api: InMemoryReplica, clips: dict[str, bytes]
                                             ) -> None:
    assert upload(api, clips["bare"])["cover_sha256"] is None
    assert cover_files(api) == []


def test_corrupt_picture_does_not_stop_the_upload(api: InMemoryReplica,
                                                  clips: dict[str, bytes]) -> None:
    song = upload(api, clips["corrupt"])

    assert song["title"] == "Corrupt" and song["cover_sha256"] is None
    assert cover_files(api) == []


def test_compilation_is_filed_under_various_artists(api: InMemoryReplica,
                                                    clips: dict[str, bytes]) -> None:
    song = upload(api, clips["various"])

    assert (song["artist"], song["album_artist"]) == ("Someone", VARIOUS)


def test_cover_is_served_as_stored_and_cached_for_good(api: InMemoryReplica,
                                                       clips: dict[str, bytes]) -> None:
    upload(api, clips["covered"])

    answer = api.get(f"/covers/{sha(COVER)}")

    assert answer.status == 200 and answer.body == COVER
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["etag"] == f'"{sha(COVER)}"'
    assert "immutable" in answer.headers["cache-control"]


def test_a_client_holding_the_cover_gets_304(api: InMemoryReplica,
                                             clips: dict[str, bytes]) -> None:
    upload(api, clips["covered"])

    answer = api.get(f"/covers/{sha(COVER)}?size=40",
                     headers={"If-None-Match": f'"{sha(COVER)}-40"'})

    assert answer.status == 304 and answer.body == b""


@pytest.mark.parametrize(("asked", "box"), [("60", 60), ("1", 16), ("-7", 16),
                                             ("5000", 2048), ("9" * 30, 2048)])
def test_a_size_gives_a_resized_copy_that_fits(api: InMemoryReplica, clips: dict[str, bytes],
                                               asked: str, box: int) -> None:
    upload(api, clips["covered"])

    answer = api.get(f"/covers/{sha(COVER)}?size={asked}")

    with Image.open(io.BytesIO(answer.body)) as image:
        assert image.format == "JPEG" and max(image.size) == min(box, 120)
        assert abs(image.size[0] / image.size[1] - 120 / 80) < 0.1  # aspect kept (rounded)
    assert answer.headers["content-type"] == "image/jpeg"
    cache = api.service.config.data_dir / "cover-cache"
    assert os.listdir(cache) == [f"{sha(COVER)}_{box}"]


def test_the_second_resize_comes_from_the_cache(api: InMemoryReplica,
                                                clips: dict[str, bytes]) -> None:
    upload(api, clips["covered"])
    assert api.get(f"/covers/{sha(COVER)}?size=50").status == 200
    cached = api.service.config.data_dir / "cover-cache" / f"{sha(COVER)}_50"
    cached.write_bytes(b"from the cache")
    os.utime(cached, ns=(1, 1))

    assert api.get(f"/covers/{sha(COVER)}?size=50").body == b"from the cache"
    assert cached.stat().st_mtime_ns > 1  # touched: recently used


@pytest.mark.parametrize("path", [
    f"/covers/{'0' * 64}", "/covers/" + "A" * 64, "/covers/../../etc/passwd",
    "/covers/%2e%2e%2fmetadata.sqlite3", f"/covers/{'0' * 63}",
])
def test_unknown_or_hostile_cover_ids_are_404(api: InMemoryReplica, path: str) -> None:
    assert api.get(path).status == 404


@pytest.mark.parametrize("size", ["abc", "1e3", "9" * 31, "12px", " 5"])
def test_a_malformed_size_is_400(api: InMemoryReplica, clips: dict[str, bytes],
                                 size: str) -> None:
    upload(api, clips["covered"])

    assert api.get(f"/covers/{sha(COVER)}?size={size}").status == 400


def test_a_cover_no_live_song_names_is_not_served(api: InMemoryReplica,
                                                  clips: dict[str, bytes]) -> None:
    song = upload(api, clips["covered"])
    assert api.call("DELETE", f"/songs/{song['id']}").status == 204

    assert api.get(f"/covers/{sha(COVER)}").status == 404


def test_a_lost_cover_file_that_no_peer_has_is_503(api: InMemoryReplica,
                                                   clips: dict[str, bytes]) -> None:
    upload(api, clips["covered"])
    (api.service.config.data_dir / "covers" / sha(COVER)).write_bytes(b"rotten")

    answer = api.get(f"/covers/{sha(COVER)}")
    assert answer.status == 503
    # Nothing that would let a cache keep the error in the picture's place.
    assert "immutable" not in answer.headers.get("cache-control", "")
    assert "etag" not in answer.headers


@pytest.mark.parametrize("lost", [True, False])
@pytest.mark.parametrize("by_album", [False, True])
def test_a_cover_that_cannot_be_served_carries_no_validator_or_caching(
    api: InMemoryReplica, tmp_path: Path, lost: bool, by_album: bool
) -> None:
    # A JPEG cut short: Pillow's verify passes it (kept at upload), a resize cannot decode it.
    whole = picture("JPEG", size=(200, 200), color=(1, 2, 3))
    clip = tmp_path / "cut.mp3"
    audio_with_cover(clip, "mp3", None, tags={"title": "Cut", "album": "Cut"})
    embed(clip, "mp3", whole[:len(whole) // 2], mime="image/jpeg")
    song = upload(api, clip.read_bytes())
    if lost:
        (api.service.config.data_dir / "covers" / song["cover_sha256"]).write_bytes(b"rotten")
    path = f"/albums/{song['album_id']}/cover" if by_album else f"/covers/{song['cover_sha256']}"

    answer = api.get(f"{path}?size=50")

    # An error is not the picture: a cache (the browser's) must not keep it as the cover.
    assert answer.status == (503 if lost else 415), answer.body
    assert "etag" not in answer.headers and "cache-control" not in answer.headers


def test_album_cover_is_its_first_song_cover(api: InMemoryReplica,
                                             clips: dict[str, bytes]) -> None:
    song = upload(api, clips["covered"])

    answer = api.get(f"/albums/{song['album_id']}/cover?size=32")

    assert answer.status == 200 and answer.headers["content-type"] == "image/jpeg"
    assert "no-cache" in answer.headers["cache-control"]


def test_album_without_any_cover_is_404(api: InMemoryReplica, clips: dict[str, bytes]) -> None:
    song = upload(api, clips["bare"])

    assert api.get(f"/albums/{song['album_id']}/cover").status == 404


def test_a_user_sets_an_album_cover(api: InMemoryReplica, clips: dict[str, bytes]) -> None:
    song = upload(api, clips["covered"])
    mine = picture("JPEG", size=(30, 30), color=(1, 2, 3))

    answer = api.call("PUT", f"/albums/{song['album_id']}/cover", mine,
                      {"Content-Type": "image/jpeg"})

    assert answer.status == 200, answer.body
    assert answer.json() == {"album": {"id": song["album_id"], "cover_sha256": sha(mine)}}
    assert "x-distpotify-version" in answer.headers
    assert api.get(f"/albums/{song['album_id']}/cover").body == mine
    assert api.get(f"/covers/{sha(mine)}").body == mine
    assert sorted(cover_files(api)) == sorted([sha(COVER), sha(mine)])


def test_a_cover_is_served_by_song_and_album_id_too(api: InMemoryReplica,
                                                    clips: dict[str, bytes]) -> None:
    song = upload(api, clips["covered"])
    covers = api.service.covers
    assert covers is not None
    for cover_id in (song["id"], song["album_id"], sha(COVER)):
        request = DummyRequest([b""])
        body = result_of(Deferred.fromCoroutine(covers.serve(request, cover_id, None)))
        assert body == COVER
    assert result_of(Deferred.fromCoroutine(covers.album_cover(song["album_id"]))) == sha(COVER)
    assert result_of(Deferred.fromCoroutine(covers.album_cover(new_id()))) is None


def snapshot(api: InMemoryReplica) -> tuple[Any, ...]:
    rows = api.db._conn.execute("SELECT COUNT(*) FROM album_covers").fetchone()[0]
    return cover_files(api), rows, api.db.head()


@pytest.mark.parametrize(("body", "status"), [
    (b"", 415), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415), (COVER[:60], 415),
    (picture("BMP"), 415), (b"\0" * (MAX_COVER_BYTES + 1), 413),
])
def test_a_bad_album_cover_is_refused_with_nothing_changed(
    api: InMemoryReplica, clips: dict[str, bytes], body: bytes, status: int
) -> None:
    song = upload(api, clips["covered"])
    before = snapshot(api)

    answer = api.call("PUT", f"/albums/{song['album_id']}/cover", body,
                      {"Content-Type": "image/png"})

    assert answer.status == status, answer.body
    assert answer.json()["error"]
    assert snapshot(api) == before


@pytest.mark.parametrize("album", [
    new_id(), "not-an-id", "..%2F..%2Fcovers", "%00", "A" * 36, "0" * 64,
])
def test_a_cover_for_an_unknown_album_is_404_with_nothing_changed(
    api: InMemoryReplica, clips: dict[str, bytes], album: str
) -> None:
    upload(api, clips["covered"])
    before = snapshot(api)

    answer = api.call("PUT", f"/albums/{album}/cover", picture("PNG"),
                      {"Content-Type": "image/png"})

    assert answer.status in (400, 404), answer.body
    assert snapshot(api) == before


def test_a_follower_sends_album_covers_to_the_leader(tmp_path: Path) -> None:
    follower = InMemoryReplica(tmp_path, leadership=NoLeader())

    answer = follower.call("PUT", f"/albums/{new_id()}/cover", picture("PNG"),
                           {"Content-Type": "image/png"})

    assert answer.status == 421
    assert cover_files(follower) == []


def test_covers_no_song_names_are_collected_at_the_next_start(tmp_path: Path,
                                                              clips: dict[str, bytes]) -> None:
    api = InMemoryReplica(tmp_path)
    song = upload(api, clips["covered"])
    assert api.call("DELETE", f"/songs/{song['id']}").status == 204
    assert cover_files(api) == [sha(COVER)]  # left while running: see store/covers.py
    api.service.db.close()

    restarted = InMemoryReplica(tmp_path)

    assert cover_files(restarted) == []


def test_a_named_cover_survives_a_restart(tmp_path: Path, clips: dict[str, bytes]) -> None:
    api = InMemoryReplica(tmp_path)
    upload(api, clips["covered"])
    api.service.db.close()

    restarted = InMemoryReplica(tmp_path)

    assert cover_files(restarted) == [sha(COVER)]
    assert restarted.get(f"/covers/{sha(COVER)}").body == COVER
