"""A replica's accounts: the directory of users kept in memory as user records apply, and what
the auth API does with it (first setup, login, sessions, account writes through the leader).

Users are replicated records like songs (model.py's ``users``). Every replica holds all of them
in a Directory (auth/users.py), rebuilt from its database whenever ops touching users apply
here, so a session token is checked without a database read. Names are unique folded: the
leader refuses a taken one (409) in the write's own transaction, and a clash made on two
sides of a partition is resolved by ``resolve_clash`` on every replica alike, the leader
writing the rename so the records agree too.
"""
# test-case-name: tests.unit.test_auth_api

from __future__ import annotations

import contextlib
import datetime
import hmac
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from distpotify.auth.access import Actor
from distpotify.auth.apikeys import ApiKeySecrets, api_key_hash
from distpotify.auth.box import PasswordBox
from distpotify.auth.passwords import Passwords, WeakPassword, check_new_password
from distpotify.auth.ratelimit import LoginLimiter
from distpotify.auth.tokens import InvalidToken, NotKnownYet, TokenSigner
from distpotify.auth.users import (
    ADMIN,
    LISTENER,
    ROLES,
    Clash,
    Directory,
    InvalidUsername,
    User,
    check_username,
    name_key,
)
from distpotify.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.library import MAX_NAME, Library
from distpotify.model import Op, new_id, valid_uuid
from distpotify.store.metadata import Change, MetadataDB, MetadataStore

log = Logger()

SETUP_CODE_FILE = "setup-code"
# The JSON API's limit of a body: past it a key digests the body as sent (and the JSON
# parser refuses it before anything is written or stored).
MAX_ACCOUNT_BODY = 1024 * 1024
# The account DISTPOTIFY_ADMIN_PASSWORD makes on a cluster with none.
FIRST_ADMIN = "admin"
# How often a replica given DISTPOTIFY_ADMIN_PASSWORD checks whether it leads a cluster with
# no account yet, until one exists.
ADMIN_CHECK_INTERVAL = 1.0
# OpenSubsonic API keys a user may hold at once (all of them are kept in memory).
MAX_API_KEYS = 50
# The entities whose ops make a replica read its accounts again.
_ACCOUNT_ENTITIES = ("users", "api_keys")


def account_rows(db: MetadataDB) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                           list[str]]:
    """What ``Accounts.load`` takes, read in one call on the database's thread: the live
    accounts, the API keys and the deleted accounts' ids, with no write between them."""
    return db.users(), db.api_keys(), db.deleted_user_ids()


def user_of(row: Mapping[str, Any]) -> User | None:
    """The User a ``users`` row holds; None for a row that is not a whole account."""
    try:
        return User(id=str(row["id"]), username=str(row["username"]), role=row["role"],
                    password_hash=str(row["password_hash"] or ""),
                    generation=int(row["generation"] or 0),
                    created_at=str(row["created_at"] or ""), disabled=bool(row["disabled"]),
                    version=str(row.get("version") or ""),
                    subsonic_box=row.get("subsonic_box") or None)
    except (KeyError, TypeError, ValueError):
        return None


def public(user: User) -> dict[str, Any]:
    """What the API shows of an account: never its password hash (nor its box)."""
    return {"id": user.id, "username": user.username, "role": user.role,
            "disabled": user.disabled, "created_at": user.created_at}


class Accounts:
    """Every account of the cluster as this replica knows it, and the operations on them.

    Reads (login, token checks) work on any replica; writes go through
    ``library.write``, so a follower answers 421 like any write. ``passwords`` runs its
    hashes on worker threads; ``limiter`` counts failed logins per folded username.
    ``box`` seals each password set for Subsonic token auth (None: --subsonic-token-auth
    off, nothing sealed or opened). The live API keys' hashes are kept in memory with the
    accounts.
    """

    def __init__(
        self, store: MetadataStore, library: Library, clock: IReactorTime,
        passwords: Passwords, signer: TokenSigner, data_dir: Path,
        key_secrets: ApiKeySecrets, admin_password: str | None = None,
        box: PasswordBox | None = None,
    ) -> None:
        self._store = store
        self._library = library
        self._clock = clock
        self.passwords = passwords
        self.signer = signer
        self._data_dir = data_dir
        self._admin_password = admin_password
        self._box = box
        self._key_secrets = key_secrets
        self.directory = Directory()
        self._api_keys: dict[str, str] = {}  # a live key's hash -> its user's id
        # Accounts deleted here: a session of one is over, not merely unknown (NotKnownYet).
        self._deleted: frozenset[str] = frozenset()
        self.limiter = LoginLimiter(clock)
        self.logins = 0
        self.login_failures = 0
        self.logins_limited = 0
        self._setup_code: str | None = None
        self._admin_check: LoopingCall | None = None
        self._creating_admin = False

    # the directory

    def load(self, rows: Iterable[Mapping[str, Any]],
             api_keys: Iterable[Mapping[str, Any]] | None = None,
             deleted: Iterable[str] | None = None) -> list[Clash]:
        """Rebuild the directory from ``rows`` (MetadataDB.users), the API keys from
        ``api_keys`` (MetadataDB.api_keys) and the deleted accounts from ``deleted``
        (MetadataDB.deleted_user_ids) if given; the clashes it resolved, logged, and on the
        leader written as renames."""
        if api_keys is not None:
            self._api_keys = {str(k["key_hash"]): str(k["user_id"]) for k in api_keys}
        if deleted is not None:
            self._deleted = frozenset(deleted)
        directory = Directory()
        clashes: list[Clash] = []
        for row in rows:
            user = user_of(row)
            if user is None:
                log.warn("user record {id} is not a whole account; ignored", id=row.get("id"))
                continue
            clashes += directory.put(user)
        self.directory = directory
        if len(directory) and self._setup_code is not None:
            self._forget_setup_code()  # the first admin was made (on the leader)
        for clash in clashes:
            log.warn("two accounts hold the name {name}: {keeper} (older) keeps it, {renamed}"
                     " becomes {new_name}", name=clash.keeper.username, keeper=clash.keeper.id,
                     renamed=clash.renamed.id, new_name=clash.renamed.username)
        if clashes and self._library.leadership.is_leader:
            _background(self._write_renames(clashes), "writing the renames of a name clash")
        return clashes

    async def reload(self) -> None:
        """Read every account and API key again (after ops touching them applied here)."""
        self.load(*await self._store.run(account_rows))

    def ops_applied(self, ops: Iterable[Op]) -> None:
        """Ops applied here from elsewhere: reload if any of them is an account's or a key's."""
        if any(op.entity in _ACCOUNT_ENTITIES for op in ops):
            _background(self.reload(), "reloading the accounts")

    async def _write_renames(self, clashes: list[Clash]) -> None:
        for clash in clashes:
            renamed = clash.renamed
            await self._library.write(None, _rename, renamed.id, renamed.username)
            log.info("renamed account {id} to {name} (name clash)", id=renamed.id,
                     name=renamed.username)
        await self.reload()

    # start-up

    async def started(self) -> None:
        """Once the replica is ACTIVE: load the accounts it now holds; while there are none,
        make the one-time setup code (logged, and written owner-only to the data dir), and
        with DISTPOTIFY_ADMIN_PASSWORD create ``admin`` as soon as this replica leads."""
        await self.reload()
        path = self._data_dir / SETUP_CODE_FILE
        if len(self.directory):
            path.unlink(missing_ok=True)
            return
        if self._admin_password is not None:
            self._admin_check = LoopingCall(self._ensure_admin)
            self._admin_check.clock = self._clock
            self._admin_check.start(ADMIN_CHECK_INTERVAL).addErrback(
                lambda f: log.failure("creating the first admin failed", f))
            return
        self._setup_code = secrets.token_urlsafe(12)
        where = f"also in {path}"
        try:
            _write_private(path, self._setup_code + "\n")
        except OSError as e:
            # A full disk must not stop the replica (it serves reads, and writes once space
            # returns); the code is in the log line below.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            where = f"not in {path}: it could not be written: {e.strerror or e}"
        log.info("no account exists yet: create the first admin with POST /auth/setup and the"
                 " setup code {code} ({where}; the leader's code is the one that counts)",
                 code=self._setup_code, where=where)

    def _forget_setup_code(self) -> None:
        self._setup_code = None
        (self._data_dir / SETUP_CODE_FILE).unlink(missing_ok=True)

    def stop(self) -> None:
        if self._admin_check is not None and self._admin_check.running:
            self._admin_check.stop()

    def _ensure_admin(self) -> Deferred[None] | None:
        if len(self.directory):
            self.stop()
            return None
        if self._creating_admin or not self._library.leadership.is_leader:
            return None
        self._creating_admin = True

        async def create() -> None:
            assert self._admin_password is not None
            try:
                await self._create(FIRST_ADMIN, self._admin_password, ADMIN, first=True)
                log.info("created the first admin {name} (DISTPOTIFY_ADMIN_PASSWORD)",
                         name=FIRST_ADMIN)
            except Exception as e:
                log.warn("could not create the first admin yet: {error}", error=str(e))
            finally:
                self._creating_admin = False

        return Deferred.fromCoroutine(create())

    # sessions

    def session(self, token: str) -> User:
        """The account a session token proves; InvalidToken if it proves none now,
        NotKnownYet if the token is genuine but names an account, or a session generation,
        this replica has not applied (on the leader that means deleted, or ended)."""
        claims = self.signer.check(token)
        user = self.directory.by_id(claims.user_id)
        if user is None and claims.user_id in self._deleted:
            raise InvalidToken("the account was deleted")
        if user is None:
            raise NotKnownYet("no such account here")
        if user.disabled:
            raise InvalidToken("the account is disabled")
        if claims.generation > user.generation:
            raise NotKnownYet("the session is newer than this replica's copy of the account")
        if user.generation != claims.generation:
            raise InvalidToken("the session was ended (logged out everywhere, or a new"
                               " password)")
        return user

    async def login(self, username: Any, password: Any) -> tuple[str, User]:
        """A new session token for ``username`` and its account; Unauthorized for a wrong
        name or password (or a disabled account), TooManyRequests while the name must wait,
        PasswordsBusy when too many checks are queued."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest("username and password are required strings")
        key = name_key(username)[:256]
        user = self.directory.by_name(username)
        usable = user is not None and not user.disabled
        stored = user.password_hash if usable and user is not None else None
        with self._attempt(key):
            matched = await self.passwords.verify(stored, password)
        if not matched or user is None:
            self.login_failures += 1
            self.limiter.failed(key)
            log.info("login refused for {name}", name=repr(username[:64]))
            raise Unauthorized("wrong username or password")
        self.limiter.succeeded(key)
        self.logins += 1
        leader = self._library.leadership.is_leader
        if self.passwords.needs_rehash(user.password_hash) and leader:
            _background(self._rehash(user, password), "storing a new hash of a password")
        if (leader and self._box is not None
                and not self._box.holds(user.id, user.subsonic_box, password)):
            # An account from before the box, or a box sealed under a key rotated out: its
            # password is known now, once.
            _background(self._seal(user, password), "sealing a password for Subsonic")
        return self.signer.issue(user.id, user.generation), user

    @contextlib.contextmanager
    def _attempt(self, key: str) -> Iterator[None]:
        """One password check for ``key``: TooManyRequests while the key must wait, or while
        as many checks of it are under way as it has failures left (guesses sent at once
        are not all checked before the first failure counts)."""
        wait = self.limiter.wait(key)
        if wait > 0 or not self.limiter.begin(key):
            self.logins_limited += 1
            raise TooManyRequests("too many failed password checks for this username lately;"
                                  " wait", retry_after=max(wait, 1.0))
        try:
            yield
        finally:
            self.limiter.end(key)

    async def _rehash(self, user: User, password: str) -> None:
        new_hash = await self.passwords.hash(password)
        await self._library.write(None, _update_user, user.id, {"password_hash": new_hash}, False)
        await self.reload()

    async def _seal(self, user: User, password: str) -> None:
        """Store ``password``, just proven by a login, in ``user``'s box: unless its password
        changed since (a new one, with its own box, may have been set meanwhile)."""
        sealed = await self._library.write(None, _seal_unless_changed, user.id,
                                           user.password_hash, self._sealed(user.id, password))
        await self.reload()
        if sealed.status == 200:
            log.info("sealed the Subsonic password of {name}", name=user.username)

    def _sealed(self, user_id: str, password: str) -> dict[str, Any]:
        """The fields that store ``password`` for Subsonic token auth. With it off, no box:
        the one the account may hold sealed the password this replaces, which would open
        again once token auth is switched back on."""
        if self._box is None:
            return {"subsonic_box": None}
        return {"subsonic_box": self._box.seal(user_id, password)}

    # Subsonic credentials (issue 18)

    def subsonic_password(self, user: User) -> str | None:
        """``user``'s password, for Subsonic token auth (``t = md5(password + s)``); None
        with --subsonic-token-auth off, before a box was stored (an account from before it,
        until its next login on the leader), or when the box does not open."""
        if self._box is None:
            return None
        current = self.directory.by_id(user.id) or user
        return self._box.open(user.id, current.subsonic_box)

    def user_by_api_key(self, key: str) -> User | None:
        """The account an OpenSubsonic API key belongs to; None for an unknown or revoked
        key, or a disabled or deleted account. Found by the key's hash (a dict lookup: no
        comparison against other keys' secrets to time)."""
        if not isinstance(key, str) or not key or len(key) > 256:
            return None
        user_id = self._api_keys.get(api_key_hash(key))
        user = None if user_id is None else self.directory.by_id(user_id)
        if user is None or user.disabled:
            return None
        return user

    async def api_keys_of(self, user: User) -> list[dict[str, Any]]:
        """``user``'s keys as the API shows them: id, name, created_at (never a secret)."""
        return await self._store.run(MetadataDB.api_keys_of, user.id)

    async def create_api_key(self, user: User, values: Mapping[str, Any],
                             key: IdempotencyKey | None = None) -> Outcome:
        """201 ``{"key", "apiKey"}``: a new key of ``user``, its secret shown in this answer.

        With an Idempotency-Key (the proxy sends one with every write) the key's id derives
        from it and its secret from the id (auth/apikeys.py), so a create applied on two
        leaders is one key, and a retry answers the same key and secret again: the stored
        outcome holds neither the secret nor its hash."""
        self._library.leadership.require_leader()
        _only(values, {"name"})
        name = values.get("name")
        if (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME
                or not _encodable(name)):
            raise BadRequest(f"name must be a non-empty string of at most {MAX_NAME}"
                             " characters")
        key_id = key.record_id() if key is not None else new_id()
        fields = {"user_id": user.id, "name": name.strip(),
                  "key_hash": api_key_hash(self._key_secrets.secret(key_id)),
                  "created_at": self._now(), "deleted": 0}
        outcome = await self._library.write(key, _create_api_key, key_id, fields)
        await self.reload()
        assert outcome.body is not None
        made = outcome.body["key"]["id"]
        if not outcome.replayed:
            log.info("API key {id} made for {name}", id=made, name=user.username)
        secret = await self._secret_of(made)
        return attrs.evolve(outcome, body={**outcome.body, "apiKey": secret})

    async def _secret_of(self, key_id: str) -> str:
        """The secret of the key ``key_id``: the one, under an accepted cluster key, whose
        hash its record holds (made under the key in use, or before a rotation: a replay
        answers the secret the key was made with)."""
        row = await self._store.run(MetadataDB.get_row, "api_keys", key_id)
        if row is None:  # its key row came first (anti-entropy): made under the key in use
            return self._key_secrets.secret(key_id)
        stored = row.fields.get("key_hash")
        for secret in self._key_secrets.candidates(key_id):
            if api_key_hash(secret) == stored:
                return secret
        raise Conflict("this API key was made under a cluster key no longer in use, so its"
                       " secret cannot be shown again (the key works until revoked)")

    async def delete_api_key(self, key_id: str, actor: Actor,
                             key: IdempotencyKey | None = None) -> Outcome:
        """200 ``{"key"}``: revoked; the owner's or an admin's (else 403), 404 if unknown."""
        self._library.leadership.require_leader()
        if not valid_uuid(key_id):
            raise NotFound(f"no API key {key_id}")
        outcome = await self._library.write(key, _delete_api_key, key_id, actor)
        await self.reload()
        return outcome

    # writes (the leader's)

    async def setup(self, values: Mapping[str, Any]) -> Outcome:
        """The first admin, once: 409 once any account exists, 403 with a wrong code."""
        self._library.leadership.require_leader()
        _only(values, {"username", "password", "setup_code"})
        if len(self.directory):
            raise Conflict("setup is done: the cluster has accounts")
        code = values.get("setup_code")
        if (self._setup_code is None or not isinstance(code, str)
                or not hmac.compare_digest(code.encode("utf-8", "surrogatepass"),
                                           self._setup_code.encode())):
            raise Forbidden("wrong setup code (the leader logs it, and writes it to its data"
                            f" dir's {SETUP_CODE_FILE})")
        outcome = await self._create(values.get("username"), values.get("password"), ADMIN,
                                     first=True)
        self._forget_setup_code()
        log.info("first admin created by setup")
        return outcome

    def request_key(self, text: str, method: bytes, uri: bytes, body: IO[bytes] | None
                    ) -> Deferred[IdempotencyKey]:
        """The key of an account write, its request digested without the password: the
        digest is kept with the outcome in every replica's database for a day, and an
        unsalted SHA-256 over a body holding a password is open to a dictionary, which the
        argon2id hash is there to prevent. The key is the caller's own already."""
        return self._library.request_key(text, method, uri, _without_password(body))

    async def create(self, values: Mapping[str, Any], key: IdempotencyKey | None = None
                     ) -> Outcome:
        """An account made by an admin: 201 ``{"user"}``, 409 if the name is taken. With an
        Idempotency-Key (the proxy sends one with every write) a retry answers the first
        outcome again, and the account's id derives from the key."""
        self._library.leadership.require_leader()
        _only(values, {"username", "password", "role"})
        return await self._create(values.get("username"), values.get("password"),
                                  _role(values.get("role", LISTENER)), key=key)

    async def _create(self, username: Any, password: Any, role: str, first: bool = False,
                      key: IdempotencyKey | None = None) -> Outcome:
        name = _username(username)
        password_hash = await self.passwords.hash(_new_password(password))
        fields = {"username": name, "name_key": name_key(name), "password_hash": password_hash,
                  "role": role, "generation": 0, "created_at": self._now(), "disabled": 0,
                  "deleted": 0}
        user_id = key.record_id() if key is not None else new_id()
        fields.update(self._sealed(user_id, password))
        outcome = await self._library.write(key, _create_user, user_id, fields, first)
        await self.reload()
        return outcome

    async def update(self, user_id: str, values: Mapping[str, Any],
                     key: IdempotencyKey | None = None) -> Outcome:
        """An admin's change: role, disabled, a new password (which ends every session)."""
        self._library.leadership.require_leader()
        _only(values, {"role", "disabled", "password"})
        fields: dict[str, Any] = {}
        if "role" in values:
            fields["role"] = _role(values["role"])
        if "disabled" in values:
            if not isinstance(values["disabled"], bool):
                raise BadRequest("disabled must be true or false")
            fields["disabled"] = int(values["disabled"])
        # Disabling ends every session for good: enabling again must not revive a token
        # (perhaps the stolen one the account was disabled for).
        bump = "password" in values or values.get("disabled") is True
        if "password" in values:
            fields["password_hash"] = await self.passwords.hash(
                _new_password(values["password"]))
            fields.update(self._sealed(_user_id(user_id), values["password"]))
        if not fields:
            raise BadRequest("nothing to change: give role, disabled or password")
        outcome = await self._library.write(key, _update_user, _user_id(user_id), fields, bump)
        await self.reload()
        return outcome

    async def delete(self, user_id: str, actor: Actor, key: IdempotencyKey | None = None
                     ) -> Outcome:
        self._library.leadership.require_leader()
        if user_id == actor.user_id:
            raise Conflict("an admin cannot delete their own account")
        outcome = await self._library.write(key, _delete_user, _user_id(user_id))
        await self.reload()
        return outcome

    async def logout_all(self, user: User, key: IdempotencyKey | None = None) -> Outcome:
        """End every session of ``user`` on every replica (once the bump replicates)."""
        self._library.leadership.require_leader()
        outcome = await self._library.write(key, _update_user, user.id, {}, True)
        await self.reload()
        return outcome

    async def change_password(self, user: User, values: Mapping[str, Any],
                              key: IdempotencyKey | None = None) -> Outcome:
        """The user's own change: the old password proves it is them; every session ends."""
        self._library.leadership.require_leader()
        _only(values, {"old_password", "password"})
        old = values.get("old_password")
        if not isinstance(old, str):
            raise BadRequest("old_password is required")
        new = _new_password(values.get("password"))
        # A stolen session must not make guessing the password cheaper than a login does.
        limited = user.key
        with self._attempt(limited):
            matched = await self.passwords.verify(user.password_hash, old)
        if not matched:
            self.login_failures += 1
            self.limiter.failed(limited)
            raise Forbidden("the old password is wrong")
        self.limiter.succeeded(limited)
        password_hash = await self.passwords.hash(new)
        outcome = await self._library.write(key, _update_user, user.id,
                                            {"password_hash": password_hash,
                                             **self._sealed(user.id, new)}, True)
        await self.reload()
        return attrs.evolve(outcome, status=204, body=None)

    def status(self) -> dict[str, int]:
        return {"users": len(self.directory), "logins": self.logins,
                "login_failures": self.login_failures, "logins_limited": self.logins_limited}

    def _now(self) -> str:
        moment = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a file left by an earlier start keeps its mode otherwise
        f.write(text)


def _background(coroutine: Any, what: str) -> None:
    d = Deferred.fromCoroutine(coroutine)
    d.addErrback(lambda f: log.failure("{what} failed", f, what=what))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_PASSWORDS = ("password", "old_password")


def _without_password(body: IO[bytes] | None) -> IO[bytes] | None:
    """A JSON object body with its "password" and "old_password" members left out (its
    other members in a canonical order); any other body as it is (refused before any write
    is keyed)."""
    if body is None:
        return None
    body.seek(0)
    raw = body.read(MAX_ACCOUNT_BODY + 1)
    body.seek(0)
    try:
        values = json.loads(raw) if len(raw) <= MAX_ACCOUNT_BODY else None
    except ValueError:
        values = None
    if not isinstance(values, dict) or not any(name in values for name in _PASSWORDS):
        return body
    kept = {name: value for name, value in values.items() if name not in _PASSWORDS}
    return io.BytesIO(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode())


def _only(values: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(values) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")


def _username(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("username is a required string")
    try:
        return check_username(value)
    except InvalidUsername as e:
        raise BadRequest(str(e)) from None


def _new_password(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("password is a required string")
    try:
        check_new_password(value)
    except WeakPassword as e:
        raise BadRequest(str(e)) from None
    return value


def _role(value: Any) -> str:
    if value not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    return str(value)


def _user_id(text: str) -> str:
    if not valid_uuid(text):
        raise NotFound(f"no user {text}")
    return text


# On the database thread: each decides and writes in one transaction.


def _live(db: MetadataDB, user_id: str) -> dict[str, Any]:
    row = db.get_row("users", user_id)
    if row is None or row.fields.get("deleted") or row.fields.get("username") is None:
        raise NotFound(f"no user {user_id}")
    return {"id": user_id, **row.fields}


def _shown(fields: Mapping[str, Any]) -> dict[str, Any]:
    user = user_of(fields)
    assert user is not None
    return public(user)


def _create_user(db: MetadataDB, user_id: str, fields: dict[str, Any], first: bool) -> Outcome:
    if first and db.user_count():
        raise Conflict("setup is done: the cluster has accounts")
    if db.get_row("users", user_id) is not None:
        # Its Idempotency-Key made it, and the key has expired since (else its outcome would
        # answer): written again, a deleted account would be live at generation 0, and its
        # old sessions with it. Its tombstone is kept for good (model.py).
        raise Conflict("this Idempotency-Key made an account already (deleted since, or"
                       " renamed): send the create with a new key")
    if db.user_named(fields["name_key"]) is not None:
        raise Conflict(f"the username {fields['username']} is taken")
    db.write([Change("users", user_id, fields)])
    return Outcome(201, {"user": _shown({"id": user_id, **fields})})


def _other_admins(db: MetadataDB, user_id: str) -> int:
    return sum(1 for u in db.users()
               if u["id"] != user_id and u["role"] == ADMIN and not u["disabled"])


def _update_user(db: MetadataDB, user_id: str, fields: dict[str, Any], bump: bool) -> Outcome:
    """Change an account; ``bump`` ends its sessions (a new generation). The last enabled
    admin is not demoted or disabled: nobody could manage the accounts any more."""
    current = _live(db, user_id)
    demoted = fields.get("role", ADMIN) != ADMIN or fields.get("disabled")
    if current["role"] == ADMIN and demoted and not _other_admins(db, user_id):
        raise Conflict("this is the last admin: make another one first")
    changes = dict(fields)
    if bump:
        changes["generation"] = int(current["generation"] or 0) + 1
    if changes:
        db.write([Change("users", user_id, changes)])
    return Outcome(200, {"user": _shown({**current, **changes})})


def _seal_unless_changed(db: MetadataDB, user_id: str, password_hash: str,
                         fields: dict[str, Any]) -> Outcome:
    """Write a box sealed at a login, if the account still has the password the login
    proved (204 and nothing written otherwise)."""
    current = _live(db, user_id)
    if current["password_hash"] != password_hash or not fields:
        return Outcome(204)
    db.write([Change("users", user_id, fields)])
    return Outcome(200)


def _delete_user(db: MetadataDB, user_id: str) -> Outcome:
    current = _live(db, user_id)
    if current["role"] == ADMIN and not current["disabled"] and not _other_admins(db, user_id):
        raise Conflict("this is the last admin: make another one first")
    # Its API keys go with it (they stopped working with the account already). Its tombstone
    # is kept for good: it keeps no password (neither the hash nor the box).
    changes = [Change("api_keys", k["id"], {"deleted": 1}) for k in db.api_keys_of(user_id)]
    db.write([*changes, Change("users", user_id, {"deleted": 1, "password_hash": None,
                                                  "subsonic_box": None})])
    return Outcome(204)


def _rename(db: MetadataDB, user_id: str, username: str) -> Outcome:
    _live(db, user_id)
    db.write([Change("users", user_id, {"username": username, "name_key": name_key(username)})])
    return Outcome(200)


def _create_api_key(db: MetadataDB, key_id: str, fields: dict[str, Any]) -> Outcome:
    _live(db, fields["user_id"])
    found = db.get_row("api_keys", key_id)
    if found is not None and (found.fields.get("deleted")
                              or found.fields.get("user_id") != fields["user_id"]):
        # Its Idempotency-Key made it, and it was revoked; the key has expired since (else
        # its outcome would answer). Made again, the revoked secret would work again: its
        # tombstone is kept for good (model.py). (Another account's key cannot share an id:
        # the key is scoped to the account; refused all the same.)
        raise Conflict("this Idempotency-Key made an API key that was revoked: send the"
                       " create with a new key")
    made: Mapping[str, Any] = fields
    if found is not None:  # made by this key already (its key row not here yet): the same
        made = found.fields  # key and secret
    elif len(db.api_keys_of(fields["user_id"])) >= MAX_API_KEYS:
        raise Conflict(f"a user holds at most {MAX_API_KEYS} API keys: revoke one first")
    else:
        db.write([Change("api_keys", key_id, fields)])
    return Outcome(201, {"key": {"id": key_id, "name": made["name"],
                                 "created_at": made["created_at"]}})


def _delete_api_key(db: MetadataDB, key_id: str, actor: Actor) -> Outcome:
    found = db.api_key(key_id)
    if found is None:
        raise NotFound(f"no API key {key_id}")
    if not actor.may_change(found["user_id"]):
        raise Forbidden("this API key belongs to another user")
    db.write([Change("api_keys", key_id, {"deleted": 1})])
    return Outcome(200, {"key": {"id": key_id, "name": found["name"],
                                 "created_at": found["created_at"]}})
