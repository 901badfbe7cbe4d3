"""Idempotency keys through the real API in memory: a key is applied once and answered again,
a key reused for another request is 422, records take ids derived from the key (so two
leaders applying one write merge into one record), and keys expire by the replicated
watermark, never to come back."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred

from distpotify.errors import BadRequest
from distpotify.idempotency import (
    NAMESPACE,
    IdempotencyKey,
    key_row_ids,
    key_row_time,
    parse_key,
    request_digest,
)
from distpotify.keytime import new_key
from distpotify.library import Library
from distpotify.model import IDEMPOTENCY_KEYS, ZERO, Op, Version
from distpotify.replication.client import op_from_json
from distpotify.replication.receive import validate_op
from distpotify.store.metadata import MetadataDB, MetadataStore, bucket_of, row_ops
from distpotify.store.schema import row_hash, xor_digest
from tests.helpers.api import Answer, InMemoryReplica, LoneLeader, run_now
from tests.helpers.audio import make_audio

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def wav_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    return make_audio(path, "wav", seconds=1, tags={"title": "Tone"}).read_bytes()


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path / "a")


def keyed(api: InMemoryReplica, method: str, path: str, value: Any, key: str) -> Answer:
    return api.call(method, path, json.dumps(value).encode(),
                    {"Content-Type": "application/json", "Idempotency-Key": key})


def rows(db: MetadataDB, table: str) -> list[dict[str, Any]]:
    return [dict(r) for r in db._conn.execute(f"SELECT * FROM {table}")]


# the header


@pytest.mark.parametrize(("header", "key"), [
    (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    (b"8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    (b'"a \\"quoted\\" key \\\\"', 'a "quoted" key \\'),
    (b"  spaced  ", "spaced"),
    (b"x" * 255, "x" * 255),
    (b'"' + b"x" * 253 + b'"', "x" * 253),
    (b"  " + b"x" * 255 + b"  ", "x" * 255),
])
def test_a_key_is_an_sf_string_or_bare_text(header: bytes, key: str) -> None:
    assert parse_key(header) == key


@pytest.mark.parametrize("header", [
    b"", b'""', b"x" * 256, b'"' + b"x" * 256 + b'"', "clé".encode(), b"a\x01b",
    # The header is at most 255 characters as sent (docs/openapi.yaml), quotes included.
    b'"' + b"x" * 254 + b'"', b'"' + b"x" * 255 + b'"', b'"' + b'\\"' * 127 + b'"',
    b'"a\\nb"', b'"a"b"',
])
def test_a_malformed_key_is_refused(header: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_key(header)


def test_a_key_names_its_row_and_its_request_names_its_records() -> None:
    body = io.BytesIO(b'{"name": "x"}')
    one = IdempotencyKey("k", request_digest(b"POST", b"/playlists", body))
    other = IdempotencyKey("k", request_digest(b"POST", b"/playlists", io.BytesIO(b"{}")))
    moved = IdempotencyKey("k", request_digest(b"POST", b"/playlists/x", body))

    assert body.tell() == 0  # left where a handler reads it
    assert one.id == other.id == moved.id
    assert len({one.record_id(), other.record_id(), moved.record_id()}) == 3
    assert one.record_id() == IdempotencyKey("k", one.request).record_id()


@pytest.mark.parametrize("text", [
    "k", "user-1 k", "ключ", "a" * 255, "01a24825-6cd5-7833-bff3-96c59b52c16b",
    "7 01A24825-6CD5-7833-BFF3-96C59B52C16B", "x\ny",
])
def test_derived_ids_are_the_uuid_modules_uuid5(text: str) -> None:
    """Ids are derived without the uuid module's objects, for speed; every replica must
    derive the ones it gave (and older code gave), bit for bit."""
    request = hashlib.sha256(text.encode()).hexdigest()
    key = IdempotencyKey(text, request)
    hashed = uuid.uuid5(NAMESPACE, text)

    assert key.record_id() == str(uuid.uuid5(NAMESPACE, f"{text}\n{request}"))
    assert key.ids[1] in (None, str(hashed))
    if key.ids[1] is None:
        assert key.id == str(hashed)
    else:  # a UUIDv7 key: its time, then the UUIDv5's low 74 bits, as version 8
        row = uuid.UUID(key.id)
        assert row.version == 8 and row.variant == uuid.RFC_4122
        assert row.int >> 80 == uuid.UUID(text.rpartition(" ")[2]).int >> 80
        low = (1 << 62) - 1
        assert row.int & low == hashed.int & low
        assert row.int >> 64 & 0xFFF == hashed.int >> 64 & 0xFFF


# The proxy's keys: UUIDv7, stored in time order

PROXY_KEY = "01a24825-6cd5-7833-bff3-96c59b52c16b"  # a UUIDv7 of 2026-12-05 21:39:01.973
V7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_a_key_the_proxy_makes_is_a_uuid7_of_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    keys = [new_key() for _ in range(100)]
    after = time.time_ns() // 1_000_000

    assert len(set(keys)) == 100
    for key in keys:
        assert V7.fullmatch(key), key
        made = uuid.UUID(key)
        assert made.version == 7 and made.variant == uuid.RFC_4122
        assert before <= made.int >> 80 <= after


def test_the_row_of_a_uuid7_key_begins_with_the_keys_time() -> None:
    row = key_row_ids(PROXY_KEY)[0]
    scoped = key_row_ids(f"user-1 {PROXY_KEY}")[0]

    assert uuid.UUID(row).version == 8 and uuid.UUID(row).variant == uuid.RFC_4122
    assert row[:13] == scoped[:13] == PROXY_KEY[:13]  # the key's 48 bits of time
    assert key_row_time(row) == key_row_time(scoped) == 1796506741973
    # Derived, not drawn: the same on every leader, another for another account.
    assert key_row_ids(PROXY_KEY)[0] == row == IdempotencyKey(PROXY_KEY, "r").id
    assert scoped != row and key_row_ids(f"user-2 {PROXY_KEY}")[0] != scoped
    upper = key_row_ids(PROXY_KEY.upper())[0]
    assert upper != row and upper[:13] == row[:13]


def test_rows_of_later_keys_sort_after_and_a_seconds_rows_share_a_bucket() -> None:
    times = [1796506741973, 1796506741974, 1796506741999, 1796506742000, 1796506742999]
    ids = [key_row_ids(f"u {uuid7_of(ms)}")[0] for ms in times]

    assert ids == sorted(ids) and [key_row_time(i) for i in ids] == times
    buckets = [bucket_of("idempotency", i) for i in ids]
    assert buckets[:3] == [1796506741 % 256] * 3 and buckets[3:] == [1796506742 % 256] * 2


def uuid7_of(ms: int) -> str:
    return str(uuid.UUID(int=ms << 80 | 0x7ABC << 64 | 0x8DEF << 48 | 0x123456789ABC))


@pytest.mark.parametrize("key", [
    "k", "user-1 k", "0b7b1d1e-5c2f-4e4a-9f3b-6d1c2b3a4f5e",  # a UUIDv4: no time in it
    "01a24825-6cd5-7833-bff3-96c59b52c16",  # one digit short
    "01a24825-6cd5-7833-cff3-96c59b52c16b",  # version 7, but not RFC 9562's variant
    f"{PROXY_KEY} trailing",
])
def test_a_key_with_no_time_keeps_the_uuid5_row_and_hashed_bucket_it_had(key: str) -> None:
    row = key_row_ids(key)[0]

    assert row == str(uuid.uuid5(NAMESPACE, key)) and key_row_time(row) is None
    assert bucket_of("idempotency", row) == hashlib.sha256(
        f"idempotency/{row}".encode()).digest()[0] % 256


def test_a_key_stored_by_older_code_is_still_one_write_when_sent_again(
    api: InMemoryReplica,
) -> None:
    # Older code stored a UUIDv7 key's row under the key's UUIDv5, in its hashed bucket.
    first = keyed(api, "POST", "/playlists", {"name": "Morning"}, PROXY_KEY)
    [row] = rows(api.db, "idempotency")
    legacy = str(uuid.uuid5(NAMESPACE, PROXY_KEY))
    api.db._conn.execute("UPDATE idempotency SET id = ?, bucket = ?",
                         (legacy, bucket_of("idempotency", legacy)))
    head = api.db.head()

    again = keyed(api, "POST", "/playlists", {"name": "Morning"}, PROXY_KEY)
    other = keyed(api, "POST", "/playlists", {"name": "Evening"}, PROXY_KEY)

    assert again.status == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body and other.status == 422
    assert api.db.head() == head and [r["id"] for r in rows(api.db, "idempotency")] == [legacy]
    assert row["id"] == key_row_ids(PROXY_KEY)[0] != legacy


def test_a_row_older_code_hashed_to_a_bucket_moves_to_its_seconds_on_open(
    api: InMemoryReplica, tmp_path: Path
) -> None:
    keyed(api, "POST", "/playlists", {"name": "Morning"}, PROXY_KEY)
    path = tmp_path / "follower.sqlite3"
    follower = MetadataDB(path, node_id=3)
    follower.apply_ops(api.db.ops_after(ZERO))
    # What a follower of older code made of the same op: the row, and its hash, in the
    # bucket its id hashes to.
    [row] = rows(follower, "idempotency")
    hashed = hashlib.sha256(f"idempotency/{row['id']}".encode()).digest()[0] % 256
    change = row_hash("idempotency", row["id"], row["field_versions"])
    xor_digest(follower._conn, row["bucket"], change)
    xor_digest(follower._conn, hashed, change)
    follower._conn.execute("UPDATE idempotency SET bucket = ?", (hashed,))
    assert hashed != row["bucket"] and follower.digest() != api.db.digest()
    follower.close()

    upgraded = MetadataDB(path, node_id=3)
    upgraded.apply_ops(api.db.ops_after(ZERO))  # pushed again, or pulled by anti-entropy

    assert [r["bucket"] for r in rows(upgraded, "idempotency")] == [row["bucket"]]
    assert upgraded.digest() == api.db.digest()
    assert upgraded.ops_after(ZERO) == api.db.ops_after(ZERO)  # each op once, with its key
    upgraded.close()


def test_a_malformed_row_id_has_no_time() -> None:
    assert key_row_time("zzzzzzzz-zzzz-8zzz-8zzz-zzzzzzzzzzzz") is None
    assert key_row_time("01a24825-6cd5-8833") is None


# one key, one effect


@pytest.mark.parametrize("key", ["k1", PROXY_KEY])
def test_a_keyed_create_sent_again_is_answered_again_and_applied_once(
    api: InMemoryReplica, key: str
) -> None:
    first = keyed(api, "POST", "/playlists", {"name": "Morning"}, key)
    head = api.db.head()

    again = keyed(api, "POST", "/playlists", {"name": "Morning"}, key)

    assert first.status == again.status == 201
    assert again.json() == first.json()
    assert again.headers["x-distpotify-version"] == first.headers["x-distpotify-version"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert api.db.head() == head  # nothing written the second time
    assert len(api.get("/playlists").json()["playlists"]) == 1
    # The answer's body is the text the key row stores, byte for byte, both times.
    [stored] = rows(api.db, "idempotency")
    assert first.body == again.body == stored["body"].encode()


def test_a_key_sent_with_another_request_is_422_and_changes_nothing(
    api: InMemoryReplica,
) -> None:
    keyed(api, "POST", "/playlists", {"name": "Morning"}, "k1")
    head = api.db.head()

    other_body = keyed(api, "POST", "/playlists", {"name": "Evening"}, "k1")
    other_path = keyed(api, "PATCH", f"/playlists/{MISSING}", {"name": "Morning"}, "k1")

    for answer in (other_body, other_path):
        assert answer.status == 422 and answer.json()["error"] == "key_reused", answer.body
    assert api.db.head() == head
    assert [p["name"] for p in api.get("/playlists").json()["playlists"]] == ["Morning"]


def test_a_replayed_delete_answers_204_again_not_404(api: InMemoryReplica) -> None:
    pid = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]

    first = api.call("DELETE", f"/playlists/{pid}", headers={"Idempotency-Key": "d"})
    again = api.call("DELETE", f"/playlists/{pid}", headers={"Idempotency-Key": "d"})
    unkeyed = api.call("DELETE", f"/playlists/{pid}")

    assert (first.status, again.status, unkeyed.status) == (204, 204, 404)
    assert again.body == b"" and again.headers["idempotent-replayed"] == "true"


def test_an_error_is_not_stored_so_the_same_key_may_succeed_later(
    api: InMemoryReplica, wav_bytes: bytes
) -> None:
    song = api.upload(wav_bytes).json()["song"]
    path = f"/playlists/{MISSING}/items"

    refused = keyed(api, "POST", path, {"song_id": song["id"]}, "add")
    api.send_json("POST", "/playlists", {"name": "late", "id": MISSING})
    added = keyed(api, "POST", path, {"song_id": song["id"]}, "add")

    assert refused.status == 404
    assert added.status == 201 and "idempotent-replayed" not in added.headers


def test_a_failed_keyed_write_leaves_no_op_and_no_key(api: InMemoryReplica) -> None:
    head = api.db.head()

    answer = keyed(api, "POST", f"/playlists/{MISSING}/items", {"song_id": MISSING}, "k")

    assert answer.status == 404
    assert api.db.head() == head and api.db.written().seq == head.seq
    assert rows(api.db, "idempotency") == []


def test_a_malformed_key_is_400_and_changes_nothing(api: InMemoryReplica) -> None:
    answer = keyed(api, "POST", "/playlists", {"name": "x"}, "clé")

    assert answer.status == 400 and answer.json()["error"] == "bad_request"
    assert api.db.head() == ZERO


# versions


def test_every_write_answer_carries_the_version_it_made(api: InMemoryReplica) -> None:
    created = api.send_json("POST", "/playlists", {"name": "p"})
    playlist = created.json()["playlist"]
    renamed = api.send_json("PATCH", f"/playlists/{playlist['id']}", {"name": "q"})
    deleted = api.call("DELETE", f"/playlists/{playlist['id']}")

    versions = [Version.decode(a.headers["x-distpotify-version"])
                for a in (created, renamed, deleted)]
    assert versions[0].encode() == playlist["version"]
    assert versions[1].encode() == renamed.json()["playlist"]["version"]
    assert versions[0] < versions[1] < versions[2] == api.db.head()


def test_a_write_that_changes_nothing_answers_the_head(
    api: InMemoryReplica, wav_bytes: bytes
) -> None:
    first = api.upload(wav_bytes)
    api.send_json("POST", "/playlists", {"name": "later"})

    duplicate = api.upload(wav_bytes)

    assert duplicate.status == 200
    assert duplicate.headers["x-distpotify-version"] == api.db.head().encode()
    assert first.headers["x-distpotify-version"] < duplicate.headers["x-distpotify-version"]


# two leaders, one write


def other_leader(tmp_path: Path) -> InMemoryReplica:
    """A second leader, of a later epoch: what the proxy retries on after a failover."""
    replica = InMemoryReplica(tmp_path / "b")
    replica.db.begin_leading(2)
    return replica


def merge_into(target: InMemoryReplica, source: InMemoryReplica) -> None:
    target.db.apply_ops(source.db.ops_after(ZERO))


@pytest.mark.parametrize("key", ["once", PROXY_KEY])
def test_one_keyed_create_applied_by_two_leaders_merges_into_one_record(
    api: InMemoryReplica, tmp_path: Path, key: str
) -> None:
    second = other_leader(tmp_path)

    on_first = keyed(api, "POST", "/playlists", {"name": "M"}, key).json()["playlist"]
    on_second = keyed(second, "POST", "/playlists", {"name": "M"}, key).json()["playlist"]
    merge_into(api, second)
    merge_into(second, api)

    assert on_first["id"] == on_second["id"]
    for replica in (api, second):
        assert [p["id"] for p in replica.get("/playlists").json()["playlists"]] == [
            on_first["id"]]
        assert len(rows(replica.db, "idempotency")) == 1
    assert api.get("/sync/digest").json() == second.get("/sync/digest").json()


def test_one_keyed_item_add_applied_by_two_leaders_is_one_item(
    api: InMemoryReplica, tmp_path: Path, wav_bytes: bytes
) -> None:
    second = other_leader(tmp_path)
    song = api.upload(wav_bytes).json()["song"]
    api.send_json("POST", "/playlists", {"name": "p", "id": MISSING})
    merge_into(second, api)
    path = f"/playlists/{MISSING}/items"

    first = keyed(api, "POST", path, {"song_id": song["id"]}, "add").json()["item"]
    again = keyed(second, "POST", path, {"song_id": song["id"]}, "add").json()["item"]
    merge_into(api, second)

    assert first["id"] == again["id"]
    assert [i["id"] for i in api.get(f"/playlists/{MISSING}").json()["playlist"]["items"]] == [
        first["id"]]


def test_one_keyed_upload_applied_by_two_leaders_is_one_song(
    api: InMemoryReplica, tmp_path: Path, wav_bytes: bytes
) -> None:
    second = other_leader(tmp_path)
    headers = {"Content-Type": "audio/wav", "Idempotency-Key": "up"}

    first = api.call("POST", "/songs?title=T", wav_bytes, headers).json()["song"]
    again = second.call("POST", "/songs?title=T", wav_bytes, headers).json()["song"]
    merge_into(api, second)

    assert first["id"] == again["id"]
    assert [s["id"] for s in api.get("/songs").json()["songs"]] == [first["id"]]


def test_a_replayed_upload_writes_no_chunk_file(
    api: InMemoryReplica, wav_bytes: bytes
) -> None:
    headers = {"Content-Type": "audio/wav", "Idempotency-Key": "up"}
    first = api.call("POST", "/songs", wav_bytes, headers)
    files = sorted(p.name for p in api.chunks.root.iterdir())
    ingested: list[object] = []
    api.library._blocking = lambda f, *a, **k: (  # type: ignore[method-assign]
        ingested.append(f), run_now(f, *a, **k))[1]

    again = api.call("POST", "/songs", wav_bytes, headers)

    assert again.status == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert sorted(p.name for p in api.chunks.root.iterdir()) == files
    assert {"parse_body", "ingest"}.isdisjoint(
        f.__name__ for f in ingested)  # type: ignore[attr-defined]


def test_a_body_in_memory_is_hashed_here_and_a_spooled_one_on_a_worker_thread(
    api: InMemoryReplica, tmp_path: Path
) -> None:
    hashed: list[object] = []
    api.library._blocking = lambda f, *a, **k: (  # type: ignore[method-assign]
        hashed.append(f), run_now(f, *a, **k))[1]
    spooled = (tmp_path / "body").open("w+b")
    spooled.write(b'{"name": "p"}')

    in_memory = api.library.request_key("k", b"POST", b"/playlists", io.BytesIO(b'{"name": "p"}'))
    from_file = api.library.request_key("k", b"POST", b"/playlists", spooled)

    keys: list[IdempotencyKey] = []
    in_memory.addCallback(keys.append)
    from_file.addCallback(keys.append)

    assert hashed == [request_digest]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_a_keyed_upload_of_bytes_stored_before_answers_the_first_song(
    api: InMemoryReplica, wav_bytes: bytes
) -> None:
    stored = api.upload(wav_bytes).json()["song"]
    files = sorted(p.name for p in api.chunks.root.iterdir())

    again = api.call("POST", "/songs", wav_bytes,
                     {"Content-Type": "audio/wav", "Idempotency-Key": "k"})

    assert again.status == 200 and again.json()["song"]["id"] == stored["id"]
    assert sorted(p.name for p in api.chunks.root.iterdir()) == files


# one key at a time


def test_a_key_sent_again_while_its_first_write_runs_waits_for_its_outcome(
    api: InMemoryReplica,
) -> None:
    queue: list[tuple[Any, Deferred[Any]]] = []

    def queued(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queue.append((lambda: f(*args, **kwargs), d))
        return d

    library = Library(MetadataStore(api.db, queued), api.chunks, run_now, api.clock,
                      LoneLeader(), api.chunk_size)
    key = IdempotencyKey("same", "r" * 64)
    first = Deferred.fromCoroutine(library.create_playlist({"name": "x"}, key))
    second = Deferred.fromCoroutine(library.create_playlist({"name": "x"}, key))
    assert len(queue) == 1  # the second waits for the first before it reads anything
    while queue:
        call, d = queue.pop(0)
        d.callback(call())

    outcomes = [first.result, second.result]
    assert [o.replayed for o in outcomes] == [False, True]
    assert outcomes[0].body == outcomes[1].body
    assert library._keys_busy == {}


# expiry


def key_op(version: Version, key: IdempotencyKey) -> Op:
    return Op(version, "idempotency", key.id,
              {"request": key.request, "status": 201, "body": "{}",
               "written": version.encode()})


def test_the_key_watermark_drops_older_keys_everywhere_and_they_never_come_back(
    tmp_path: Path,
) -> None:
    db = MetadataDB(tmp_path / "m.sqlite3", node_id=1)
    old, young = IdempotencyKey("old", "a" * 64), IdempotencyKey("young", "b" * 64)
    db.apply_ops([key_op(Version(1, 1, 1), old), key_op(Version(1, 1, 3), young)])
    watermark = Op(Version(1, 1, 4), "purges", IDEMPOTENCY_KEYS,
                   {"through": Version(1, 1, 2).encode()})

    db.apply_ops([watermark])
    db.apply_ops([key_op(Version(1, 1, 1), old)])  # the same row, pulled from a lagging peer

    assert db.stored_outcome(old) is None and db.stored_outcome(young) is not None
    assert db.key_watermark() == Version(1, 1, 2) and db.idempotency_keys() == 1
    # The same digest as a replica that got the watermark before the old key's row.
    other = MetadataDB(tmp_path / "n.sqlite3", node_id=2)
    other.apply_ops([watermark, key_op(Version(1, 1, 3), young), key_op(Version(1, 1, 1), old)])
    assert db.digest() == other.digest()
    assert db.purge_watermark() == ZERO  # the tombstone watermark is another one


# the key row rides in its write's op


def test_a_keyed_write_is_one_op_that_carries_its_key_row(
    api: InMemoryReplica, tmp_path: Path
) -> None:
    follower = InMemoryReplica(tmp_path / "f")

    created = keyed(api, "POST", "/playlists", {"name": "M"}, "one")
    ops = api.db.ops_after(ZERO)
    follower.db.apply_ops(op_from_json(op.to_json()) for op in ops)  # as a push sends them

    version = Version.decode(created.headers["x-distpotify-version"])
    assert [op.version for op in ops] == [version] == [api.db.head()]
    assert ops[0].entity == "playlists" and ops[0].outcome is not None
    key = IdempotencyKey("one", rows(api.db, "idempotency")[0]["request"])
    for replica in (api, follower):
        stored = replica.db.stored_outcome(key)
        assert stored is not None and stored.version == version
        assert stored.body == created.json()
    assert follower.get("/sync/digest").json() == api.get("/sync/digest").json()


@pytest.mark.parametrize("arrivals", [
    ("key row", "record row"), ("record row", "key row"),
    ("key row", "pushed op"), ("record row", "pushed op"),
])
def test_a_key_row_pulled_alone_joins_the_op_that_carries_it(
    api: InMemoryReplica, tmp_path: Path, arrivals: tuple[str, str]
) -> None:
    keyed(api, "POST", "/playlists", {"name": "M"}, "pulled")
    [carrying] = api.db.ops_after(ZERO)
    record, key_row = (op for row in api.db.rows([
        ("playlists", carrying.key), ("idempotency", carrying.outcome[0])  # type: ignore[index]
    ]) for op in row_ops(row))
    ops = {"key row": key_row, "record row": record, "pushed op": carrying}
    other = MetadataDB(tmp_path / "o.sqlite3", node_id=2)

    for arrival in arrivals:  # a row as anti-entropy pulls it, the op as a push sends it
        other.apply_ops([ops[arrival]])

    [logged] = other.ops_after(ZERO)
    assert attrs.evolve(logged, outcome=None) == attrs.evolve(carrying, outcome=None)
    # Both carry the key row as its table stores it (the status as text, which
    # Outcome.stored reads alike).
    assert logged.outcome is not None and logged.outcome == carrying.outcome
    assert other.digest() == api.db.digest()


def test_an_op_carrying_a_malformed_key_row_is_refused() -> None:
    good = Op(Version(1, 1, 1), "playlists", MISSING, {"name": "p"},
              (IdempotencyKey("k", "a" * 64).id, {"status": 201}))
    validate_op(good)
    for outcome in ((MISSING, {"colour": "red"}), ("not-a-uuid", {"status": 201}),
                    (MISSING, {})):
        with pytest.raises(ValueError):
            validate_op(attrs.evolve(good, outcome=outcome))
    with pytest.raises(ValueError):
        validate_op(attrs.evolve(good, entity="idempotency", key=MISSING))
    with pytest.raises(ValueError):
        op_from_json({**good.to_json(), "outcome": {"key": MISSING, "fields": "{}"}})


def test_an_oplog_from_before_carried_key_rows_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE oplog (version TEXT PRIMARY KEY, entity TEXT NOT NULL,"
                " key TEXT NOT NULL, body TEXT NOT NULL, at REAL)")
    key = IdempotencyKey("old", "a" * 64)
    op = key_op(Version(1, 1, 1), key)
    old.execute("INSERT INTO oplog VALUES (?, ?, ?, ?, ?)",
                (op.version.encode(), op.entity, op.key, json.dumps(dict(op.fields)), 0.0))
    old.commit()
    old.close()

    db = MetadataDB(path, node_id=1)

    assert db.ops_after(ZERO) == [op]  # a key row of its own, as it was written then
    db.apply_ops([op])
    assert db.stored_outcome(key) is not None


def test_a_key_table_keyed_by_id_alone_is_rebuilt_bucket_first(tmp_path: Path) -> None:
    """A database from before the key table's primary key began with the bucket: rebuilt on
    open with the same rows, so digests and stored outcomes stand, and keys are found, and
    buckets read, through that one key; the bucket index beside it is gone."""
    path = tmp_path / "m.sqlite3"
    keys = [IdempotencyKey(f"key {n}", f"{n:064x}") for n in range(40)]
    db = MetadataDB(path, node_id=1)
    db.apply_ops([key_op(Version(1, 1, n + 1), key) for n, key in enumerate(keys)])
    before = sorted(rows(db, "idempotency"), key=lambda r: r["id"]), db.digest()
    db.close()
    old = sqlite3.connect(path)  # the layout as it was: keyed by id, an index on bucket
    columns = ", ".join(r[1] for r in old.execute("PRAGMA table_info(idempotency)"))
    old.executescript(
        f"CREATE TABLE was ({columns}, PRIMARY KEY (id));"
        f" INSERT INTO was SELECT {columns} FROM idempotency; DROP TABLE idempotency;"
        " ALTER TABLE was RENAME TO idempotency;"
        " CREATE INDEX idempotency_bucket ON idempotency (bucket);"
        " CREATE INDEX idempotency_version ON idempotency (version);")
    old.close()

    db = MetadataDB(path, node_id=1)

    key_columns = {r["name"]: r["pk"] for r in db._conn.execute(
        "PRAGMA table_info(idempotency)")}
    assert (key_columns["bucket"], key_columns["id"]) == (1, 2)
    assert {r["name"] for r in db._conn.execute("PRAGMA index_list(idempotency)")} == {
        "sqlite_autoindex_idempotency_1", "idempotency_version"}
    assert (sorted(rows(db, "idempotency"), key=lambda r: r["id"]), db.digest()) == before
    assert all(db.stored_outcome(key) is not None for key in keys)
    found = {key for _, key, _ in db.bucket_rows(bucket_of("idempotency", keys[0].id))}
    assert keys[0].id in found
    plan = " ".join(r["detail"] for r in db._conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM idempotency WHERE bucket = ? AND id = ?", (0, "")))
    assert "sqlite_autoindex_idempotency_1 (bucket=? AND id=?)" in plan
    db.apply_ops([key_op(Version(1, 1, 99), keys[0])])  # written again later: merged into it
    assert db.get_row("idempotency", keys[0].id).version == Version(1, 1, 99)
    assert db.idempotency_keys() == len(keys)
    db.close()
    again = MetadataDB(path, node_id=1)  # opened again: nothing to redo
    assert again.idempotency_keys() == len(keys) and again.stored_outcome(keys[1]) is not None


def test_an_op_carries_the_key_row_of_its_own_version_only(
    api: InMemoryReplica, tmp_path: Path
) -> None:
    """The oplog keeps no copy of the outcome: an op carries the key row written under its
    version, so none once another leader wrote the key again, or the key expired."""
    keyed(api, "POST", "/playlists", {"name": "A"}, "again")
    keyed(api, "POST", "/playlists", {"name": "B"}, "expires")
    first, second = api.db.ops_after(ZERO)
    assert first.outcome is not None and second.outcome is not None
    newer = Op(Version(9, 2, 1), "idempotency", first.outcome[0], first.outcome[1])

    watermark = Op(Version(9, 2, 2), "purges", IDEMPOTENCY_KEYS,
                   {"through": second.version.encode()})

    api.db.apply_ops([newer])  # the same key applied again by a later leader
    api.db.apply_ops([watermark])  # and the second key expired everywhere

    old, expired, rewritten, _ = api.db.ops_after(ZERO)
    assert (old.version, old.outcome) == (first.version, None)
    assert (expired.version, expired.outcome) == (second.version, None)
    assert rewritten.entity == "idempotency" and rewritten.outcome is None  # itself the row
    assert api.db.get_row("idempotency", first.outcome[0]).version == newer.version


def test_a_key_row_carried_after_a_watermark_in_the_same_batch_is_dropped(
    tmp_path: Path,
) -> None:
    """The watermark is read once per applied batch, and again once a purge row merges."""
    db = MetadataDB(tmp_path / "m.sqlite3", node_id=2)

    def carrying(seq: int, key: IdempotencyKey) -> Op:
        version = Version(1, 1, seq)
        fields = {"request": key.request, "status": 201, "body": None,
                  "written": version.encode()}
        return Op(version, "playlists", key.record_id(), {"name": "p"}, (key.id, fields))

    first, late = IdempotencyKey("first", "a" * 64), IdempotencyKey("late", "b" * 64)
    watermark = Op(Version(1, 1, 5), "purges", IDEMPOTENCY_KEYS,
                   {"through": Version(1, 1, 3).encode()})

    db.apply_ops([carrying(1, first), watermark, carrying(2, late)])

    assert db.stored_outcome(first) is None and db.stored_outcome(late) is None
    assert db.idempotency_keys() == 0
