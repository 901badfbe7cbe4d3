"""The cluster-internal /sync/ API through the real resource, in memory: its path segments and
its failures, answered in the same JSON shape as the public API's."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from distpotify.store.metadata import BUCKETS, MetadataDB
from tests.helpers.api import Answer, InMemoryReplica

MISSING = "00000000-0000-4000-8000-000000000000"
LETTERED = "5a5e1c8e-3c3b-4e6a-9d7e-2f0b8e1d4c11"


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize("bucket", ["0", "7", str(BUCKETS - 1), "%30"])
def test_every_bucket_answers_its_rows(api: InMemoryReplica, bucket: str) -> None:
    answer = api.get(f"/sync/digest/{bucket}")

    assert answer.status == 200, answer.body
    assert answer.json() == {"rows": []}


def test_a_bucket_answers_the_rows_it_holds(api: InMemoryReplica) -> None:
    playlist = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    bucket = next(b for b in range(BUCKETS) if api.db.bucket_rows(b))

    rows = api.get(f"/sync/digest/{bucket}").json()["rows"]

    assert [row[:2] for row in rows] == [["playlists", playlist]]


@pytest.mark.parametrize("bucket", [
    pytest.param(str(BUCKETS), id="BUCKETS"),
    pytest.param("007", id="leading zeros"),
    pytest.param("00", id="two zeros"),
    pytest.param("+1", id="plus"),
    pytest.param("-1", id="minus"),
    pytest.param("%201", id="leading space"),
    pytest.param("1.0", id="decimal point"),
    pytest.param("0x1", id="hex"),
    pytest.param("\u00b2", id="superscript two"),  # "²".isdigit(), and int("²") raised: a 500
    pytest.param("%C2%B2", id="encoded superscript two"),
    pytest.param("\u0663", id="arabic-indic three"),  # int() took it: bucket 3 by another name
    pytest.param("\uff13", id="fullwidth three"),
    pytest.param("9" * 30, id="huge"),
    pytest.param("0" * 5000, id="thousands of zeros"),
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dots"),
    pytest.param("%2E%2E", id="encoded dots"),
    pytest.param("1%2F2", id="encoded slash"),
    pytest.param("%00", id="nul"),
])
def test_a_hostile_bucket_is_404(api: InMemoryReplica, bucket: str) -> None:
    assert_error(api.get(f"/sync/digest/{bucket}"), 404, "not_found")


def test_a_path_that_is_not_utf8_is_400(api: InMemoryReplica) -> None:
    assert_error(api.get("/sync/digest/%FF"), 400, "bad_request")


def test_an_unknown_sync_path_is_a_json_404(api: InMemoryReplica) -> None:
    assert_error(api.get("/sync/nowhere"), 404, "not_found")


def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(api: InMemoryReplica) -> None:
    answer = api.call("DELETE", "/sync/digest")

    assert_error(answer, 405, "method_not_allowed")
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_an_unexpected_failure_is_a_json_500_without_details(
    api: InMemoryReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: MetadataDB) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(MetadataDB, "digest", broken)

    answer = api.get("/sync/digest")

    assert_error(answer, 500, "internal")
    assert b"secret" not in answer.body


@pytest.mark.parametrize("key", [
    pytest.param(f"chunks:{MISSING}/" + "0" * 5000, id="index of 5000 digits"),  # was a 500
    pytest.param(f"chunks:{MISSING}/\u00b2", id="superscript index"),
    pytest.param(f"chunks:{MISSING}/007", id="leading zeros"),
    pytest.param(f"chunks:{MISSING}/{2**31}", id="index 2**31"),
    pytest.param(f"songs:{LETTERED.upper()}", id="uppercase id"),
    pytest.param("songs:", id="empty id"),
    pytest.param(f"nothing:{MISSING}", id="unknown entity"),
])
def test_a_hostile_row_key_is_400(api: InMemoryReplica, key: str) -> None:
    assert_error(api.get(f"/sync/rows?key={quote(key)}"), 400, "bad_request")
