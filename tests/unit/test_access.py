"""Who may do what, with --auth on (docs/architecture.md, "Who may do what"): every route
against anonymous, the listener who owns the records, another listener and an admin; the
ownership of songs and playlists; records from before accounts; name clashes; the schema
migration of a database from before accounts."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred

from distpotify.auth.access import Need, need_of
from distpotify.auth.passwords import Passwords
from distpotify.model import Op, Version
from distpotify.store.schema import connect
from tests.helpers.accounts import LISTENER_PASSWORD, Session, call, first_admin, listener
from tests.helpers.api import CHEAP_HASHES, Answer, InMemoryReplica
from tests.helpers.audio import make_wav

_seeds = itertools.count(1)


def wav(tmp_path: Path) -> bytes:
    seed = next(_seeds)
    return make_wav(tmp_path / f"tone{seed}.wav", 4096, seed=seed).read_bytes()


def upload(replica: InMemoryReplica, tmp_path: Path, headers: dict[str, str]) -> Answer:
    return replica.call("POST", "/songs", wav(tmp_path), {"Content-Type": "audio/wav",
                                                           **headers},
                        signed=False, cookies=False)


@attrs.define
class World:
    """A replica with an admin, the listener alice (who owns a song, a private playlist with
    one item and a public playlist) and the listener bob."""

    replica: InMemoryReplica
    tmp_path: Path
    admin: Session
    alice: Session
    bob: Session
    song: str = ""
    private: str = ""
    public: str = ""
    item: str = ""


@pytest.fixture
def world(tmp_path: Path) -> World:
    replica = InMemoryReplica(tmp_path, auth=True)
    admin = first_admin(replica, tmp_path)
    found = World(replica, tmp_path, admin, listener(replica, admin, "alice"),
                  listener(replica, admin, "bob"))
    found.song = upload(replica, tmp_path, found.alice.bearer).json()["song"]["id"]
    found.private = call(replica, "POST", "/playlists", {"name": "Mine"},
                         found.alice.bearer).json()["playlist"]["id"]
    found.public = call(replica, "POST", "/playlists", {"name": "Ours", "public": True},
                        found.alice.bearer).json()["playlist"]["id"]
    found.item = call(replica, "POST", f"/playlists/{found.private}/items",
                      {"song_id": found.song}, found.alice.bearer).json()["item"]["id"]
    return found


@attrs.frozen
class Route:
    method: str
    path: str  # {song}, {private}, {public}, {item}, {bob} filled from the World
    expected: tuple[int, int, int, int]  # anonymous, owner (alice), other (bob), admin
    body: Callable[[World], Any] | None = None
    upload: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


WHO = ("anonymous", "owner", "other", "admin")

ROUTES = [
    Route("GET", "/songs", (401, 200, 200, 200)),
    Route("POST", "/songs", (401, 201, 201, 201), upload=True),
    Route("GET", "/songs/{song}", (401, 200, 200, 200)),
    Route("GET", "/songs/{song}/stream", (401, 200, 200, 200)),
    Route("GET", "/songs/{song}/chunks/0", (401, 200, 200, 200)),
    Route("PATCH", "/songs/{song}", (401, 200, 403, 200), lambda w: {"title": "New"}),
    Route("DELETE", "/songs/{song}", (401, 204, 403, 204)),
    Route("GET", "/playlists", (401, 200, 200, 200)),
    Route("POST", "/playlists", (401, 201, 201, 201), lambda w: {"name": "New"}),
    Route("GET", "/playlists/{private}", (401, 200, 403, 200)),
    Route("GET", "/playlists/{public}", (401, 200, 200, 200)),
    Route("PATCH", "/playlists/{public}", (401, 200, 403, 200), lambda w: {"name": "Re"}),
    Route("PATCH", "/playlists/{private}", (401, 200, 403, 200), lambda w: {"public": True}),
    Route("DELETE", "/playlists/{private}", (401, 204, 403, 204)),
    Route("POST", "/playlists/{private}/items", (401, 201, 403, 201),
          lambda w: {"song_id": w.song}),
    Route("POST", "/playlists/{public}/items", (401, 201, 403, 201),
          lambda w: {"song_id": w.song}),
    Route("DELETE", "/playlists/{private}/items/{item}", (401, 204, 403, 204)),
    Route("GET", "/auth/me", (401, 200, 200, 200)),
    Route("POST", "/auth/logout", (204, 204, 204, 204)),
    Route("POST", "/auth/logout-all", (401, 204, 204, 204)),
    Route("GET", "/users", (401, 403, 403, 200)),
    Route("POST", "/users", (401, 403, 403, 201),
          lambda w: {"username": "carol", "password": "carol-password"}),
    Route("GET", "/users/{bob}", (401, 403, 403, 200)),
    Route("PATCH", "/users/{bob}", (401, 403, 403, 200), lambda w: {"disabled": True}),
    Route("DELETE", "/users/{bob}", (401, 403, 403, 204)),
    Route("GET", "/status", (401, 403, 403, 200)),
    Route("GET", "/metrics", (401, 403, 403, 200)),
    Route("GET", "/health", (200, 200, 200, 200)),
    Route("HEAD", "/health", (200, 200, 200, 200)),
    Route("POST", "/health", (401, 405, 405, 405)),
    Route("GET", "/nowhere", (401, 404, 404, 404)),
]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_route_answers_each_kind_of_caller(world: World, route: Route, who: str) -> None:
    sessions = {"anonymous": None, "owner": world.alice, "other": world.bob,
                "admin": world.admin}
    session = sessions[who]
    headers = session.bearer if session is not None else {}
    path = route.path.format(song=world.song, private=world.private, public=world.public,
                             item=world.item, bob=world.bob.id)

    if route.upload:
        answer = upload(world.replica, world.tmp_path, headers)
    else:
        body = route.body(world) if route.body is not None else None
        answer = call(world.replica, route.method, path, body, headers)

    assert answer.status == route.expected[WHO.index(who)], answer.body
    if answer.status == 401:
        assert answer.json()["error"] == "unauthorized"
        assert "www-authenticate" in answer.headers


def test_health_tells_anyone_that_the_replica_is_up_and_nothing_more(world: World) -> None:
    answer = call(world.replica, "GET", "/health")

    assert (answer.status, answer.json()) == (200, {"status": "up"})
    assert answer.headers["cache-control"] == "no-store"
    assert need_of(b"GET", [b"health", b"more"]) is Need.USER


def test_login_and_setup_are_open_to_anyone() -> None:
    assert need_of(b"POST", [b"auth", b"login"]) is Need.NOTHING
    assert need_of(b"POST", [b"auth", b"setup"]) is Need.NOTHING
    assert need_of(b"GET", [b"auth", b"login"]) is Need.USER


def test_a_listener_lists_their_own_and_public_playlists(world: World) -> None:
    def names(session: Session) -> set[str]:
        answer = call(world.replica, "GET", "/playlists", headers=session.bearer)
        return {p["name"] for p in answer.json()["playlists"]}

    bobs = call(world.replica, "POST", "/playlists", {"name": "Bob's"}, world.bob.bearer)

    assert bobs.status == 201
    assert names(world.alice) == {"Mine", "Ours"}
    assert names(world.bob) == {"Ours", "Bob's"}
    assert names(world.admin) == {"Mine", "Ours", "Bob's"}


def test_records_name_their_owner(world: World) -> None:
    song = call(world.replica, "GET", f"/songs/{world.song}", headers=world.bob.bearer).json()
    playlist = call(world.replica, "GET", f"/playlists/{world.public}",
                    headers=world.bob.bearer).json()["playlist"]

    assert song["uploaded_by"] == world.alice.id
    assert (playlist["owner"], playlist["public"]) == (world.alice.id, True)


def test_records_from_before_accounts_belong_to_admins(tmp_path: Path) -> None:
    open_replica = InMemoryReplica(tmp_path, auth=False)
    song = upload(open_replica, tmp_path, {}).json()["song"]["id"]
    playlist = call(open_replica, "POST", "/playlists", {"name": "Old"}).json()["playlist"]["id"]
    open_replica.service.db.close()
    replica = InMemoryReplica(tmp_path, auth=True)
    admin = first_admin(replica, tmp_path)
    alice = listener(replica, admin, "alice")

    assert call(replica, "PATCH", f"/songs/{song}", {"title": "X"}, alice.bearer).status == 403
    assert call(replica, "GET", f"/playlists/{playlist}", headers=alice.bearer).status == 403
    assert call(replica, "PATCH", f"/songs/{song}", {"title": "X"}, admin.bearer).status == 200
    assert call(replica, "DELETE", f"/playlists/{playlist}", headers=admin.bearer).status == 204


def test_a_name_clash_arriving_by_merge_is_renamed_by_the_leader(world: World) -> None:
    """Two "carol"s made on two sides of a partition: the older keeps the name; the leader
    writes the other's new name, so the records agree with every directory."""
    replica = world.replica
    older = "00000000-0000-4000-8000-00000000000a"
    newer = "00000000-0000-4000-8000-00000000000b"
    fields = {"name_key": "carol", "password_hash": "x", "role": "listener", "generation": 0,
              "disabled": 0, "deleted": 0}
    # Written by the leaders of an older epoch on each side; this leader leads epoch 1.
    ops = [Op(Version(0, 2, 1), "users", older,
              {**fields, "username": "carol", "created_at": "2026-01-01T00:00:00.000Z"}),
           Op(Version(0, 3, 1), "users", newer,
              {**fields, "username": "Carol", "created_at": "2026-02-01T00:00:00.000Z"})]

    replica.db.apply_ops(ops)
    replica.service.replication.on_applied[0](ops)

    directory = replica.accounts.directory
    assert directory.by_name("carol").id == older  # type: ignore[union-attr]
    assert directory.by_id(newer).username == "Carol-00000000"  # type: ignore[union-attr]
    stored = replica.db.get_row("users", newer)
    assert stored is not None and stored.fields["username"] == "Carol-00000000"


def test_a_database_from_before_accounts_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE users (id TEXT, username TEXT, password_hash TEXT, role TEXT,"
        " deleted INTEGER NOT NULL DEFAULT 0, version TEXT NOT NULL, field_versions TEXT NOT"
        " NULL, bucket INTEGER NOT NULL, PRIMARY KEY (id));"
        "CREATE UNIQUE INDEX users_name ON users (username) WHERE deleted = 0;"
        "CREATE TABLE playlists (id TEXT, name TEXT, owner TEXT, created_at TEXT,"
        " deleted INTEGER NOT NULL DEFAULT 0, version TEXT NOT NULL, field_versions TEXT NOT"
        " NULL, bucket INTEGER NOT NULL, PRIMARY KEY (id));"
        "INSERT INTO playlists VALUES ('p', 'Old', NULL, '2026', 0, 'v', '{}', 0);")
    old.close()

    conn = connect(path)

    users = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    assert {"name_key", "generation", "created_at", "disabled"} <= users
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(users)")}
    assert "users_name" not in indexes
    assert conn.execute("SELECT public FROM playlists").fetchone()[0] == 0
    assert "uploaded_by" in {r[1] for r in conn.execute("PRAGMA table_info(songs)")}


def test_creating_a_playlist_with_another_users_id_reveals_nothing(world: World) -> None:
    taken = call(world.replica, "POST", "/playlists", {"name": "x", "id": world.private},
                 world.bob.bearer)
    again = call(world.replica, "POST", "/playlists", {"name": "Mine", "id": world.private},
                 world.alice.bearer)

    assert taken.status == 409 and "items" not in taken.body.decode()
    assert "Mine" not in taken.body.decode()
    assert again.status == 200 and again.json()["playlist"]["owner"] == world.alice.id


def test_disabling_an_account_ends_its_sessions_for_good(world: World) -> None:
    path = f"/users/{world.bob.id}"
    call(world.replica, "PATCH", path, {"disabled": True}, world.admin.bearer)
    call(world.replica, "PATCH", path, {"disabled": False}, world.admin.bearer)

    old_token = call(world.replica, "GET", "/songs", headers=world.bob.bearer)

    assert old_token.status == 401


def test_guesses_sent_at_once_are_limited_like_guesses_in_turn(world: World) -> None:
    checks: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        checks.append((d, f, args))
        return d

    accounts = world.replica.accounts
    accounts.passwords = Passwords(later, CHEAP_HASHES, max_waiting=100)
    answers: list[str] = []
    for i in range(30):
        d = Deferred.fromCoroutine(accounts.login("bob", f"wrong guess {i}"))
        d.addErrback(lambda f: answers.append(type(f.value).__name__))
    while checks:
        d, f, args = checks.pop(0)
        d.callback(f(*args))

    assert answers.count("Unauthorized") == 5 and accounts.login_failures == 5
    assert answers.count("TooManyRequests") == 25


def test_a_password_that_is_not_unicode_text_is_refused_and_stores_nothing(
    world: World
) -> None:
    body = b'{"username": "carol", "password": "abcdefgh\\ud800"}'
    created = world.replica.call("POST", "/users", body, {"Content-Type": "application/json",
                                                         **world.admin.bearer},
                                 signed=False, cookies=False)
    users = call(world.replica, "GET", "/users", headers=world.admin.bearer).json()["users"]

    assert created.status == 400 and "carol" not in {u["username"] for u in users}


def test_a_login_from_another_sites_page_is_refused(world: World) -> None:
    body = json.dumps({"username": "bob", "password": LISTENER_PASSWORD}).encode()
    answer = world.replica.call("POST", "/auth/login", body,
                                {"Content-Type": "text/plain", "Origin": "http://evil.example"},
                                signed=False, cookies=False)

    assert answer.status == 403 and "set-cookie" not in answer.headers
