"""Accounts on a replica with --auth on, in memory: setup, login, sessions and their tokens,
the admin's accounts, CSRF, the login limit, and passwords kept out of every answer and log."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.logger import LogEvent, capturedLogs, formatEvent, globalLogPublisher
from twisted.python import usage

from distpotify.accounts import SETUP_CODE_FILE
from distpotify.auth.passwords import PasswordsBusy
from distpotify.auth.tokens import TokenSigner
from distpotify.cli.keygen import key_file_text
from distpotify.idempotency import request_digest
from distpotify.keys import ClusterKeys
from distpotify.model import IDEMPOTENCY_KEYS, TOMBSTONES
from distpotify.store.metadata import Change
from distpotify.tap import Options
from distpotify.wire import JOINING
from tests.helpers.accounts import (
    ADMIN_PASSWORD,
    LISTENER_PASSWORD,
    Session,
    call,
    first_admin,
    listener,
    login,
    setup_code,
)
from tests.helpers.api import InMemoryReplica, NoLeader, result_of

DAY = 24 * 3600.0


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path, auth=True)


@pytest.fixture
def admin(replica: InMemoryReplica, tmp_path: Path) -> Session:
    return first_admin(replica, tmp_path)


@pytest.fixture
def alice(replica: InMemoryReplica, admin: Session) -> Session:
    return listener(replica, admin, "alice")


# first setup


def test_setup_code_is_written_owner_only_while_no_account_exists(tmp_path: Path,
                                                                   replica: InMemoryReplica
                                                                   ) -> None:
    mode = stat.S_IMODE(os.stat(tmp_path / SETUP_CODE_FILE).st_mode)

    assert mode == 0o600
    assert len(setup_code(tmp_path)) >= 16


def test_a_setup_code_that_cannot_be_written_does_not_stop_the_replica(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that starts on a full disk serves (the random lab run: it exited, "cannot
    start: No space left on device"); the code is in its log, and setup takes it."""
    def full(path: Path, text: str) -> None:
        path.write_text(text[:3])  # what a write cut short leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("distpotify.accounts._write_private", full)
    with capturedLogs() as events:
        started = InMemoryReplica(tmp_path, auth=True)

    text = "\n".join(formatEvent(e) or "" for e in events)
    assert "could not be written: No space left" in text
    assert not (tmp_path / SETUP_CODE_FILE).exists()
    code = started.accounts._setup_code
    assert code is not None and code in text
    made = call(started, "POST", "/auth/setup", {"username": "root", "password": ADMIN_PASSWORD,
                                                 "setup_code": code})
    assert made.status == 201, made.body


def test_setup_makes_the_first_admin_once(replica: InMemoryReplica, tmp_path: Path) -> None:
    code = setup_code(tmp_path)
    first = call(replica, "POST", "/auth/setup",
                 {"username": "root", "password": ADMIN_PASSWORD, "setup_code": code})
    again = call(replica, "POST", "/auth/setup",
                 {"username": "other", "password": ADMIN_PASSWORD, "setup_code": code})

    assert first.status == 201
    assert first.json()["user"]["role"] == "admin"
    assert again.status == 409
    assert not (tmp_path / SETUP_CODE_FILE).exists()


@pytest.mark.parametrize("code", ["guess", "\ud800", 12])
def test_setup_with_a_wrong_code_is_403(replica: InMemoryReplica, code: object) -> None:
    """A lone surrogate (JSON's "\\ud800") too: it was a 500, its encoding failing."""
    answer = call(replica, "POST", "/auth/setup",
                  {"username": "root", "password": ADMIN_PASSWORD, "setup_code": code})

    assert answer.status == 403, answer.body
    assert call(replica, "GET", "/users").status == 401  # still nobody


def test_setup_on_a_follower_is_421(tmp_path: Path) -> None:
    follower = InMemoryReplica(tmp_path, auth=True, leadership=NoLeader())

    answer = call(follower, "POST", "/auth/setup",
                  {"username": "root", "password": ADMIN_PASSWORD,
                   "setup_code": setup_code(tmp_path)})

    assert answer.status == 421


# login and sessions


def test_login_answers_a_token_the_user_and_a_session_cookie(replica: InMemoryReplica,
                                                             admin: Session) -> None:
    answer = call(replica, "POST", "/auth/login",
                  {"username": "ROOT", "password": ADMIN_PASSWORD})

    assert answer.status == 200
    assert answer.json()["user"] == {**answer.json()["user"], "username": "root",
                                     "role": "admin"}
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"distpotify_session={answer.json()['token']};")
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= set(cookie.split("; "))
    assert "Secure" not in cookie  # plain HTTP, no trusted proxy
    me = call(replica, "GET", "/auth/me", headers={"Authorization": "Bearer "
                                                   + answer.json()["token"]})
    assert me.json()["user"]["id"] == admin.id


def test_the_session_cookie_is_secure_over_tls(replica: InMemoryReplica,
                                               admin: Session) -> None:
    body = json.dumps({"username": "root", "password": ADMIN_PASSWORD}).encode()
    answer = replica.call("POST", "/auth/login", body, {"Content-Type": "application/json"},
                          signed=False, cookies=False, tls=True)

    assert answer.status == 200
    assert "Secure" in answer.headers["set-cookie"].split("; ")


def test_the_session_cookie_authenticates_reads(replica: InMemoryReplica,
                                                alice: Session) -> None:
    assert call(replica, "GET", "/songs", headers=alice.cookie).status == 200


def test_a_wrong_password_is_401_and_counted(replica: InMemoryReplica, alice: Session) -> None:
    answer = call(replica, "POST", "/auth/login",
                  {"username": "alice", "password": "not-the-password"})
    unknown = call(replica, "POST", "/auth/login",
                   {"username": "nobody", "password": "not-the-password"})

    assert answer.status == unknown.status == 401
    assert answer.json()["error"] == "unauthorized"
    assert replica.accounts.status()["login_failures"] == 2
    metrics = call(replica, "GET", "/metrics", headers={}).status
    assert metrics == 401  # anonymous
    scraped = replica.call("GET", "/metrics")  # signed by the cluster
    assert b"distpotify_login_failures 2.0" in scraped.body


def test_failed_logins_of_a_name_wait_429_then_the_limit_resets(replica: InMemoryReplica,
                                                                alice: Session) -> None:
    wrong = {"username": "alice", "password": "not-the-password"}
    statuses = [call(replica, "POST", "/auth/login", wrong).status for _ in range(6)]
    limited = call(replica, "POST", "/auth/login",
                   {"username": "ALICE", "password": LISTENER_PASSWORD})

    assert statuses == [401] * 6  # the sixth failure starts the wait
    assert limited.status == 429
    assert int(limited.headers["retry-after"]) >= 1
    replica.clock.advance(int(limited.headers["retry-after"]))
    assert login(replica, "alice", LISTENER_PASSWORD).id == alice.id


@pytest.mark.parametrize("body", [{}, {"username": "alice"}, {"username": 1, "password": "x"}])
def test_a_login_without_a_name_and_password_is_400(replica: InMemoryReplica,
                                                    body: dict[str, object]) -> None:
    assert call(replica, "POST", "/auth/login", body).status == 400


def test_a_login_when_too_many_checks_wait_is_503_with_retry_after(
        replica: InMemoryReplica, alice: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(stored: str | None, password: str) -> Deferred[bool]:
        return fail(PasswordsBusy("busy"))

    monkeypatch.setattr(replica.accounts.passwords, "verify", busy)
    answer = call(replica, "POST", "/auth/login",
                  {"username": "alice", "password": LISTENER_PASSWORD})

    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert replica.accounts.status()["login_failures"] == 0


def test_logout_clears_the_cookie(replica: InMemoryReplica, alice: Session) -> None:
    answer = call(replica, "POST", "/auth/logout", headers=alice.bearer)

    assert answer.status == 204
    assert answer.headers["set-cookie"].startswith("distpotify_session=;")
    assert "Max-Age=0" in answer.headers["set-cookie"]


def test_logout_all_ends_every_session(replica: InMemoryReplica, alice: Session) -> None:
    second = login(replica, "alice", LISTENER_PASSWORD)

    assert call(replica, "POST", "/auth/logout-all", headers=alice.bearer).status == 204
    assert call(replica, "GET", "/auth/me", headers=alice.bearer).status == 401
    assert call(replica, "GET", "/auth/me", headers=second.bearer).status == 401
    assert call(replica, "GET", "/auth/me",
                headers=login(replica, "alice", LISTENER_PASSWORD).bearer).status == 200


def test_changing_the_password_needs_the_old_one_and_ends_sessions(
        replica: InMemoryReplica, alice: Session) -> None:
    wrong = call(replica, "PUT", "/auth/password",
                 {"old_password": "wrong-password", "password": "a-new-password"},
                 alice.bearer)
    right = call(replica, "PUT", "/auth/password",
                 {"old_password": LISTENER_PASSWORD, "password": "a-new-password"},
                 alice.bearer)

    assert wrong.status == 403
    assert right.status == 204
    assert call(replica, "GET", "/auth/me", headers=alice.bearer).status == 401
    assert login(replica, "alice", "a-new-password").id == alice.id


def test_guessing_the_old_password_is_limited_like_a_login(replica: InMemoryReplica,
                                                           alice: Session) -> None:
    wrong = {"old_password": "wrong-password", "password": "a-new-password"}
    statuses = [call(replica, "PUT", "/auth/password", wrong, alice.bearer).status
                for _ in range(7)]

    assert statuses == [403] * 6 + [429]


def test_login_works_on_a_follower_but_account_writes_are_421(tmp_path: Path) -> None:
    leader = InMemoryReplica(tmp_path / "leader", auth=True)
    admin = first_admin(leader, tmp_path / "leader")
    follower = InMemoryReplica(tmp_path / "follower", auth=True, leadership=NoLeader())
    follower.accounts.load(leader.db.users())

    session = login(follower, "root", ADMIN_PASSWORD)

    assert session.id == admin.id
    assert call(follower, "POST", "/auth/logout-all", headers=session.bearer).status == 421


# a genuine session a replica cannot check yet


@pytest.fixture
def follower(tmp_path: Path) -> InMemoryReplica:
    """A follower of the same cluster (its key signs the same tokens) that has applied no
    account yet."""
    return InMemoryReplica(tmp_path / "follower", auth=True, leadership=NoLeader())


def test_a_follower_behind_a_sessions_account_answers_409_behind_not_401(
        replica: InMemoryReplica, alice: Session, follower: InMemoryReplica) -> None:
    behind = call(follower, "GET", "/songs", headers=alice.bearer)

    assert behind.status == 409 and behind.json()["error"] == "behind"  # the proxy asks the leader
    follower.accounts.load(replica.db.users())  # the account's creation applied there
    assert call(follower, "GET", "/songs", headers=alice.bearer).status == 200


def test_a_session_newer_than_a_followers_copy_of_its_account_is_behind_not_ended(
        replica: InMemoryReplica, alice: Session, follower: InMemoryReplica) -> None:
    follower.accounts.load(replica.db.users())
    assert call(replica, "POST", "/auth/logout-all", headers=alice.bearer).status == 204
    renewed = login(replica, "alice", LISTENER_PASSWORD)  # the next generation's session

    assert call(follower, "GET", "/songs", headers=renewed.bearer).status == 409
    follower.accounts.load(replica.db.users())  # the logout-all applied there
    assert call(follower, "GET", "/songs", headers=renewed.bearer).status == 200
    assert call(follower, "GET", "/songs", headers=alice.bearer).status == 401  # ended


def test_a_joining_replica_answers_a_session_it_does_not_know_503_joining(
        alice: Session, follower: InMemoryReplica) -> None:
    follower.service.cluster.state = JOINING

    answer = call(follower, "GET", "/songs", headers=alice.bearer)

    assert answer.status == 503 and answer.json()["error"] == "joining"


def test_the_leader_refuses_a_session_of_a_deleted_account_401(
        replica: InMemoryReplica, admin: Session, alice: Session) -> None:
    assert call(replica, "DELETE", f"/users/{alice.id}", headers=admin.bearer).status == 204

    answer = call(replica, "GET", "/songs", headers=alice.bearer)

    assert answer.status == 401 and "deleted" in answer.json()["message"]


def test_the_leader_refuses_a_genuine_session_of_an_account_it_never_held_401(
        replica: InMemoryReplica, admin: Session) -> None:
    # Signed with the cluster's key: the leader holds every account write, so it is no
    # account (its tombstone purged since, say), not one it has yet to apply.
    token = TokenSigner(replica.keys, replica.clock).issue(str(uuid.uuid4()), 0)

    answer = call(replica, "GET", "/songs", headers={"Authorization": f"Bearer {token}"})

    assert answer.status == 401 and "no such account" in answer.json()["message"]


def test_a_follower_that_applied_an_accounts_deletion_refuses_its_session_401(
        replica: InMemoryReplica, admin: Session, alice: Session,
        follower: InMemoryReplica) -> None:
    assert call(replica, "DELETE", f"/users/{alice.id}", headers=admin.bearer).status == 204
    follower.accounts.load(replica.db.users(), deleted=replica.db.deleted_user_ids())

    answer = call(follower, "GET", "/songs", headers=alice.bearer)

    assert answer.status == 401 and "deleted" in answer.json()["message"]


def test_a_forged_session_is_401_on_a_follower_too(follower: InMemoryReplica) -> None:
    forged = TokenSigner(ClusterKeys.generate(), follower.clock).issue("someone", 0)

    answer = call(follower, "GET", "/songs", headers={"Authorization": f"Bearer {forged}"})

    assert answer.status == 401


# tokens


def test_an_expired_token_is_401(replica: InMemoryReplica, alice: Session) -> None:
    replica.clock.advance(31 * DAY)

    answer = call(replica, "GET", "/songs", headers=alice.bearer)

    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_tampered_token_is_401(replica: InMemoryReplica, alice: Session,
                                 admin: Session) -> None:
    header, payload, signature = alice.token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    forged = jwt.utils.base64url_encode(json.dumps({**claims, "sub": admin.id}).encode())
    token = f"{header}.{forged.decode()}.{signature}"

    assert call(replica, "GET", "/users", headers={"Authorization": f"Bearer {token}"}
                ).status == 401


def test_a_token_with_alg_none_is_401(replica: InMemoryReplica, admin: Session) -> None:
    claims = jwt.decode(admin.token, options={"verify_signature": False})
    token = jwt.encode(claims, None, algorithm="none")

    assert call(replica, "GET", "/users", headers={"Authorization": f"Bearer {token}"}
                ).status == 401


def test_a_token_of_another_cluster_is_401(replica: InMemoryReplica, admin: Session) -> None:
    token = TokenSigner(ClusterKeys.generate(), replica.clock).issue(admin.id, 0)

    assert call(replica, "GET", "/users", headers={"Authorization": f"Bearer {token}"}
                ).status == 401


def test_a_disabled_users_token_is_401(replica: InMemoryReplica, admin: Session,
                                       alice: Session) -> None:
    disabled = call(replica, "PATCH", f"/users/{alice.id}", {"disabled": True}, admin.bearer)

    assert disabled.status == 200
    assert call(replica, "GET", "/songs", headers=alice.bearer).status == 401
    assert call(replica, "POST", "/auth/login",
                {"username": "alice", "password": LISTENER_PASSWORD}).status == 401


# CSRF


def test_an_unsafe_request_by_cookie_needs_a_matching_origin(replica: InMemoryReplica,
                                                             alice: Session) -> None:
    body = {"name": "Mine"}
    without = call(replica, "POST", "/playlists", body, alice.cookie)
    foreign = call(replica, "POST", "/playlists", body,
                   {**alice.cookie, "Origin": "https://evil.example"})
    same = call(replica, "POST", "/playlists", body, {**alice.cookie, "Origin": "http://replica"})
    by_bearer = call(replica, "POST", "/playlists", body, alice.bearer)

    assert (without.status, foreign.status) == (403, 403)
    assert (same.status, by_bearer.status) == (201, 201)


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("GET", "/songs", {b"Authorization": [b"Bearer \xff\xfe"]}),
    ("GET", "/auth/me", {b"Authorization": [b"Bearer \xff\xfe"]}),
    ("GET", "/status", {b"Authorization": [b"Bearer \xff\xfe"]}),
    ("POST", "/auth/login", {b"Origin": [b"http://\xff"]}),
    ("POST", "/playlists", {b"Origin": [b"http://\xff"]}),
])
def test_a_gate_header_that_is_not_utf8_is_refused_not_a_500(
        replica: InMemoryReplica, alice: Session, method: str, path: str,
        headers: dict[bytes, list[bytes]]) -> None:
    """Header bytes are the client's: the gate read Authorization and Origin as UTF-8, and
    an \\xff in either was a 500 (twisted.web's HTML page), not the gate's 401 or 403."""
    sent = {b"Content-Type": [b"application/json"],
            b"Cookie": [f"distpotify_session={alice.token}".encode()], **headers}
    client = StubTreq(replica.root)
    d = client.request(method, "http://replica" + path, data=b'{"username": "alice"}',
                       headers=sent)
    client.flush()
    response = result_of(d)
    body = client.content(response)
    client.flush()

    assert response.code in (401, 403), result_of(body)
    assert json.loads(result_of(body))["error"] in ("unauthorized", "forbidden")


# the admin's accounts


def test_an_admin_creates_lists_changes_and_deletes_accounts(replica: InMemoryReplica,
                                                             admin: Session) -> None:
    made = call(replica, "POST", "/users",
                {"username": "Bob", "password": LISTENER_PASSWORD}, admin.bearer)
    taken = call(replica, "POST", "/users",
                 {"username": "BOB", "password": LISTENER_PASSWORD}, admin.bearer)
    bob = made.json()["user"]["id"]
    promoted = call(replica, "PATCH", f"/users/{bob}", {"role": "admin"}, admin.bearer)
    listed = call(replica, "GET", "/users", headers=admin.bearer)
    deleted = call(replica, "DELETE", f"/users/{bob}", headers=admin.bearer)

    assert (made.status, taken.status, promoted.status, deleted.status) == (201, 409, 200, 204)
    assert promoted.json()["user"]["role"] == "admin"
    assert {u["username"] for u in listed.json()["users"]} == {"root", "Bob"}
    assert call(replica, "POST", "/auth/login",
                {"username": "bob", "password": LISTENER_PASSWORD}).status == 401


def test_an_account_made_with_an_idempotency_key_is_made_once(replica: InMemoryReplica,
                                                             admin: Session) -> None:
    body = {"username": "carol", "password": LISTENER_PASSWORD}
    headers = {**admin.bearer, "Idempotency-Key": '"make-carol"'}

    first = call(replica, "POST", "/users", body, headers)
    again = call(replica, "POST", "/users", body, headers)

    assert (first.status, again.status) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


def test_a_deleted_accounts_create_sent_after_its_key_expired_is_409_and_its_sessions_stay_over(
        replica: InMemoryReplica, admin: Session) -> None:
    """The account's id derives from the create's key and request: the same create sent
    again once its key expired (and the tombstones of its time were purged) wrote the
    deleted id live again at generation 0, and the deleted account's sessions worked again,
    on an account with a new password."""
    body = {"username": "carol", "password": LISTENER_PASSWORD}
    headers = {**admin.bearer, "Idempotency-Key": '"make-carol"'}
    assert call(replica, "POST", "/users", body, headers).status == 201
    carol = login(replica, "carol", LISTENER_PASSWORD)
    assert call(replica, "DELETE", f"/users/{carol.id}", headers=admin.bearer).status == 204
    through = replica.db.head().encode()
    replica.db.write([Change("purges", IDEMPOTENCY_KEYS, {"through": through}),
                      Change("purges", TOMBSTONES, {"through": through})])
    result_of(Deferred.fromCoroutine(replica.accounts.reload()))
    head = replica.db.head()

    again = call(replica, "POST", "/users", {**body, "password": "another-password"}, headers)

    assert again.status == 409, again.body
    assert replica.db.head() == head
    assert call(replica, "GET", "/auth/me", headers=carol.bearer).status == 401
    tombstone = replica.db.get_row("users", carol.id)
    assert tombstone is not None and tombstone.fields["deleted"] == 1
    # Kept for good, it keeps no password: neither its hash nor its Subsonic box.
    assert tombstone.fields["password_hash"] is None
    assert tombstone.fields["subsonic_box"] is None


def test_keyed_account_changes_sent_again_answer_their_first_outcome(
        replica: InMemoryReplica, admin: Session) -> None:
    """The proxy sends a write again, under its key, when its outcome is unknown; the first
    may have been applied and replicated (its answer lost with the leader). A revocation, a
    change and a deletion sent again answer their first outcome (not a 404 the proxy would
    take for a leader that lacks the write, holding the client until its 503), once."""
    bob = listener(replica, admin, "bob")
    key_id = call(replica, "POST", "/auth/apikeys", {"name": "phone"},
                  bob.bearer).json()["key"]["id"]
    change = {"role": "admin", "password": "a new long passphrase"}

    revoked = [call(replica, "DELETE", f"/auth/apikeys/{key_id}",
                    headers={**bob.bearer, "Idempotency-Key": '"revoke-1"'}) for _ in range(2)]
    changed = [call(replica, "PATCH", f"/users/{bob.id}", change,
                    {**admin.bearer, "Idempotency-Key": '"change-1"'}) for _ in range(2)]
    generation = replica.db.get_row("users", bob.id).fields["generation"]
    deleted = [call(replica, "DELETE", f"/users/{bob.id}",
                    headers={**admin.bearer, "Idempotency-Key": '"delete-1"'}) for _ in range(2)]

    for first, again in (revoked, changed, deleted):
        assert first.status in (200, 204) and again.status == first.status, again.body
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true" and again.body == first.body
    assert changed[0].json()["user"]["role"] == "admin"
    assert generation == 1  # the password changed once: the sessions ended once


def test_a_keyed_password_change_stores_no_digest_of_either_password(
        replica: InMemoryReplica, alice: Session) -> None:
    body = {"old_password": LISTENER_PASSWORD, "password": "a new long passphrase"}

    changed = call(replica, "PUT", "/auth/password", body,
                   {**alice.bearer, "Idempotency-Key": '"new-password"'})

    stored = {row["request"] for row in replica.db._conn.execute("SELECT request FROM idempotency")}
    assert changed.status == 204
    assert request_digest(b"PUT", b"/auth/password", io.BytesIO(b"{}")) in stored
    assert request_digest(b"PUT", b"/auth/password",
                          io.BytesIO(json.dumps(body).encode())) not in stored


def test_a_keyed_account_write_stores_no_digest_of_its_password(replica: InMemoryReplica,
                                                                 admin: Session) -> None:
    """The request digest a key stores (in every replica, for a day) leaves the password out:
    a SHA-256 over a body holding one would be open to a dictionary. The key still refuses
    another account under it (422), and nothing is made by the refusal."""
    body = {"username": "carol", "password": LISTENER_PASSWORD}
    headers = {**admin.bearer, "Idempotency-Key": '"make-carol-2"'}

    made = call(replica, "POST", "/users", body, headers)
    other = call(replica, "POST", "/users", {"username": "dave", "password": LISTENER_PASSWORD},
                 headers)

    stored = [row["request"] for row in replica.db._conn.execute("SELECT request FROM idempotency")]
    raw = json.dumps(body).encode()
    as_sent = {request_digest(b"POST", b"/users", io.BytesIO(raw)),
               request_digest(b"POST", b"/users", io.BytesIO(json.dumps(body, sort_keys=True,
                                                               separators=(",", ":")).encode()))}
    without = request_digest(b"POST", b"/users", io.BytesIO(b'{"username":"carol"}'))
    assert (made.status, other.status) == (201, 422)
    assert without in stored and not as_sent & set(stored)
    names = {u["username"] for u in call(replica, "GET", "/users", headers=admin.bearer).json()[
        "users"]}
    assert "dave" not in names and "carol" in names


def test_an_idempotency_key_is_the_accounts_own(replica: InMemoryReplica, admin: Session,
                                                 alice: Session) -> None:
    """Two accounts that send the same key and the same body each make their own playlist:
    neither gets the other's stored answer (nor a 422 for the other's body)."""
    bob = listener(replica, admin, "bob")
    body = {"name": "Road trip"}
    key = {"Idempotency-Key": '"1"'}

    made = [call(replica, "POST", "/playlists", body, {**who.bearer, **key})
            for who in (alice, bob, alice)]
    other = call(replica, "POST", "/playlists", {"name": "Else"}, {**bob.bearer, **key})

    assert [answer.status for answer in made] == [201, 201, 201]
    assert made[0].json()["playlist"]["id"] != made[1].json()["playlist"]["id"]
    assert made[2].headers.get("idempotent-replayed") == "true"
    assert made[2].json() == made[0].json()
    assert "idempotent-replayed" not in made[1].headers
    assert other.status == 422  # bob's own key, reused with another body
    mine = call(replica, "GET", "/playlists", headers=bob.bearer).json()["playlists"]
    assert [p["owner"] for p in mine if p["name"] == "Road trip"] == [bob.id]


def test_a_password_reset_by_an_admin_ends_the_users_sessions(replica: InMemoryReplica,
                                                              admin: Session,
                                                              alice: Session) -> None:
    reset = call(replica, "PATCH", f"/users/{alice.id}", {"password": "reset-password"},
                 admin.bearer)

    assert reset.status == 200
    assert call(replica, "GET", "/auth/me", headers=alice.bearer).status == 401
    assert login(replica, "alice", "reset-password").id == alice.id


@pytest.mark.parametrize("body", [
    {"username": "b o b", "password": LISTENER_PASSWORD},
    {"username": "bob", "password": "short"},
    {"username": "bob", "password": LISTENER_PASSWORD, "role": "king"},
    {"username": "bob", "password": LISTENER_PASSWORD, "extra": 1},
])
def test_an_account_with_a_bad_field_is_400(replica: InMemoryReplica, admin: Session,
                                            body: dict[str, object]) -> None:
    assert call(replica, "POST", "/users", body, admin.bearer).status == 400


def test_changing_an_unknown_account_is_404(replica: InMemoryReplica, admin: Session) -> None:
    missing = "00000000-0000-4000-8000-000000000000"

    assert call(replica, "PATCH", f"/users/{missing}", {"role": "admin"},
                admin.bearer).status == 404
    assert call(replica, "DELETE", f"/users/{missing}", headers=admin.bearer).status == 404


def test_an_admin_does_not_delete_their_own_account(replica: InMemoryReplica,
                                                    admin: Session) -> None:
    assert call(replica, "DELETE", f"/users/{admin.id}", headers=admin.bearer).status == 409


def test_the_last_admin_is_not_demoted(replica: InMemoryReplica, admin: Session) -> None:
    answer = call(replica, "PATCH", f"/users/{admin.id}", {"role": "listener"}, admin.bearer)

    assert answer.status == 409


def test_the_admin_password_from_the_environment_makes_admin_instead_of_a_setup_code(
        tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path, auth=True, admin_password=ADMIN_PASSWORD)

    session = login(replica, "admin", ADMIN_PASSWORD)

    assert not (tmp_path / SETUP_CODE_FILE).exists()
    assert call(replica, "GET", "/users", headers=session.bearer).status == 200
    assert call(replica, "POST", "/auth/setup",
                {"username": "root", "password": ADMIN_PASSWORD, "setup_code": "x"}
                ).status == 409


# options


def options(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> Options:
    key = tmp_path / "cluster.key"
    key.write_text(key_file_text())
    parsed = Options(environ={"DISTPOTIFY_CLUSTER_KEY_FILE": str(key), **(env or {})})
    parsed.parseOptions(["--node-id", "1", *args])
    return parsed


def test_auth_is_on_by_default_and_switched_off_by_option_or_environment(tmp_path: Path
                                                                          ) -> None:
    assert options(tmp_path, []).config.auth is True
    assert options(tmp_path, ["--auth", "off"]).config.auth is False
    assert options(tmp_path, [], {"DISTPOTIFY_AUTH": "off"}).config.auth is False
    assert options(tmp_path, ["--auth", "on"], {"DISTPOTIFY_AUTH": "off"}).config.auth is True


def test_secrets_of_the_options_stay_out_of_the_configs_repr(tmp_path: Path) -> None:
    config = options(tmp_path, ["--metrics-token", "scrape-secret"],
                     {"DISTPOTIFY_ADMIN_PASSWORD": "admin-secret-1"}).config

    assert (config.metrics_token, config.admin_password) == ("scrape-secret", "admin-secret-1")
    assert "scrape-secret" not in repr(config) and "admin-secret-1" not in repr(config)


def test_a_weak_admin_password_is_one_clear_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="DISTPOTIFY_ADMIN_PASSWORD: a password has at"
                                               " least 8 characters"):
        options(tmp_path, [], {"DISTPOTIFY_ADMIN_PASSWORD": "short"})


# --auth off, /status and /metrics


def test_with_auth_off_the_library_is_open_but_sessions_are_still_checked(tmp_path: Path
                                                                          ) -> None:
    replica = InMemoryReplica(tmp_path, auth=False)

    assert call(replica, "GET", "/songs").status == 200
    assert call(replica, "GET", "/status").status == 200
    assert call(replica, "GET", "/auth/me").status == 401
    assert call(replica, "GET", "/users").status == 401


def test_with_auth_off_a_session_still_names_the_owner_of_what_it_creates(tmp_path: Path
                                                                          ) -> None:
    replica = InMemoryReplica(tmp_path, auth=False)
    alice = listener(replica, first_admin(replica, tmp_path), "alice")

    made = call(replica, "POST", "/playlists", {"name": "Mine"}, alice.bearer)
    anonymous = call(replica, "POST", "/playlists", {"name": "Nobody's"})

    assert made.json()["playlist"]["owner"] == alice.id
    assert anonymous.json()["playlist"]["owner"] is None


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_status_and_metrics_answer_the_cluster_admins_and_the_metrics_token(
        tmp_path: Path, path: str) -> None:
    replica = InMemoryReplica(tmp_path, auth=True, metrics_token="scrape-me")
    admin = first_admin(replica, tmp_path)
    alice = listener(replica, admin, "alice")

    assert call(replica, "GET", path).status == 401
    assert call(replica, "GET", path, headers=alice.bearer).status == 403
    assert call(replica, "GET", path, headers=admin.bearer).status == 200
    assert replica.call("GET", path).status == 200  # cluster-signed
    assert call(replica, "GET", path, headers={"Authorization": "Bearer scrape-me"}
                ).status == 200
    assert call(replica, "GET", path, headers={"Authorization": "Bearer scrape-you"}
                ).status == 401


# passwords stay secret


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")
        lines.append(repr(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_passwords_never_appear_in_logs_status_errors_or_reprs(
        tmp_path: Path, log_lines: list[str]) -> None:
    secret = "Sekrit-Passw0rd-xyzzy"
    replica = InMemoryReplica(tmp_path, auth=True)
    answers = [call(replica, "POST", "/auth/setup",
                    {"username": "root", "password": secret,
                     "setup_code": setup_code(tmp_path)})]
    answers.append(call(replica, "POST", "/auth/login", {"username": "root", "password": "x"}))
    answers.append(call(replica, "POST", "/auth/login", {"username": "root", "password": secret}))
    admin = answers[-1].json()
    answers.append(call(replica, "POST", "/users", {"username": "bad", "password": secret,
                                                    "role": "king"},
                        {"Authorization": f"Bearer {admin['token']}"}))
    answers.append(call(replica, "POST", "/users", {"username": "b a d", "password": secret},
                        {"Authorization": f"Bearer {admin['token']}"}))
    answers.append(replica.call("GET", "/status"))
    users = replica.accounts.directory
    stored = next(iter(users)).password_hash

    texts = [a.body.decode() for a in answers] + log_lines + [repr(u) for u in users]
    texts.append(repr(replica.service.config))
    assert [a.status for a in answers] == [201, 401, 200, 400, 400, 200]
    assert not [t for t in texts if secret in t or stored in t]


def test_a_cluster_signed_request_reads_the_library_as_the_cluster(
        replica: InMemoryReplica, admin: Session) -> None:
    # followers fetch the chunks of new songs from the leader so, with --auth on too
    assert replica.call("GET", "/songs", signed=True, cookies=False).status == 200
    assert replica.call("GET", "/songs", signed=False, cookies=False).status == 401


def test_a_request_with_a_forged_signature_is_401(replica: InMemoryReplica,
                                                 admin: Session) -> None:
    forged = {"X-Distpotify-Time": "1", "X-Distpotify-Nonce": "0" * 32,
              "X-Distpotify-Content-SHA256": "0" * 64, "X-Distpotify-Signature": "0" * 64}

    answer = replica.call("GET", "/songs", headers={**admin.bearer, **forged}, signed=False,
                          cookies=False)

    assert answer.status == 401
