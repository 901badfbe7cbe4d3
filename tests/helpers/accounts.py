"""Accounts on an in-memory replica with ``--auth on``: the first admin made through setup,
listeners made by it, and the headers their sessions send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from distpotify.accounts import SETUP_CODE_FILE
from tests.helpers.api import Answer, InMemoryReplica

ADMIN_PASSWORD = "admin-password-1"
LISTENER_PASSWORD = "listener-password-1"


@attrs.frozen
class Session:
    """A logged-in account: its id, name and token."""

    id: str
    username: str
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"distpotify_session={self.token}"}


def setup_code(data_dir: Path) -> str:
    return (data_dir / SETUP_CODE_FILE).read_text().strip()


def call(replica: InMemoryReplica, method: str, path: str, value: Any = None,
         headers: dict[str, str] | None = None) -> Answer:
    """An unsigned request (a client's, not the cluster's) that sends no cookie but those in
    ``headers``, with a JSON body if ``value``."""
    body = None if value is None else json.dumps(value).encode()
    sent = dict(headers or {})
    if value is not None:
        sent["Content-Type"] = "application/json"
    return replica.call(method, path, body, sent, signed=False, cookies=False)


def login(replica: InMemoryReplica, username: str, password: str) -> Session:
    answer = call(replica, "POST", "/auth/login", {"username": username, "password": password})
    assert answer.status == 200, answer.body
    found = answer.json()
    return Session(found["user"]["id"], found["user"]["username"], found["token"])


def first_admin(replica: InMemoryReplica, data_dir: Path, username: str = "root") -> Session:
    answer = call(replica, "POST", "/auth/setup",
                  {"username": username, "password": ADMIN_PASSWORD,
                   "setup_code": setup_code(data_dir)})
    assert answer.status == 201, answer.body
    return login(replica, username, ADMIN_PASSWORD)


def listener(replica: InMemoryReplica, admin: Session, username: str) -> Session:
    answer = call(replica, "POST", "/users",
                  {"username": username, "password": LISTENER_PASSWORD, "role": "listener"},
                  admin.bearer)
    assert answer.status == 201, answer.body
    return login(replica, username, LISTENER_PASSWORD)
