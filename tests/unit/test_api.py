"""The music API through the real Klein resource, in memory: behaviour and every bad input."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from klein.resource import KleinResource
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import ResponseFailed

from distpotify.api.parsing import IdConverter, IndexConverter, chunk_address
from distpotify.api.public import PublicAPI
from distpotify.errors import NotFound
from distpotify.library import Library
from distpotify.model import MAX_INDEX, valid_index, valid_uuid
from distpotify.replication.fetch import ChunkRef
from distpotify.store.chunks import ChunkBatch
from distpotify.store.metadata import MetadataStore
from tests.helpers.api import Answer, InMemoryReplica, LoneLeader, NoLeader, result_of, run_now
from tests.helpers.audio import make_audio
from tests.helpers.sqlite import full_database

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def wav_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    return make_audio(path, "wav", seconds=1, tags={"title": "Tone", "artist": "Osc"}).read_bytes()


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


@pytest.fixture
def song(api: InMemoryReplica, wav_bytes: bytes) -> dict:
    answer = api.upload(wav_bytes)
    assert answer.status == 201, answer.body
    return answer.json()["song"]


def stored_files(api: InMemoryReplica) -> list[str]:
    return sorted(os.listdir(api.chunks.root))


# songs


def test_upload_stores_chunks_that_hash_to_the_registry(api: InMemoryReplica, song: dict,
                                                        wav_bytes: bytes) -> None:
    meta = api.get(f"/songs/{song['id']}").json()

    assert song["title"] == "Tone" and song["sha256"] == hashlib.sha256(wav_bytes).hexdigest()
    assert len(meta["chunks"]) == song["chunk_count"] == len(stored_files(api)) > 1
    for chunk in meta["chunks"]:
        data = (api.chunks.root / f"{song['id']}_{chunk['idx']}").read_bytes()
        assert hashlib.sha256(data).hexdigest() == chunk["sha256"]


def test_query_parameters_override_tags(api: InMemoryReplica, wav_bytes: bytes) -> None:
    answer = api.upload(wav_bytes, query="?title=Better%20Name&year=1999")

    assert answer.status == 201
    assert (answer.json()["song"]["title"], answer.json()["song"]["year"]) == ("Better Name", 1999)


def test_search_finds_by_title_and_paginates(api: InMemoryReplica, wav_bytes: bytes) -> None:
    for n in range(3):
        api.upload(wav_bytes + bytes([n]) * 64, query=f"?title=Track%20{n}&artist=Band")

    page = api.get("/songs?q=track&limit=2&offset=0").json()
    rest = api.get("/songs?artist=band&limit=2&offset=2").json()

    assert page["total"] == 3 and len(page["songs"]) == 2
    assert [s["title"] for s in page["songs"] + rest["songs"]] == ["Track 2", "Track 1", "Track 0"]


def test_search_by_sha256_finds_the_songs_holding_those_bytes(
        api: InMemoryReplica, wav_bytes: bytes) -> None:
    stored = [wav_bytes + bytes([n]) * 64 for n in range(3)]
    for data in stored:
        api.upload(data)
    absent = hashlib.sha256(b"never uploaded").hexdigest()
    asked = [hashlib.sha256(data).hexdigest() for data in stored[:2]]

    one = api.get(f"/songs?sha256={asked[0].upper()}").json()
    two = api.get(f"/songs?sha256={asked[0]},{absent},{asked[1]},{asked[0]}").json()
    none = api.get(f"/songs?sha256={absent}").json()

    assert [s["sha256"] for s in one["songs"]] == [asked[0]] and one["total"] == 1
    assert sorted(s["sha256"] for s in two["songs"]) == sorted(asked) and two["total"] == 2
    assert none == {"songs": [], "total": 0, "next": None}


@pytest.mark.parametrize("query", [
    "sha256=", "sha256=abc", "sha256=" + "g" * 64, "sha256=" + "a" * 65,
    "sha256=" + ",".join(f"{n:064x}" for n in range(101)),
    "sha256=" + "a" * 64 + "&q=x", "sha256=" + "a" * 64 + "&offset=1",
])
def test_search_by_sha256_refuses_what_is_not_a_checksum_list(
        api: InMemoryReplica, query: str) -> None:
    assert_error(api.get(f"/songs?{query}"), 400, "bad_request")


def test_search_sorts_on_the_server(api: InMemoryReplica, wav_bytes: bytes) -> None:
    for n, title in enumerate(["b", "C", "a"]):
        api.upload(wav_bytes + bytes([n]) * 64, query=f"?title={title}")

    titles = [s["title"] for s in api.get("/songs?sort=title").json()["songs"]]
    second = api.get("/songs?sort=title&limit=1&offset=1").json()["songs"]

    assert titles == ["a", "b", "C"]
    assert [s["title"] for s in second] == ["b"]


def test_pages_follow_the_next_cursor_to_the_end(api: InMemoryReplica, wav_bytes: bytes) -> None:
    for n, title in enumerate(["b", "C", "a", "d", "B"]):
        api.upload(wav_bytes + bytes([n]) * 64, query=f"?title={title}")

    titles, path = [], "/songs?sort=title&limit=2"
    while path:
        page = api.get(path).json()
        assert page["total"] == 5
        titles += [s["title"] for s in page["songs"]]
        path = page["next"] and f"/songs?sort=title&limit=2&after={page['next']}"

    assert titles == ["a", "B", "b", "C", "d"]  # "B" and "b" tie: the newer first


def test_search_by_genre_ignores_case_and_accents(api: InMemoryReplica, wav_bytes: bytes) -> None:
    for n, genre in enumerate(["Música Popular", "Rock"]):
        api.upload(wav_bytes + bytes([n]) * 64, query=f"?title=T{n}&genre={genre}")

    page = api.get("/songs?genre=MUSICA").json()

    assert [s["genre"] for s in page["songs"]] == ["Música Popular"] and page["next"] is None


@pytest.mark.parametrize("query", ["q=a%00b", "artist=%00abc", "album=abc%00", "genre=x%00yz",
                                   "q=a%00b&sort=relevance", "title%00=x", "limit=1%00"])
def test_a_query_argument_holding_nul_is_refused(
        api: InMemoryReplica, wav_bytes: bytes, query: str) -> None:
    api.upload(wav_bytes, query="?title=abc&artist=abc&album=abc&genre=xyz")

    answer = api.get(f"/songs?{query}")

    assert answer.status == 400, answer.body
    assert answer.json()["error"] == "bad_request" and "NUL" in answer.json()["message"]


def test_an_upload_whose_tags_hold_nul_is_refused_and_keeps_nothing(
        api: InMemoryReplica, wav_bytes: bytes) -> None:
    answer = api.upload(wav_bytes, query="?title=a%00b")

    assert answer.status == 400, answer.body
    assert api.get("/songs").json()["total"] == 0 and stored_files(api) == []


def test_relevance_ranks_a_title_match_first(api: InMemoryReplica, wav_bytes: bytes) -> None:
    for n, (title, album) in enumerate([("Other", "Blue Train Sessions"), ("Blue Train", "")]):
        api.upload(wav_bytes + bytes([n]) * 64, query=f"?title={title}&album={album}")

    page = api.get("/songs?q=blue%20train&sort=relevance").json()

    assert [s["title"] for s in page["songs"]] == ["Blue Train", "Other"]


@pytest.mark.parametrize("after", ["garbage", "eyJhIjoxfQ", "WyJ0aXRsZSJd"])
def test_a_cursor_this_api_did_not_give_is_400(api: InMemoryReplica, after: str) -> None:
    answer = api.get(f"/songs?sort=newest&after={after}")

    assert_error(answer, 400, "bad_request")
    assert answer.json()["message"].startswith("after:")


@pytest.mark.parametrize(("sort", "keys"), [
    ("duration", [10**30, "1", "2026", "v", "i"]),
    ("artist", ["0a", "0b", -(2**63) - 1, "1", "2026", "v", "i"]),
    ("relevance", [2**63, "2026", "v", "i"]),
])
@pytest.mark.parametrize("q", ["", "&q=untitled"])
def test_a_cursor_holding_a_number_sqlite_cannot_hold_is_400(
    api: InMemoryReplica, song: dict, sort: str, keys: list, q: str
) -> None:
    # The shape of a cursor of the order, a number past 64 bits in it: no cursor given.
    forged = base64.urlsafe_b64encode(json.dumps([sort, *keys]).encode()).decode().rstrip("=")

    answer = api.get(f"/songs?sort={sort}&after={forged}{q}")

    assert_error(answer, 400, "bad_request")
    assert answer.json()["message"].startswith("after:")


@pytest.mark.parametrize(("sort", "text"), [
    ("newest", '["newest","\\ud800","v","i"]'),
    ("title", '["title","0\\udfff","1","2026","v","i"]'),
])
@pytest.mark.parametrize("q", ["", "&q=untitled"])
def test_a_cursor_holding_text_that_is_not_utf8_is_400(
    api: InMemoryReplica, song: dict, sort: str, text: str, q: str
) -> None:
    # JSON escapes a lone surrogate, which no song's key holds and SQLite cannot bind.
    forged = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    answer = api.get(f"/songs?sort={sort}&after={forged}{q}")

    assert_error(answer, 400, "bad_request")
    assert answer.json()["message"].startswith("after:")


def test_patch_edits_fields_and_bumps_the_version(api: InMemoryReplica, song: dict) -> None:
    answer = api.send_json("PATCH", f"/songs/{song['id']}", {"artist": "New", "track": 7})

    edited = answer.json()["song"]
    assert answer.status == 200
    assert (edited["artist"], edited["track"], edited["title"]) == ("New", 7, "Tone")
    assert edited["version"] > song["version"]


def test_delete_tombstones_the_song_and_removes_its_chunks(api: InMemoryReplica,
                                                           song: dict) -> None:
    playlist = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]
    api.send_json("POST", f"/playlists/{playlist['id']}/items", {"song_id": song["id"]})

    answer = api.call("DELETE", f"/songs/{song['id']}")

    assert answer.status == 204
    assert api.get(f"/songs/{song['id']}").status == 404
    assert api.get(f"/songs/{song['id']}/chunks/0").status == 404
    assert stored_files(api) == []
    assert api.get(f"/playlists/{playlist['id']}").json()["playlist"]["items"] == []


# chunk and stream serving


def test_chunk_has_etag_and_honours_range(api: InMemoryReplica, song: dict) -> None:
    whole = api.get(f"/songs/{song['id']}/chunks/0")
    part = api.get(f"/songs/{song['id']}/chunks/0", {"Range": "bytes=100-199"})

    assert whole.status == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == f'"{hashlib.sha256(whole.body).hexdigest()}"'
    assert part.status == 206 and part.body == whole.body[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.body)}"


def test_if_range_with_another_etag_returns_the_whole_chunk(api: InMemoryReplica,
                                                            song: dict) -> None:
    answer = api.get(f"/songs/{song['id']}/chunks/0",
                     {"Range": "bytes=100-199", "If-Range": '"not-this-one"'})

    assert answer.status == 200 and len(answer.body) == 16 * 1024


def test_suffix_range_of_the_stream_returns_the_last_bytes(api: InMemoryReplica, song: dict,
                                                           wav_bytes: bytes) -> None:
    answer = api.get(f"/songs/{song['id']}/stream", {"Range": "bytes=-1000"})

    assert answer.status == 206 and answer.body == wav_bytes[-1000:]
    assert answer.headers["content-type"] == "audio/wav"


def test_unsatisfiable_range_is_416_with_the_size(api: InMemoryReplica, song: dict) -> None:
    answer = api.get(f"/songs/{song['id']}/stream", {"Range": f"bytes={song['size']}-"})

    assert answer.status == 416
    assert answer.headers["content-range"] == f"bytes */{song['size']}"
    assert answer.json()["error"] == "range_not_satisfiable"


def test_missing_chunk_file_is_503_so_the_proxy_tries_elsewhere(api: InMemoryReplica,
                                                                song: dict) -> None:
    (api.chunks.root / f"{song['id']}_1").unlink()
    from_chunk_1 = {"Range": f"bytes={api.chunk_size}-"}

    assert api.get(f"/songs/{song['id']}/chunks/1").status == 503
    # the first chunk a stream sends is checked before the answer starts
    assert api.get(f"/songs/{song['id']}/stream", from_chunk_1).status == 503


def test_a_stream_that_reaches_an_unavailable_chunk_is_torn_not_cut_short(
    api: InMemoryReplica, song: dict
) -> None:
    (api.chunks.root / f"{song['id']}_1").unlink()

    with pytest.raises(ResponseFailed):  # the proxy resumes it elsewhere with Range
        api.get(f"/songs/{song['id']}/stream")
    assert api.guard.counters.missing == 1


def test_a_stream_starts_before_its_later_chunks_are_verified(
    api: InMemoryReplica, song: dict, wav_bytes: bytes
) -> None:
    gate: Deferred[None] = Deferred()
    checked: list[int] = []
    verify = api.guard.ensure

    async def slow_ensure(ref: ChunkRef, recheck: bool = False) -> bool:
        checked.append(ref.idx)
        if ref.idx >= 1:
            await gate
        return await verify(ref, recheck)

    api.guard.ensure = slow_ensure  # type: ignore[method-assign]
    d = api.treq.get(f"http://replica/songs/{song['id']}/stream")
    api.treq.flush()
    response = result_of(d)
    body = api.treq.content(response)
    api.treq.flush()

    assert response.code == 200 and checked == [0, 1]  # answering while chunk 1 is checked
    assert not body.called
    gate.callback(None)
    api.treq.flush()
    assert result_of(body) == wav_bytes and checked == list(range(song["chunk_count"]))


# playlists


def test_playlist_lifecycle(api: InMemoryReplica, song: dict) -> None:
    created = api.send_json("POST", "/playlists", {"name": "Morning"})
    pid = created.json()["playlist"]["id"]

    first = api.send_json("POST", f"/playlists/{pid}/items", {"song_id": song["id"]})
    second = api.send_json("POST", f"/playlists/{pid}/items", {"song_id": song["id"]})
    renamed = api.send_json("PATCH", f"/playlists/{pid}", {"name": "Evening"})
    removed = api.call("DELETE", f"/playlists/{pid}/items/{first.json()['item']['id']}")

    assert created.status == 201 and first.status == second.status == 201
    assert renamed.json()["playlist"]["name"] == "Evening" and removed.status == 204
    items = api.get(f"/playlists/{pid}").json()["playlist"]["items"]
    assert [i["id"] for i in items] == [second.json()["item"]["id"]]
    assert [p["name"] for p in api.get("/playlists").json()["playlists"]] == ["Evening"]
    assert api.call("DELETE", f"/playlists/{pid}").status == 204
    assert api.get(f"/playlists/{pid}").status == 404


def test_create_with_client_id_is_idempotent(api: InMemoryReplica) -> None:
    body = {"id": "5a5e1c8e-3c3b-4e6a-9d7e-2f0b8e1d4c11", "name": "Once"}

    first = api.send_json("POST", "/playlists", body)
    again = api.send_json("POST", "/playlists", body)

    assert (first.status, again.status) == (201, 200)
    assert len(api.get("/playlists").json()["playlists"]) == 1


# bad input: a clear JSON error and nothing changed


def assert_error(answer, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize("data", [b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
                                  b"ID3\x03\x00\x00\x00\x00\x00\x10garbage"])
def test_not_audio_is_415_and_stores_nothing(api: InMemoryReplica, data: bytes) -> None:
    assert_error(api.upload(data, "audio/mpeg"), 415, "unsupported_media")
    assert stored_files(api) == [] and api.db.head().seq == 0


def test_non_audio_content_type_is_415(api: InMemoryReplica, wav_bytes: bytes) -> None:
    assert_error(api.upload(wav_bytes, "text/plain"), 415, "unsupported_media")


def test_multipart_without_file_field_is_400(api: InMemoryReplica) -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nx\r\n--b--\r\n"

    assert_error(api.upload(body, "multipart/form-data; boundary=b"), 400, "bad_request")


def test_a_multipart_upload_with_a_title_field_is_stored_under_it(
        api: InMemoryReplica, wav_bytes: bytes) -> None:
    # The form's fields are read from the body, as the replica's site hands it over (not
    # parsed into query arguments first: tests/helpers/api.py site_treq).
    body = (b"--b\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nFrom the form"
            b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.wav\""
            b"\r\nContent-Type: audio/wav\r\n\r\n" + wav_bytes + b"\r\n--b--\r\n")

    answer = api.upload(body, "multipart/form-data; boundary=b")

    assert answer.status == 201, answer.body
    assert answer.json()["song"]["title"] == "From the form"


def test_malformed_multipart_is_400(api: InMemoryReplica) -> None:
    assert_error(api.upload(b"--b\r\nbroken", "multipart/form-data; boundary=b"),
                 400, "bad_request")


@pytest.mark.parametrize("query", ["?year=nineteen", "?track=-1", "?year=99999999999"])
def test_bad_override_is_400_and_stores_nothing(api: InMemoryReplica, wav_bytes: bytes,
                                                query: str) -> None:
    assert_error(api.upload(wav_bytes, query=query), 400, "bad_request")
    assert stored_files(api) == []


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"name": NaN}', b'{"name": Infinity}',
    b"[" * 100_000, b'{"name": "\\ud800"}',
])
def test_bad_json_is_400(api: InMemoryReplica, body: bytes) -> None:
    answer = api.call("POST", "/playlists", body, {"Content-Type": "application/json"})

    assert_error(answer, 400, "bad_request")
    assert api.get("/playlists").json()["playlists"] == []


@pytest.mark.parametrize("body", [{"name": ""}, {"name": 5}, {"name": "x" * 201},
                                  {"name": "ok", "colour": "red"}, {"name": "ok", "id": "nope"},
                                  {"name": "ok", "id": None}, {"name": "ok", "id": ""},
                                  {"name": "ok", "id": 0}])
def test_bad_playlist_fields_are_400(api: InMemoryReplica, body: dict) -> None:
    assert_error(api.send_json("POST", "/playlists", body), 400, "bad_request")
    assert api.get("/playlists").json()["playlists"] == []


@pytest.mark.parametrize("item_id", [None, "", 0, False])
def test_an_item_id_given_must_be_a_uuid(api: InMemoryReplica, song: dict,
                                         item_id: object) -> None:
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]

    answer = api.send_json("POST", f"/playlists/{pid}/items",
                           {"song_id": song["id"], "id": item_id})

    assert_error(answer, 400, "bad_request")
    assert api.get(f"/playlists/{pid}").json()["playlist"]["items"] == []


def test_an_item_added_again_under_its_id_is_200_and_adds_nothing(api: InMemoryReplica,
                                                                   song: dict) -> None:
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    body = {"song_id": song["id"], "id": "0b8c8cbe-6a39-4a53-9a56-2dc41b0f7c11"}
    first = api.send_json("POST", f"/playlists/{pid}/items", body)
    before = api.get(f"/playlists/{pid}").json()["playlist"]

    again = api.send_json("POST", f"/playlists/{pid}/items", body)

    assert (first.status, again.status) == (201, 200)
    assert again.json()["item"] == first.json()["item"]
    assert api.get(f"/playlists/{pid}").json()["playlist"] == before


def test_an_item_id_of_another_songs_item_is_409_and_changes_nothing(
        api: InMemoryReplica, song: dict, wav_bytes: bytes) -> None:
    other = api.upload(wav_bytes + b"other" * 16, query="?title=Other").json()["song"]
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    item_id = "0b8c8cbe-6a39-4a53-9a56-2dc41b0f7c11"
    api.send_json("POST", f"/playlists/{pid}/items", {"song_id": song["id"], "id": item_id})
    before = api.get(f"/playlists/{pid}").json()["playlist"]

    answer = api.send_json("POST", f"/playlists/{pid}/items",
                           {"song_id": other["id"], "id": item_id})

    assert_error(answer, 409, "conflict")
    assert item_id in answer.json()["message"]
    assert api.get(f"/playlists/{pid}").json()["playlist"] == before


def test_an_empty_song_patch_answers_the_song_and_writes_no_version(api: InMemoryReplica,
                                                                   song: dict) -> None:
    edited = api.send_json("PATCH", f"/songs/{song['id']}", {"title": "Edited"})
    before = api.get(f"/songs/{song['id']}").json()

    answer = api.send_json("PATCH", f"/songs/{song['id']}", {})

    assert answer.status == 200, answer.body
    assert answer.json()["song"] == edited.json()["song"]
    assert answer.headers["x-distpotify-version"] == edited.headers["x-distpotify-version"]
    assert api.get(f"/songs/{song['id']}").json() == before


def test_bad_song_patch_is_400_and_changes_nothing(api: InMemoryReplica, song: dict) -> None:
    answer = api.send_json("PATCH", f"/songs/{song['id']}", {"size": 1, "title": "x"})

    assert_error(answer, 400, "bad_request")
    assert api.get(f"/songs/{song['id']}").json()["title"] == "Tone"


@pytest.mark.parametrize("values", [
    {"title": "\ud800"}, {"track": 1e999}, {"year": -1e999},
])
def test_unstorable_song_values_are_400(api: InMemoryReplica, song: dict,
                                        values: dict) -> None:
    body = json.dumps(values).encode()  # "\ud800" and 1e999 travel as JSON text
    answer = api.call("PATCH", f"/songs/{song['id']}", body,
                      {"Content-Type": "application/json"})

    assert_error(answer, 400, "bad_request")
    assert api.get(f"/songs/{song['id']}").json()["title"] == "Tone"


@pytest.mark.parametrize("position", ["1e999", "-1e999", "1" + "0" * 400])
def test_a_position_that_is_not_a_finite_number_is_400(api: InMemoryReplica, song: dict,
                                                       position: str) -> None:
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    body = f'{{"song_id": "{song["id"]}", "position": {position}}}'.encode()

    answer = api.call("POST", f"/playlists/{pid}/items", body,
                      {"Content-Type": "application/json"})

    assert_error(answer, 400, "bad_request")
    assert api.get(f"/playlists/{pid}").json()["playlist"]["items"] == []


def test_an_empty_override_keeps_the_files_tags(api: InMemoryReplica, wav_bytes: bytes) -> None:
    answer = api.upload(wav_bytes, query="?title=&artist=")

    assert answer.status == 201, answer.body
    assert (answer.json()["song"]["title"], answer.json()["song"]["artist"]) == ("Tone", "Osc")


@pytest.mark.parametrize("part", [
    b'Content-Disposition: form-data; name="title"\r\n\r\n' + b"x" * 10_000,
    b'Content-Disposition: form-data; name="title"\r\nContent-Type: text/plain; charset=nope'
    b"\r\n\r\nx",
    b'Content-Disposition: form-data; name="title"\r\n\r\n\xff\xfe',
])
def test_a_bad_multipart_text_field_is_400_and_stores_nothing(
    api: InMemoryReplica, wav_bytes: bytes, part: bytes
) -> None:
    body = (b"--b\r\n" + part + b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\";"
            b' filename="t.wav"\r\nContent-Type: audio/wav\r\n\r\n' + wav_bytes + b"\r\n--b--\r\n")

    assert_error(api.upload(body, "multipart/form-data; boundary=b"), 400, "bad_request")
    assert stored_files(api) == [] and api.db.head().seq == 0


def test_an_upload_that_cannot_be_recorded_leaves_no_chunk_file(
    api: InMemoryReplica, wav_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_record(*args: object) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(api.library, "_record", failing_record)

    assert api.upload(wav_bytes).status == 500
    assert stored_files(api) == [] and api.db.head().seq == 0


@pytest.mark.parametrize("where", ["chunks", "row"])
def test_an_upload_that_finds_the_disk_full_is_507_and_leaves_nothing(
    api: InMemoryReplica, wav_bytes: bytes, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "chunks":
        def full(self: object, idx: int, data: bytes) -> str:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(ChunkBatch, "add", full)
    else:
        async def failing_write(*args: object) -> None:
            raise full_database()
        monkeypatch.setattr(api.library.store, "write", failing_write)

    answer = api.upload(wav_bytes)

    assert_error(answer, 507, "insufficient_storage")
    assert "disk is full" in answer.json()["message"]
    assert stored_files(api) == [] and api.db.head().seq == 0


def test_an_upload_whose_client_went_away_is_finished_whole(
    api: InMemoryReplica, wav_bytes: bytes
) -> None:
    pending: list[tuple[object, tuple, dict]] = []

    def later(f: object, *args: object, **kwargs: object) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        pending.append((f, args, kwargs, d))  # type: ignore[arg-type]
        return d

    api.library._blocking = later  # type: ignore[method-assign]
    content = io.BytesIO(wav_bytes)
    answer = api.library.upload(content, "audio/wav", {})
    answer.addErrback(lambda f: f.trap(CancelledError))
    answer.cancel()  # the client is gone while the body is parsed
    while pending:
        f, args, kwargs, d = pending.pop(0)  # type: ignore[misc]
        d.callback(f(*args, **kwargs))  # type: ignore[operator]

    assert api.get("/songs").json()["total"] == 1
    assert len(stored_files(api)) == api.get("/songs").json()["songs"][0]["chunk_count"]


@pytest.mark.parametrize("key", [b"", b'Idempotency-Key: "u-1"\r\n'])
def test_an_upload_whose_connection_is_lost_while_it_is_parsed_is_finished_whole(
    api: InMemoryReplica, tmp_path: Path, key: bytes
) -> None:
    """twisted.web closes a request's body when its connection is lost: the upload owns the
    body it was handed, so the body it is still hashing (for its key) or parsing stays open,
    and the song is stored (it failed with "I/O operation on closed file", found by the
    random lab run). Two seconds of WAV: a body twisted.web spools to a temp file."""
    wav_bytes = make_audio(tmp_path / "long.wav", "wav", seconds=2).read_bytes()
    assert len(wav_bytes) > 100_000
    pending: list[tuple[Any, tuple[Any, ...], dict[str, Any], Deferred[object]]] = []

    def later(f: Any, *args: Any, **kwargs: Any) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        pending.append((f, args, kwargs, d))
        return d

    api.library._blocking = later  # type: ignore[method-assign]
    channel = server.Site(api.root).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /songs HTTP/1.1\r\nHost: replica\r\nContent-Type: audio/wav\r\n"
                         b"Content-Length: %d\r\n%s\r\n" % (len(wav_bytes), key) + wav_bytes)
    assert pending  # the body is being hashed (keyed) or parsed, off the reactor
    channel.connectionLost(Failure(ConnectionDone()))
    while pending:
        f, args, kwargs, d = pending.pop(0)
        d.callback(f(*args, **kwargs))

    assert api.get("/songs").json()["total"] == 1
    assert len(stored_files(api)) == api.get("/songs").json()["songs"][0]["chunk_count"]


def test_item_for_unknown_song_is_404(api: InMemoryReplica) -> None:
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]

    assert_error(api.send_json("POST", f"/playlists/{pid}/items", {"song_id": MISSING}),
                 404, "not_found")


@pytest.mark.parametrize("path", [
    f"/songs/{MISSING}", "/songs/not-a-uuid", f"/songs/{MISSING.upper()}",
    f"/songs/{MISSING}/chunks/0", f"/songs/{MISSING}/stream", "/songs/x/chunks/0",
    "/playlists/../../etc", f"/playlists/{MISSING}", "/nowhere",
])
def test_unknown_or_malformed_ids_are_404(api: InMemoryReplica, path: str) -> None:
    assert_error(api.get(path), 404, "not_found")


@pytest.mark.parametrize("idx", ["-1", "1e3", "0x1", "99999999999999999999", "%2E%2E",
                                 "%C2%B2", "0" * 5000])
def test_bad_chunk_index_is_404(api: InMemoryReplica, song: dict, idx: str) -> None:
    assert_error(api.get(f"/songs/{song['id']}/chunks/{idx}"), 404, "not_found")


# hostile path segments: refused before the handler runs, on every route with a parameter

# Each route with its parameters; a hostile form replaces one parameter, the others are real.
ROUTES = [
    ("GET", "/songs/{song}"),
    ("PATCH", "/songs/{song}"),
    ("DELETE", "/songs/{song}"),
    ("GET", "/songs/{song}/stream"),
    ("GET", "/songs/{song}/chunks/{index}"),
    ("GET", "/playlists/{playlist}"),
    ("PATCH", "/playlists/{playlist}"),
    ("DELETE", "/playlists/{playlist}"),
    ("POST", "/playlists/{playlist}/items"),
    ("DELETE", "/playlists/{playlist}/items/{item}"),
]

# Forms of a real id (as the URL carries them): a lenient parser would find the resource.
HOSTILE_IDS: dict[str, Callable[[str], str]] = {
    "uppercase": str.upper,
    "no hyphens": lambda i: i.replace("-", ""),
    "braces": lambda i: "{" + i + "}",
    "urn": lambda i: "urn:uuid:" + i,
    "one short": lambda i: i[:-1],
    "one long": lambda i: i + "0",
    "fullwidth digit": lambda i: "\uff10" + i[1:],
    "leading space": lambda i: "%20" + i,
    "encoded slash": lambda i: i[:8] + "%2F" + i[9:],
    "nul": lambda i: i + "%00",
    "empty": lambda i: "",
    "dot": lambda i: ".",
    "dots": lambda i: "..",
    "encoded dots": lambda i: "%2E%2E",
    "huge": lambda i: i * 200,
    "not utf-8": lambda i: "%FF" + i[1:],
}

# Forms of chunk index 1.
HOSTILE_INDEXES: dict[str, Callable[[str], str]] = {
    "leading zero": lambda i: "0" + i,
    "plus": lambda i: "+" + i,
    "minus": lambda i: "-" + i,
    "leading space": lambda i: "%20" + i,
    "decimal point": lambda i: i + ".0",
    "exponent": lambda i: i + "e0",
    "hex": lambda i: "0x" + i,
    "superscript": lambda i: "\u00b9",
    "arabic-indic": lambda i: "\u0661",
    "fullwidth": lambda i: "\uff11",
    "encoded superscript": lambda i: "%C2%B9",
    "2**31": lambda i: str(2**31),
    "huge": lambda i: "9" * 30,
    "thousands of zeros": lambda i: "0" * 5000 + i,
    "empty": lambda i: "",
    "dot": lambda i: ".",
    "dots": lambda i: "..",
    "encoded dots": lambda i: "%2E%2E",
    "encoded slash": lambda i: i + "%2F0",
    "not utf-8": lambda i: "%FF",
}

# A body each write would accept if its path were good.
BODIES = {
    ("PATCH", "/songs/{song}"): {"title": "Renamed"},
    ("PATCH", "/playlists/{playlist}"): {"name": "Renamed"},
    ("POST", "/playlists/{playlist}/items"): {"song_id": "{song}"},
}


def hostile_segments() -> Iterator[Any]:
    for method, template in ROUTES:
        for name in re.findall(r"{(\w+)}", template):
            forms = HOSTILE_INDEXES if name == "index" else HOSTILE_IDS
            for label, form in forms.items():
                yield pytest.param(method, template, name, form,
                                   id=f"{method} {template} {name}={label}")


@pytest.fixture
def real(api: InMemoryReplica, song: dict) -> dict[str, str]:
    """The real parameters of every route: a song, its chunk 1, a playlist holding it."""
    playlist = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    item = api.send_json("POST", f"/playlists/{playlist}/items", {"song_id": song["id"]})
    return {"song": song["id"], "index": "1", "playlist": playlist,
            "item": item.json()["item"]["id"]}


@pytest.mark.parametrize(("method", "template", "name", "form"), list(hostile_segments()))
def test_a_hostile_path_segment_is_refused_and_changes_nothing(
    api: InMemoryReplica, real: dict[str, str], method: str, template: str, name: str,
    form: Callable[[str], str],
) -> None:
    values = dict(real, **{name: form(real[name])})
    body = BODIES.get((method, template))
    data = json.dumps(body).replace("{song}", real["song"]).encode() if body else None
    before = (api.db.head(), stored_files(api))

    answer = api.call(method, template.format(**values), data,
                      {"Content-Type": "application/json"})

    if "%FF" in values[name]:
        assert_error(answer, 400, "bad_request")
    else:
        assert_error(answer, 404, "not_found")
    assert (api.db.head(), stored_files(api)) == before


@pytest.mark.parametrize("path", [
    "/songs/{song}", "/songs/%{hex}{tail}", "/songs/{song}/chunks/%31", "/songs/{song}/chunks/1",
])
def test_a_percent_encoded_canonical_segment_names_the_same_resource(
    api: InMemoryReplica, real: dict[str, str], path: str
) -> None:
    song = real["song"]
    answer = api.get(path.format(song=song, hex=f"{ord(song[0]):02X}", tail=song[1:]))

    assert answer.status == 200, answer.body


def via_klein_alone(api: InMemoryReplica, path: str) -> Answer:
    """``path`` served by PublicAPI's Klein routes, without ReplicaRoot's chunk fast path."""
    klein = PublicAPI(api.library, api.guard, lambda: Deferred(), run_now).app.resource()
    treq = StubTreq(klein)
    d = treq.get("http://replica" + path)
    treq.flush()
    response = result_of(d)
    body = treq.content(response)
    treq.flush()
    return Answer(response.code, {}, result_of(body))


@pytest.mark.parametrize("form", [str, *HOSTILE_INDEXES.values()])
def test_the_chunk_fast_path_takes_what_the_klein_route_takes(
    api: InMemoryReplica, real: dict[str, str], form: Callable[[str], str]
) -> None:
    path = f"/songs/{real['song']}/chunks/{form('1')}"

    fast, routed = api.get(path), via_klein_alone(api, path)

    assert fast.status == routed.status
    assert fast.status != 200 or fast.body == routed.body


def test_a_canonical_chunk_path_is_served_without_klein(
    api: InMemoryReplica, real: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def routed(self: KleinResource, request: object) -> None:
        raise AssertionError(f"{request} went through Klein's routing")

    monkeypatch.setattr(KleinResource, "render", routed)

    assert api.get(f"/songs/{real['song']}/chunks/1").status == 200


LETTERED = "5a5e1c8e-3c3b-4e6a-9d7e-2f0b8e1d4c11"
SEGMENTS = [
    "0", "1", "7", "10", "255", "256", "2147483647", "2147483648", "9999999999", "99999999999",
    "007", "00", "+1", "-1", " 1", "1 ", "1.0", "1e3", "0x1", "\u00b2", "\u0661", "\uff11", "",
    "0" * 5000, MISSING, LETTERED, LETTERED.upper(), LETTERED.replace("-", ""),
    "{" + LETTERED + "}", "urn:uuid:" + LETTERED, LETTERED[:-1], LETTERED + "0",
    "\uff10" + LETTERED[1:], " " + LETTERED, LETTERED + "\n", "not-a-uuid", ".", "..",
]


@pytest.mark.parametrize("text", SEGMENTS)
def test_the_id_route_rule_is_the_model_rule(text: str) -> None:
    matched = re.fullmatch(IdConverter.regex, text) is not None

    assert matched == valid_uuid(text)
    if matched:
        assert IdConverter(None).to_python(text) == text  # type: ignore[arg-type]


@given(st.one_of(
    st.uuids().map(str), st.uuids().map(lambda u: u.hex), st.uuids().map(lambda u: str(u).upper()),
    st.text(alphabet="0123456789abcdefABCDEF-{}:urnid \n\uff10", max_size=46), st.text(max_size=40),
))
def test_a_valid_uuid_is_the_text_the_uuid_module_prints_for_it(text: str) -> None:
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        canonical = False

    assert valid_uuid(text) == canonical


@pytest.mark.parametrize("text", SEGMENTS)
def test_the_chunk_fast_path_takes_a_path_by_the_model_rules(text: str) -> None:
    by_index = chunk_address(f"/songs/{MISSING}/chunks/{text}".encode())
    by_id = chunk_address(f"/songs/{text}/chunks/0".encode())

    assert by_index == ((MISSING, int(text)) if valid_index(text) else None)
    assert by_id == ((text, 0) if valid_uuid(text) else None)


@pytest.mark.parametrize("text", SEGMENTS)
def test_the_index_route_rule_is_the_model_rule(text: str) -> None:
    matched = re.fullmatch(IndexConverter.regex, text) is not None
    valid = matched and int(text) < MAX_INDEX

    assert valid == valid_index(text)
    if valid:
        assert IndexConverter(None).to_python(text) == int(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", ["0", "-5", "abc", "100000", "%C2%B2", "0" * 5000])
def test_bad_pagination_is_400(api: InMemoryReplica, limit: str) -> None:
    assert_error(api.get(f"/songs?limit={limit}"), 400, "bad_request")


def test_an_unknown_sort_is_400(api: InMemoryReplica) -> None:
    answer = api.get("/songs?sort=loudness%20DESC")

    assert_error(answer, 400, "bad_request")
    assert "newest, title, artist, album, duration" in answer.json()["message"]


def test_wrong_method_is_405(api: InMemoryReplica) -> None:
    assert_error(api.call("PUT", "/songs"), 405, "method_not_allowed")


def test_write_to_a_non_leader_is_421_naming_no_leader(tmp_path: Path, wav_bytes: bytes) -> None:
    follower = InMemoryReplica(tmp_path, leadership=NoLeader())

    assert_error(follower.upload(wav_bytes), 421, "not_leader")
    assert stored_files(follower) == []


def test_every_answer_names_the_replica(api: InMemoryReplica) -> None:
    assert api.get("/status").headers["x-served-by"] == "1"
    assert api.get("/nowhere").headers["x-served-by"] == "1"


def test_an_item_added_as_its_song_is_deleted_never_outlives_the_song(
    api: InMemoryReplica, song: dict
) -> None:
    """The database thread runs one call at a time, in order. A delete that arrives while an
    add is under way must not leave an item pointing at the deleted song: the add checks the
    song and writes the item in one call."""
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    queue: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def queued(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queue.append((lambda: f(*args, **kwargs), (), d))
        return d

    library = Library(MetadataStore(api.db, queued), api.chunks, run_now, api.clock,
                      LoneLeader(), api.chunk_size)

    def step() -> None:
        call, _, d = queue.pop(0)
        try:
            d.callback(call())
        except Exception:
            d.errback()

    adding = Deferred.fromCoroutine(library.add_item(pid, {"song_id": song["id"]}))
    adding.addErrback(lambda f: f.trap(NotFound))
    step()  # the add's first call has run: with separate checks, the song was seen live
    deleting = Deferred.fromCoroutine(library.delete_song(song["id"]))
    while queue:
        step()

    assert deleting.called and adding.called
    items = api.get(f"/playlists/{pid}").json()["playlist"]["items"]
    assert items == []


def test_a_write_is_answered_once_it_is_acknowledged(api: InMemoryReplica) -> None:
    """Semi-sync: the write is durable here at once, and answered only once ``acknowledged``
    (followers holding it, or the timeout) fires."""
    waiting: list[Deferred[None]] = []

    def acknowledged() -> Deferred[None]:
        waiting.append(Deferred())
        return waiting[-1]

    library = Library(MetadataStore(api.db, run_now), api.chunks, run_now, api.clock,
                      LoneLeader(), api.chunk_size, acknowledged=acknowledged)

    creating = Deferred.fromCoroutine(library.create_playlist({"name": "held"}))

    assert not creating.called and len(waiting) == 1
    assert [p["name"] for p in api.get("/playlists").json()["playlists"]] == ["held"]
    waiting[0].callback(None)
    outcome = result_of(creating)
    assert (outcome.body["playlist"]["name"], outcome.status) == ("held", 201)
