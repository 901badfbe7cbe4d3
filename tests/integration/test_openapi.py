"""schemathesis against a real cluster behind the proxy, from docs/openapi.yaml: generated
requests, valid and invalid, to every operation, the account routes included. The cluster
runs --auth on, its first admin made by DISTPOTIFY_ADMIN_PASSWORD (tests/helpers/fronted.py);
most cases carry that admin's bearer token, a seeded few none (401). Checked for each answer:
no 5xx; its status, content type, headers and body as described; and a write that was
refused left the library and the accounts as they were.

The admin the test uses stays usable: no generated request is aimed at its account (PATCH and
DELETE /users/{id} are pointed at other accounts only; random ids name none), and the two
operations that end the caller's own sessions (POST /auth/logout-all, PUT /auth/password)
are sent with the token of a throwaway listener made for the case. A wrong old password
counts against that listener's name only. The login limiter answers 429 once the test's
address failed a few logins: a described answer like any other.

Bounded: MAX_EXAMPLES generated examples per operation (plus schemathesis's coverage cases,
a deterministic few dozen: each boundary and each kind of invalid value once), and a
timeout per test. Repeatable: Hypothesis is derandomized (no example database), and which
real records a case is pointed at is drawn from random.Random(SEED).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport import SerializationContext
from schemathesis.transport.serialization import serialize_binary

from proxy.openapi import load_description
from tests.helpers.audio import make_wav
from tests.helpers.covers import picture
from tests.helpers.fronted import ADMIN_NAME, Fronted, bearer
from tests.helpers.replica import killed_at_end, request

# The timeout is per test: the first (the cluster starts) takes about 15 s, each operation
# a few seconds; the whole module about two minutes on 2 loaded cores.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
# More for a deeper run by hand: DISTPOTIFY_OPENAPI_EXAMPLES=200 pytest tests/integration/...
MAX_EXAMPLES = int(os.environ.get("DISTPOTIFY_OPENAPI_EXAMPLES", "12"))
SEED = 17

# A request with invalid data must be refused: by the application (400, 404, 405, 409, 415,
# 422), or, a too long one, by the HTTP channel before it (413, 414, 431); or before its data
# is looked at: a case sent without a token (401), the setup code checked before the body's
# fields (403), a login from an address that must wait (429).
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 414, 415, 422, 429, 431,
                          "5xx"]}}})

SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=CONFIG)
# The operations that end every session of their caller: sent as a throwaway listener.
ENDS_OWN_SESSIONS = {("POST", "/auth/logout-all"), ("PUT", "/auth/password")}
THROWAWAY_PASSWORD = "throwaway-password"
# The share of cases sent without a token.
ANONYMOUS = 0.15

# (operation, status) of every answer, for the summary at the end.
ANSWERS: Counter[tuple[str, int]] = Counter()


@schemathesis.serializer("audio/*", "application/ogg", "image/*")
def raw_audio(context: SerializationContext, body: Any) -> dict[str, Any]:
    """An upload's raw body, sent as the bytes it is (schemathesis knows octet-stream's)."""
    return {"data": serialize_binary(body)}


# The picture aimed album cover cases set (then named by an album: /covers/<its sha256>).
COVER = picture("PNG", size=(40, 40), color=(1, 120, 200))


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class Library:
    """The cluster under test, its library seeded, seen through the leader directly."""

    def __init__(self, fronted: Fronted) -> None:
        self.fronted = fronted
        self.base_url = f"http://127.0.0.1:{fronted.proxy.port}"
        self.choices = random.Random(SEED)
        self.token = fronted.admin().headers["Authorization"].removeprefix("Bearer ")
        self.admin_id = self._json_of(request(fronted.proxy.port, "GET", "/auth/me", None,
                                              bearer(self.token)))["user"]["id"]
        leader_id = fronted.proxy_follows()
        self.leader = fronted.cluster.nodes[leader_id]
        self.uploads = 0
        self.throwaways = 0
        self.applied = ""  # a version every replica applied
        self.body: bytes | None = None  # what ``aim`` chose to send as the case's body
        self.replenish()

    @staticmethod
    def _json_of(answer: Any) -> Any:
        assert answer.status == 200, (answer.status, answer.body)
        return answer.json()

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> Any:
        answer = request(self.fronted.proxy.port, method, path, body,
                         {"Content-Type": content_type, **bearer(self.token)})
        assert answer.status in (200, 201), (method, path, answer.status, answer.body)
        self.applied = answer.headers["x-distpotify-version"]
        return answer.json()

    def replenish(self) -> dict[str, Any]:
        """The listing, once it holds two songs and a playlist with an item again (the
        generated deletes take them away); uploads a song and makes a playlist if not."""
        listing = self.listing()
        while len(listing["songs"]["songs"]) < 2:
            self.uploads += 1
            wav = make_wav(self.fronted.cluster.root / "seed.wav", 40 * 1024,
                           seed=1000 + self.uploads)
            self._send("POST", f"/songs?title=seed%20{self.uploads}", wav.read_bytes(),
                       "audio/wav")
            listing = self.listing()
        if not any(playlist["items"] for playlist in listing["playlists"]):
            playlist = self._send("POST", "/playlists", b'{"name": "seeded"}',
                                  "application/json")["playlist"]["id"]
            song = listing["songs"]["songs"][0]["id"]
            self._send("POST", f"/playlists/{playlist}/items",
                       f'{{"song_id": "{song}"}}'.encode(), "application/json")
            listing = self.listing()
        return listing

    def _get(self, path: str) -> Any:
        answer = request(self.leader.http_port, "GET", path, None, bearer(self.token))
        assert answer.status == 200, (path, answer.status, answer.body)
        return answer.json()

    def listing(self) -> dict[str, Any]:
        """Every song, every playlist with its items, and every account, as the leader
        holds them now."""
        songs = self._get("/songs?limit=500")
        playlists = [self._get(f"/playlists/{p['id']}")["playlist"]
                     for p in self._get("/playlists")["playlists"]]
        return {"songs": songs, "playlists": playlists, "users": self._get("/users")["users"]}

    def throwaway(self) -> str:
        """The session token of a new listener, made and logged in at the leader directly
        (the proxy's login limit counts the test's address)."""
        self.throwaways += 1
        name = f"throwaway{self.throwaways}"
        made = request(self.leader.http_port, "POST", "/users",
                       f'{{"username": "{name}", "password": "{THROWAWAY_PASSWORD}"}}'.encode(),
                       {"Content-Type": "application/json", **bearer(self.token)})
        assert made.status == 201, (made.status, made.body)
        login = request(self.leader.http_port, "POST", "/auth/login",
                        f'{{"username": "{name}", "password": "{THROWAWAY_PASSWORD}"}}'.encode(),
                        {"Content-Type": "application/json"})
        token: str = self._json_of(login)["token"]
        return token

    def authorize(self, case: Case) -> None:
        """The case's credentials: none for a seeded few, a throwaway listener's for the
        operations that end the caller's sessions, else the test's admin's."""
        if case.headers is None:
            case.headers = CaseInsensitiveDict()
        case.headers.pop("Authorization", None)
        if self.choices.random() < ANONYMOUS:
            return
        operation = (case.method.upper(), case.operation.path)
        token = self.throwaway() if operation in ENDS_OWN_SESSIONS else self.token
        case.headers["Authorization"] = f"Bearer {token}"

    def transport(self) -> dict[str, Any]:
        """What the aimed case sends instead of its generated body, if anything (once)."""
        body, self.body = self.body, None
        return {} if body is None else {"data": body}

    def aim(self, case: Case) -> None:
        """Point about half of the valid cases that name a record at one that exists (random
        UUIDs alone would only ever find 404s), and half of the valid uploads at real audio
        (random bytes are all 415s), by the module's seeded choices."""
        if case.meta is not None and case.meta.generation.mode is not GenerationMode.POSITIVE:
            return
        if case.operation.path == "/songs" and case.method.upper() == "POST":
            if self.choices.random() < 0.5:
                seed = self.choices.randrange(4)  # now and then the same bytes again: 200
                wav = make_wav(self.fronted.cluster.root / "upload.wav", 20 * 1024, seed=seed)
                if isinstance(case.body, dict):
                    case.body["file"] = wav.read_bytes()
                else:
                    case.body = wav.read_bytes()
            return
        if case.operation.path == "/auth/login" and isinstance(case.body, dict):
            if self.choices.random() < 0.5:  # a real account's name and password: 200
                self.throwaway()
                case.body.update(username=f"throwaway{self.throwaways}",
                                 password=THROWAWAY_PASSWORD)
            return
        if (case.operation.path == "/albums/{album_id}/cover" and case.method.upper() == "PUT"
                and _valid_throughout(case) and self.choices.random() < 0.5):
            # A real picture (200 when aimed at a real album below), sent in the generated
            # body's stead: schemathesis would take raw bytes in the case for invalid data.
            self.body = COVER
        headers = case.headers or {}
        if "X-Distpotify-Min-Version" in headers and self.choices.random() < 0.5:
            headers["X-Distpotify-Min-Version"] = self.applied  # a valid one: served
        names = set(case.path_parameters or {})
        if not names or self.choices.random() < 0.5:
            return
        listing = self.replenish()
        songs = [song["id"] for song in listing["songs"]["songs"]]
        lists = [p for p in listing["playlists"] if p["items"]] or listing["playlists"]
        assert case.path_parameters is not None
        if "album_id" in names and songs:
            case.path_parameters["album_id"] = self.choices.choice(
                listing["songs"]["songs"])["album_id"]
        if "sha256" in names:
            case.path_parameters["sha256"] = hashlib.sha256(COVER).hexdigest()
        if "song_id" in names and songs:
            case.path_parameters["song_id"] = self.choices.choice(songs)
            if "index" in names:
                case.path_parameters["index"] = self.choices.choice([0, 1, 2, 3])
        if "playlist_id" in names and lists:
            chosen = self.choices.choice(lists)
            case.path_parameters["playlist_id"] = chosen["id"]
            if "item_id" in names and chosen["items"]:
                case.path_parameters["item_id"] = self.choices.choice(chosen["items"])["id"]
        if isinstance(case.body, dict) and "song_id" in case.body and songs:
            case.body["song_id"] = self.choices.choice(songs)
        # Never the test's admin (see the module's docstring): another account, or none.
        others = [u["id"] for u in listing["users"] if u["id"] != self.admin_id]
        if "user_id" in names:
            case.path_parameters["user_id"] = (self.choices.choice(others) if others
                                               else "00000000-0000-4000-8000-000000000000")


def _valid_throughout(case: Case) -> bool:
    """No part of the case is generated invalid (a coverage case of a valid mode may still
    carry one invalid header): a real picture would make its refusal an acceptance."""
    components = case.meta.components.values() if case.meta is not None else ()
    return all(info.mode is GenerationMode.POSITIVE for info in components)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    root = tmp_path_factory.mktemp("openapi")
    with (
        killed_at_end() as started,
        Fronted(root, started, "--chunk-size", "16K", proxy_args=("--check-timeout", "3"),
                auth=True) as fronted,
    ):
        yield Library(fronted)


def test_the_proxy_serves_the_description(library: Library) -> None:
    answer = request(library.fronted.proxy.port, "GET", "/openapi.json")

    assert answer.status == 200
    assert answer.json() == load_description(ROOT / "docs" / "openapi.yaml")


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_as_described_and_refusals_change_nothing(
        case: Case, library: Library) -> None:
    library.aim(case)
    library.authorize(case)
    write = case.method.upper() not in ("GET", "HEAD")
    before = library.listing() if write else None

    sent = library.transport()
    response = case.call(base_url=library.base_url, timeout=30, **sent)
    ANSWERS[f"{case.method.upper()} {case.operation.path}", response.status_code] += 1
    case.validate_response(response, checks=CHECKS, transport_kwargs=sent)

    if write and response.status_code >= 400:
        assert library.listing() == before, f"{case.method} {case.path} was refused" \
            f" ({response.status_code}) but changed the library or the accounts"
    assert request(library.fronted.proxy.port, "GET", "/auth/me", None,
                   bearer(library.token)).json()["user"]["username"] == ADMIN_NAME, \
        "the test's admin is no longer usable"


def test_summary() -> None:
    """What the run above answered, operation by operation (shown with -s)."""
    operations: dict[str, list[str]] = {}
    for (operation, status), count in sorted(ANSWERS.items()):
        operations.setdefault(operation, []).append(f"{status}x{count}")
    for operation, statuses in operations.items():
        print(f"{operation:45} {' '.join(statuses)}")
