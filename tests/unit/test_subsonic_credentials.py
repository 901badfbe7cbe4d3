"""Subsonic credentials (issue 18), in memory: the password box that token auth needs (sealed
whenever a password is set, opened under any accepted key, refused when altered or moved),
--subsonic-token-auth off, and OpenSubsonic API keys over the account API."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from distpotify.accounts import _create_api_key
from distpotify.auth.apikeys import ApiKeySecrets, api_key_hash
from distpotify.auth.box import PasswordBox
from distpotify.auth.users import User
from distpotify.errors import Conflict
from distpotify.keys import ClusterKeys
from distpotify.model import IDEMPOTENCY_KEYS, TOMBSTONES, ZERO
from distpotify.store.metadata import Change, MetadataDB
from tests.helpers.accounts import (
    ADMIN_PASSWORD,
    LISTENER_PASSWORD,
    Session,
    call,
    first_admin,
    listener,
    login,
)
from tests.helpers.api import Answer, InMemoryReplica, result_of
from tests.unit.test_auth_api import options

USER = "6a8d4c1e-2b7f-4e3a-9c5d-0f1e2d3c4b5a"
OTHER = "0b9e8d7c-6f5a-4e3d-8c2b-1a0f9e8d7c6b"


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path, auth=True)


@pytest.fixture
def admin(replica: InMemoryReplica, tmp_path: Path) -> Session:
    return first_admin(replica, tmp_path)


@pytest.fixture
def alice(replica: InMemoryReplica, admin: Session) -> Session:
    return listener(replica, admin, "alice")


def account(replica: InMemoryReplica, session: Session) -> User:
    user = replica.accounts.directory.by_id(session.id)
    assert user is not None
    return user


# the box


def test_a_sealed_password_opens_for_its_user() -> None:
    box = PasswordBox(ClusterKeys.generate())

    sealed = box.seal(USER, "pässword with ünicode")

    assert box.open(USER, sealed) == "pässword with ünicode"
    assert "pässword" not in sealed


def test_each_seal_takes_a_fresh_nonce() -> None:
    box = PasswordBox(ClusterKeys.generate())

    assert box.seal(USER, "same-password") != box.seal(USER, "same-password")


def test_a_box_opens_under_no_other_cluster_key() -> None:
    sealed = PasswordBox(ClusterKeys.generate()).seal(USER, "a-password")

    assert PasswordBox(ClusterKeys.generate()).open(USER, sealed) is None


def test_a_box_moved_to_another_user_does_not_open() -> None:
    box = PasswordBox(ClusterKeys.generate())

    assert box.open(OTHER, box.seal(USER, "a-password")) is None


@pytest.mark.parametrize("position", [3, 10, 30, -1])
def test_an_altered_box_does_not_open(position: int) -> None:
    box = PasswordBox(ClusterKeys.generate())
    sealed = box.seal(USER, "a-password")
    flipped = "A" if sealed[position] != "A" else "B"

    altered = sealed[:position] + flipped + sealed[position + 1:] if position != -1 \
        else sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")

    assert box.open(USER, altered) is None


@pytest.mark.parametrize("text", [None, "", "v1:", "v1:!!!", "v2:AAAA", "v1:" + "A" * 9000])
def test_what_is_not_a_box_does_not_open(text: str | None) -> None:
    assert PasswordBox(ClusterKeys.generate()).open(USER, text) is None


def test_a_box_sealed_before_a_rotation_still_opens_and_is_not_current() -> None:
    old, new = ClusterKeys.generate(), ClusterKeys.generate()
    sealed = PasswordBox(old).seal(USER, "a-password")
    rotating = ClusterKeys((new._secrets[0], old._secrets[0]))

    box = PasswordBox(rotating)

    assert box.open(USER, sealed) == "a-password"
    assert not box.sealed_current(USER, sealed)
    assert box.sealed_current(USER, box.seal(USER, "a-password"))


# sealed whenever a password is set


def test_an_account_made_by_an_admin_has_its_password_for_token_auth(
        replica: InMemoryReplica, alice: Session) -> None:
    assert replica.accounts.subsonic_password(account(replica, alice)) == LISTENER_PASSWORD


def test_the_first_admin_made_by_setup_has_its_password(replica: InMemoryReplica,
                                                        admin: Session) -> None:
    assert replica.accounts.subsonic_password(account(replica, admin)) == ADMIN_PASSWORD


def test_the_admin_made_from_the_environment_has_its_password(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path, auth=True, admin_password=ADMIN_PASSWORD)

    session = login(replica, "admin", ADMIN_PASSWORD)

    assert replica.accounts.subsonic_password(account(replica, session)) == ADMIN_PASSWORD


def test_a_changed_password_is_sealed_anew(replica: InMemoryReplica, alice: Session) -> None:
    answer = call(replica, "PUT", "/auth/password",
                  {"old_password": LISTENER_PASSWORD, "password": "a-new-password"},
                  alice.bearer)

    assert answer.status == 204
    assert replica.accounts.subsonic_password(account(replica, alice)) == "a-new-password"


def test_a_password_reset_by_an_admin_is_sealed_anew(replica: InMemoryReplica, admin: Session,
                                                     alice: Session) -> None:
    answer = call(replica, "PATCH", f"/users/{alice.id}", {"password": "reset-password"},
                  admin.bearer)

    assert answer.status == 200
    assert replica.accounts.subsonic_password(account(replica, alice)) == "reset-password"


def test_an_account_from_before_the_box_gets_one_at_its_next_login(
        replica: InMemoryReplica, alice: Session) -> None:
    replica.db.write([Change("users", alice.id, {"subsonic_box": None})])
    result_of(Deferred.fromCoroutine(replica.accounts.reload()))
    assert replica.accounts.subsonic_password(account(replica, alice)) is None

    login(replica, "alice", LISTENER_PASSWORD)

    assert replica.accounts.subsonic_password(account(replica, alice)) == LISTENER_PASSWORD


def test_a_box_holding_another_password_is_sealed_anew_at_a_login(
        replica: InMemoryReplica, alice: Session) -> None:
    stale = PasswordBox(replica.keys).seal(alice.id, "an-old-password")
    replica.db.write([Change("users", alice.id, {"subsonic_box": stale})])
    result_of(Deferred.fromCoroutine(replica.accounts.reload()))

    login(replica, "alice", LISTENER_PASSWORD)

    assert replica.accounts.subsonic_password(account(replica, alice)) == LISTENER_PASSWORD


def test_a_logins_seal_does_not_undo_a_password_changed_meanwhile(
        replica: InMemoryReplica, alice: Session) -> None:
    before = account(replica, alice)  # what a login proved, its seal not written yet
    call(replica, "PUT", "/auth/password",
         {"old_password": LISTENER_PASSWORD, "password": "a-new-password"}, alice.bearer)
    head = replica.db.head()

    result_of(Deferred.fromCoroutine(replica.accounts._seal(before, LISTENER_PASSWORD)))

    assert replica.db.head() == head
    assert replica.accounts.subsonic_password(account(replica, alice)) == "a-new-password"


def test_the_password_and_box_appear_in_no_answer(replica: InMemoryReplica, admin: Session,
                                                  alice: Session) -> None:
    box = account(replica, alice).subsonic_box
    assert box is not None
    answers = [call(replica, "GET", "/users", headers=admin.bearer),
               call(replica, "GET", "/auth/me", headers=alice.bearer),
               replica.call("GET", "/status")]

    for answer in answers:
        assert box not in answer.body.decode()
        assert LISTENER_PASSWORD not in answer.body.decode()
    assert box not in repr(account(replica, alice))


# --subsonic-token-auth off


def test_with_token_auth_off_no_password_is_sealed(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path, auth=True, subsonic_token_auth=False)
    admin = first_admin(replica, tmp_path)
    alice = listener(replica, admin, "alice")

    assert account(replica, alice).subsonic_box is None
    assert replica.accounts.subsonic_password(account(replica, alice)) is None
    row = replica.db.get_row("users", alice.id)
    assert row is not None and row.fields.get("subsonic_box") is None


def test_with_token_auth_off_a_box_stored_before_is_not_used(tmp_path: Path) -> None:
    on = InMemoryReplica(tmp_path, auth=True)
    admin = first_admin(on, tmp_path)
    alice = listener(on, admin, "alice")
    on.db.close()

    off = InMemoryReplica(tmp_path, auth=True, subsonic_token_auth=False)

    user = account(off, alice)
    assert user.subsonic_box is not None
    assert off.accounts.subsonic_password(user) is None


@pytest.mark.parametrize("by_admin", [False, True])
def test_a_password_set_with_token_auth_off_drops_the_box_of_the_old_one(
        tmp_path: Path, by_admin: bool) -> None:
    """The box sealed the old password: kept, it opened again once token auth was switched
    back on, and t + s of the old password (perhaps the leaked one) were accepted."""
    on = InMemoryReplica(tmp_path, auth=True)
    admin = first_admin(on, tmp_path)
    alice = listener(on, admin, "alice")
    on.db.close()
    off = InMemoryReplica(tmp_path, auth=True, subsonic_token_auth=False)
    if by_admin:
        changed = call(off, "PATCH", f"/users/{alice.id}", {"password": "a-new-password"},
                       admin.bearer)
    else:
        changed = call(off, "PUT", "/auth/password",
                       {"old_password": LISTENER_PASSWORD, "password": "a-new-password"},
                       alice.bearer)
    assert changed.status in (200, 204), changed.body
    off.db.close()

    again = InMemoryReplica(tmp_path, auth=True)

    assert again.accounts.subsonic_password(account(again, alice)) is None
    token = hashlib.md5((LISTENER_PASSWORD + "salt1").encode()).hexdigest()
    ping = call(again, "GET", f"/rest/ping?u=alice&t={token}&s=salt1&c=test&v=1.16.1&f=json")
    assert ping.json()["subsonic-response"]["status"] == "failed"


def test_token_auth_is_on_by_default_and_switched_off_by_option(tmp_path: Path) -> None:
    assert options(tmp_path, []).config.subsonic_token_auth is True
    assert options(tmp_path, ["--subsonic-token-auth", "off"]).config.subsonic_token_auth \
        is False
    assert options(tmp_path, [], {"DISTPOTIFY_SUBSONIC_TOKEN_AUTH": "off"}
                   ).config.subsonic_token_auth is False


# API keys


def make_key(replica: InMemoryReplica, session: Session, name: str = "phone") -> dict[str, str]:
    answer = call(replica, "POST", "/auth/apikeys", {"name": name}, session.bearer)
    assert answer.status == 201, answer.body
    assert answer.headers["cache-control"] == "no-store"
    made: dict[str, str] = answer.json()
    return made


def test_a_new_api_key_is_shown_once_and_finds_its_user(replica: InMemoryReplica,
                                                        alice: Session) -> None:
    made = make_key(replica, alice, "  phone  ")

    assert set(made) == {"key", "apiKey"}
    assert set(made["key"]) == {"id", "name", "created_at"}
    assert made["key"]["name"] == "phone"
    assert len(made["apiKey"]) == 43  # a 256-bit MAC, base64url
    user = replica.accounts.user_by_api_key(made["apiKey"])
    assert user is not None and user.id == alice.id


def test_an_api_key_is_stored_as_its_sha256_only(replica: InMemoryReplica,
                                                 alice: Session) -> None:
    made = make_key(replica, alice)

    row = replica.db.get_row("api_keys", made["key"]["id"])

    assert row is not None
    assert row.fields["key_hash"] == hashlib.sha256(made["apiKey"].encode()).hexdigest()
    assert made["apiKey"] not in repr(row)
    dumped = "\n".join(replica.db._conn.iterdump())
    assert made["apiKey"] not in dumped


def test_the_list_shows_ones_own_keys_without_secrets(replica: InMemoryReplica,
                                                      admin: Session, alice: Session) -> None:
    first = make_key(replica, alice, "phone")
    replica.clock.advance(1)
    second = make_key(replica, alice, "car")
    make_key(replica, admin, "admin's")

    listed = call(replica, "GET", "/auth/apikeys", headers=alice.bearer)

    assert listed.status == 200
    assert listed.json() == {"keys": [first["key"], second["key"]]}


def test_an_unknown_or_empty_key_finds_nobody(replica: InMemoryReplica, alice: Session) -> None:
    make_key(replica, alice)

    for key in ("", "guess", "x" * 1000):
        assert replica.accounts.user_by_api_key(key) is None


def test_a_revoked_key_stops_working(replica: InMemoryReplica, alice: Session) -> None:
    made = make_key(replica, alice)

    answer = call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}",
                  headers=alice.bearer)

    assert answer.status == 200
    assert answer.json() == {"key": made["key"]}
    assert replica.accounts.user_by_api_key(made["apiKey"]) is None
    assert call(replica, "GET", "/auth/apikeys", headers=alice.bearer).json() == {"keys": []}
    again = call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}", headers=alice.bearer)
    assert again.status == 404


def test_another_users_key_is_403_and_stays(replica: InMemoryReplica, admin: Session,
                                            alice: Session) -> None:
    bob = listener(replica, admin, "bob")
    made = make_key(replica, alice)
    head = replica.db.head()

    answer = call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}", headers=bob.bearer)

    assert answer.status == 403
    assert replica.db.head() == head
    assert replica.accounts.user_by_api_key(made["apiKey"]) is not None


def test_an_admin_may_revoke_anyones_key(replica: InMemoryReplica, admin: Session,
                                         alice: Session) -> None:
    made = make_key(replica, alice)

    answer = call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}", headers=admin.bearer)

    assert answer.status == 200
    assert replica.accounts.user_by_api_key(made["apiKey"]) is None


def test_an_unknown_key_id_is_404(replica: InMemoryReplica, alice: Session) -> None:
    answer = call(replica, "DELETE", f"/auth/apikeys/{OTHER}", headers=alice.bearer)

    assert answer.status == 404


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": 7},
                                  {"name": "x" * 201}, {"name": "ok", "extra": 1}])
def test_a_key_without_a_good_name_is_400_and_makes_nothing(
        replica: InMemoryReplica, alice: Session, body: dict[str, object]) -> None:
    head = replica.db.head()

    assert call(replica, "POST", "/auth/apikeys", body, alice.bearer).status == 400
    assert replica.db.head() == head


def test_keys_need_a_session(replica: InMemoryReplica, alice: Session) -> None:
    assert call(replica, "GET", "/auth/apikeys").status == 401
    assert call(replica, "POST", "/auth/apikeys", {"name": "x"}).status == 401


def test_a_disabled_or_deleted_users_keys_stop_working(replica: InMemoryReplica,
                                                       admin: Session, alice: Session) -> None:
    bob = listener(replica, admin, "bob")
    alices = make_key(replica, alice)["apiKey"]
    bobs = make_key(replica, bob)["apiKey"]

    call(replica, "PATCH", f"/users/{alice.id}", {"disabled": True}, admin.bearer)
    call(replica, "DELETE", f"/users/{bob.id}", headers=admin.bearer)

    assert replica.accounts.user_by_api_key(alices) is None
    assert replica.accounts.user_by_api_key(bobs) is None
    assert bob.id not in {k["user_id"] for k in replica.db.api_keys()}  # tombstoned with bob


def test_keys_made_on_the_leader_are_found_by_a_replica_applying_them(
        replica: InMemoryReplica, tmp_path: Path, alice: Session) -> None:
    made = make_key(replica, alice)
    ops = replica.db.ops_after(ZERO)
    follower = InMemoryReplica(tmp_path / "follower", auth=True)

    follower.db.apply_ops(ops)
    follower.accounts.ops_applied(ops)

    user = follower.accounts.user_by_api_key(made["apiKey"])
    assert user is not None and user.id == alice.id
    assert api_key_hash(made["apiKey"]) in {k["key_hash"] for k in follower.db.api_keys()}


def test_a_user_holds_a_bounded_number_of_keys(replica: InMemoryReplica, alice: Session,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distpotify.accounts.MAX_API_KEYS", 2)
    make_key(replica, alice)
    make_key(replica, alice)

    assert call(replica, "POST", "/auth/apikeys", {"name": "third"}, alice.bearer).status == 409


# keyed creates: the proxy's retry after a leader failed


def keyed_key(replica: InMemoryReplica, session: Session, key: str, name: str = "phone"
              ) -> Answer:
    return call(replica, "POST", "/auth/apikeys", {"name": name},
                {**session.bearer, "Idempotency-Key": f'"{key}"'})


def test_a_secret_derives_from_the_keys_id_under_the_cluster_key() -> None:
    keys, other = ClusterKeys.generate(), ClusterKeys.generate()

    secret = ApiKeySecrets(keys).secret(USER)

    assert secret == ApiKeySecrets(keys).secret(USER)  # the same on every replica
    assert len(secret) == 43 and secret.isascii() and "=" not in secret
    assert secret != ApiKeySecrets(keys).secret(OTHER)
    assert secret != ApiKeySecrets(other).secret(USER)
    assert USER not in repr(ApiKeySecrets(keys)) and secret not in repr(ApiKeySecrets(keys))


def test_a_keyed_create_sent_again_answers_the_same_key_and_secret_and_makes_one(
        replica: InMemoryReplica, alice: Session) -> None:
    first = keyed_key(replica, alice, "phone-1")
    again = keyed_key(replica, alice, "phone-1")

    assert (first.status, again.status) == (201, 201)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["cache-control"] == "no-store"
    assert again.json() == first.json()
    secret = first.json()["apiKey"]
    assert [k["id"] for k in replica.db.api_keys_of(alice.id)] == [first.json()["key"]["id"]]
    user = replica.accounts.user_by_api_key(secret)
    assert user is not None and user.id == alice.id
    # The stored outcome holds neither the secret nor its hash: only the api_keys row has
    # the hash.
    [stored] = replica.db._conn.execute("SELECT body FROM idempotency").fetchall()
    assert secret not in stored["body"] and api_key_hash(secret) not in stored["body"]
    assert secret not in "\n".join(replica.db._conn.iterdump())


def test_a_keyed_create_applied_by_two_leaders_is_one_key_with_one_secret(
        replica: InMemoryReplica, alice: Session, tmp_path: Path) -> None:
    """The leader applies the create and dies before replicating it; the proxy sends it
    again under its key to the next leader (a later epoch), which makes it too. The client
    holds the second answer's secret: after the two merge it is the one key's, everywhere."""
    second = InMemoryReplica(tmp_path / "second", auth=True)
    before = replica.db.ops_after(ZERO)
    second.db.apply_ops(before)
    second.accounts.ops_applied(before)
    second.db.begin_leading(2)

    on_first = keyed_key(replica, alice, "phone-2")
    on_second = keyed_key(second, alice, "phone-2")
    for target, source in ((replica, second), (second, replica)):
        ops = source.db.ops_after(ZERO)
        target.db.apply_ops(ops)
        target.accounts.ops_applied(ops)

    assert (on_first.status, on_second.status) == (201, 201)
    assert on_first.json()["key"]["id"] == on_second.json()["key"]["id"]
    secret = on_second.json()["apiKey"]
    assert secret == on_first.json()["apiKey"]
    for one in (replica, second):
        assert [k["key_hash"] for k in one.db.api_keys() if k["user_id"] == alice.id] == [
            api_key_hash(secret)]
        user = one.accounts.user_by_api_key(secret)
        assert user is not None and user.id == alice.id
    assert replica.get("/sync/digest").json() == second.get("/sync/digest").json()


def test_a_revoked_keys_create_sent_after_its_key_expired_is_409_and_it_stays_revoked(
        replica: InMemoryReplica, alice: Session) -> None:
    """Long after: its Idempotency-Key has expired and the tombstones of its time were
    purged, but not the key's own (kept for good), so its id still names a revoked key."""
    made = keyed_key(replica, alice, "phone-3").json()
    call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}", headers=alice.bearer)
    playlist = call(replica, "POST", "/playlists", {"name": "gone"}, alice.bearer).json()
    call(replica, "DELETE", f"/playlists/{playlist['playlist']['id']}", headers=alice.bearer)
    through = replica.db.head().encode()
    replica.db.write([Change("purges", IDEMPOTENCY_KEYS, {"through": through}),
                      Change("purges", TOMBSTONES, {"through": through})])
    assert replica.db.get_row("playlists", playlist["playlist"]["id"]) is None  # purged
    assert replica.db.get_row("api_keys", made["key"]["id"]) is not None  # kept
    head = replica.db.head()

    again = keyed_key(replica, alice, "phone-3")

    assert again.status == 409, again.body
    assert made["apiKey"] not in again.body.decode()
    assert replica.db.head() == head
    assert replica.accounts.user_by_api_key(made["apiKey"]) is None
    assert replica.db.api_keys_of(alice.id) == []


def test_a_key_id_of_another_account_is_never_made_again_for_this_one(
        replica: InMemoryReplica, admin: Session, alice: Session) -> None:
    """Unreachable through the API (a key is scoped to its account, so another account's
    create derives another id); refused all the same, before anything is written."""
    made = keyed_key(replica, alice, "phone-7").json()
    fields = {"user_id": admin.id, "name": "mine", "key_hash": "0" * 64,
              "created_at": "2026-12-05T00:00:00.000Z", "deleted": 0}
    head = replica.db.head()

    with pytest.raises(Conflict):
        _create_api_key(replica.db, made["key"]["id"], fields)

    assert replica.db.head() == head
    assert replica.db.get_row("api_keys", made["key"]["id"]).fields["user_id"] == alice.id


def test_a_create_whose_key_row_has_not_arrived_answers_the_key_its_op_made(
        replica: InMemoryReplica, alice: Session) -> None:
    """Anti-entropy may bring the key itself before its Idempotency-Key's row: the create
    sent again answers the same key and secret, and writes nothing new."""
    made = keyed_key(replica, alice, "phone-4").json()
    replica.db._conn.execute("DELETE FROM idempotency")  # as on a replica that lacks the row
    row = replica.db.get_row("api_keys", made["key"]["id"])
    replica.clock.advance(5)

    again = keyed_key(replica, alice, "phone-4")

    assert again.status == 201
    assert again.json() == made
    assert replica.db.get_row("api_keys", made["key"]["id"]) == row


@pytest.fixture
def made_before_rotation(tmp_path: Path
                         ) -> tuple[InMemoryReplica, Session, dict[str, Any], bytes, bytes]:
    """A replica whose alice made a key under the cluster key ``old``; ``new`` comes next."""
    old, new = ClusterKeys.generate(), ClusterKeys.generate()
    before = InMemoryReplica(tmp_path / "before", keys=old, auth=True)
    alice = listener(before, first_admin(before, tmp_path / "before"), "alice")
    made = keyed_key(before, alice, "made-before").json()
    return before, alice, made, old._secrets[0], new._secrets[0]


def test_a_replay_after_a_rotation_answers_the_secret_the_key_was_made_with(
        made_before_rotation: tuple[InMemoryReplica, Session, dict[str, Any], bytes, bytes],
) -> None:
    before, alice, made, old, new = made_before_rotation
    before.accounts._key_secrets = ApiKeySecrets(ClusterKeys((new, old)))  # the new key first

    again = keyed_key(before, alice, "made-before")
    fresh = keyed_key(before, alice, "made-after").json()

    assert again.headers["idempotent-replayed"] == "true" and again.json() == made
    assert fresh["apiKey"] == ApiKeySecrets(ClusterKeys((new,))).secret(fresh["key"]["id"])
    for secret in (made["apiKey"], fresh["apiKey"]):
        assert before.accounts.user_by_api_key(secret) is not None


def test_a_replay_once_its_cluster_key_is_gone_is_409_not_a_wrong_secret(
        made_before_rotation: tuple[InMemoryReplica, Session, dict[str, Any], bytes, bytes],
) -> None:
    before, alice, made, _, new = made_before_rotation
    before.accounts._key_secrets = ApiKeySecrets(ClusterKeys((new,)))  # the old key dropped

    again = keyed_key(before, alice, "made-before")

    assert again.status == 409
    assert "cannot be shown again" in again.json()["message"]
    assert before.accounts.user_by_api_key(made["apiKey"]) is not None  # the key works


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")
        lines.append(repr(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_a_keys_secret_reaches_no_log_status_or_listing(replica: InMemoryReplica,
                                                       alice: Session,
                                                       log_lines: list[str]) -> None:
    made = make_key(replica, alice)
    texts = [call(replica, "GET", "/auth/apikeys", headers=alice.bearer).body.decode(),
             replica.call("GET", "/status").body.decode(),
             call(replica, "DELETE", f"/auth/apikeys/{made['key']['id']}",
                  headers=alice.bearer).body.decode(),
             *log_lines]

    assert not [text for text in texts if made["apiKey"] in text]


def test_reading_keys_is_per_user(replica: InMemoryReplica, alice: Session) -> None:
    make_key(replica, alice)

    assert replica.db.api_keys_of(OTHER) == []
    assert [k["name"] for k in MetadataDB.api_keys_of(replica.db, alice.id)] == ["phone"]
