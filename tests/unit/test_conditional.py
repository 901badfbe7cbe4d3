"""Range and conditional requests on a replica's resource, in memory (StubTreq): every row of
the table in tests/helpers/conditional.py on the stream and the chunk path, HEAD answered as
GET without the body, and any Range or If-Range header answered 200, 206 or 416, never 5xx.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.api import InMemoryReplica
from tests.helpers.audio import make_wav
from tests.helpers.conditional import CASES, Case, Target, check
from tests.helpers.replica import Response

CREATED = 1_700_000_000.4  # 2023-11-14T22:13:20.400Z: Last-Modified drops the fraction
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@attrs.frozen
class Served:
    api: InMemoryReplica
    stream: Target
    chunk: Target


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("conditional")
    api = InMemoryReplica(root, chunk_size=4096)
    api.clock.advance(CREATED)
    data = make_wav(root / "song.wav", 20_000, seed=3).read_bytes()
    answer = api.upload(data, "audio/wav")
    assert answer.status == 201, answer.body
    song = api.get(f"/songs/{answer.json()['song']['id']}").json()
    chunk = song["chunks"][1]
    return Served(
        api,
        Target(f"/songs/{song['id']}/stream", data, f'"{song["sha256"]}"', LAST_MODIFIED),
        Target(f"/songs/{song['id']}/chunks/1", data[4096:8192], f'"{chunk["sha256"]}"',
               LAST_MODIFIED),
    )


def ask(api: InMemoryReplica, method: str, path: str,
        lines: Sequence[tuple[str, str]]) -> Response:
    """The request with these header lines; a name given twice is sent as two lines."""
    headers: dict[str, list[str]] = {}
    for name, value in lines:
        headers.setdefault(name, []).append(value)
    return api.call(method, path, headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["stream", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_request_gets_the_answer_rfc_9110_gives(served: Served, case: Case,
                                                     which: str) -> None:
    target: Target = getattr(served, which)

    answer = ask(served.api, "GET", target.path, case.render(target))

    check(answer, case, target, raw_headers=False)


@pytest.mark.parametrize("which", ["stream", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_head_is_answered_as_get_without_the_body(served: Served, case: Case,
                                                  which: str) -> None:
    target: Target = getattr(served, which)
    lines = case.render(target)

    get, head = (ask(served.api, method, target.path, lines) for method in ("GET", "HEAD"))

    check(head, case, target, method="HEAD", raw_headers=False)
    # The client hides Content-Length of a body it read; the wire's is checked through the proxy.
    assert _comparable(head.headers) == _comparable(get.headers)


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "content-length")}


def test_a_304_checks_no_chunk_file(tmp_path: Path) -> None:
    api = InMemoryReplica(tmp_path, chunk_size=4096)
    song = api.upload(make_wav(tmp_path / "song.wav", 20_000).read_bytes()).json()["song"]
    for path in api.chunks.root.iterdir():
        path.unlink()  # no peer to repair from: any read of a chunk would be a 503

    stream = api.get(f"/songs/{song['id']}/stream", {"If-None-Match": f'"{song["sha256"]}"'})
    chunk = api.get(f"/songs/{song['id']}/chunks/0", {"If-None-Match": "*"})
    missing = api.get(f"/songs/{song['id']}/chunks/0")

    assert (stream.status, chunk.status, missing.status) == (304, 304, 503)
    assert "etag" not in missing.headers and "cache-control" not in missing.headers


def test_a_chunk_without_its_song_row_is_served_without_last_modified(tmp_path: Path) -> None:
    api = InMemoryReplica(tmp_path, chunk_size=4096)
    song = api.upload(make_wav(tmp_path / "song.wav", 20_000).read_bytes()).json()["song"]
    api.db._conn.execute("DELETE FROM songs WHERE id = ?", (song["id"],))
    api.db._conn.commit()

    answer = api.get(f"/songs/{song['id']}/chunks/0",
                     {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})

    assert answer.status == 200 and "last-modified" not in answer.headers


def test_last_modified_is_never_later_than_the_date_of_the_answer(tmp_path: Path) -> None:
    api = InMemoryReplica(tmp_path, chunk_size=4096)
    api.clock.advance(4_102_444_800)  # the leader's clock says 2100
    song = api.upload(make_wav(tmp_path / "song.wav", 20_000).read_bytes()).json()["song"]

    answer = api.get(f"/songs/{song['id']}/stream")

    assert answer.headers["last-modified"] == answer.headers["date"]


# any Range header at all

_number = st.one_of(
    st.integers(0, 30_000).map(str),  # around the sizes served: inside and past the end
    st.text("0123456789", min_size=1, max_size=6000),  # leading zeros, past int()'s limit
)
# Well-formed single ranges, in any case and spacing...
_single = st.builds(
    lambda unit, space, spec: f"{unit}={space}{spec}",
    st.sampled_from(["bytes", "BYTES", "Bytes"]),
    st.sampled_from(["", " ", "\t"]),
    st.one_of(st.builds("{}-{}".format, _number, _number), _number.map("{}-".format),
              _number.map("-{}".format)),
)
# ...and anything shaped like a Range: other units, several ranges, empty ones, odd dashes.
_spec = st.tuples(st.one_of(_number, st.just("")),
                  st.sampled_from(["-", " - ", "--", "", "-\t"]),
                  st.one_of(_number, st.just(""))).map("".join)
_range_like = st.builds(
    lambda unit, equals, specs, comma: unit + equals + comma.join(specs),
    st.sampled_from(["bytes", "BYTES", "items", " bytes", ""]),
    st.sampled_from(["=", " = ", "= ", ""]),
    st.lists(_spec, max_size=4),
    st.sampled_from([",", ", ", " ,", ",,"]),
)
# What HTTP/1.1 can carry in a field value: no control characters.
_field_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    blacklist_characters="\x7f"), max_size=60)


@pytest.mark.parametrize("which", ["stream", "chunk"])
def test_any_range_header_is_answered_200_206_with_its_slice_or_416(
    served: Served, which: str
) -> None:
    target: Target = getattr(served, which)
    if_ranges = st.one_of(st.none(), _field_text,
                          st.sampled_from([target.etag, f"W/{target.etag}", LAST_MODIFIED]))

    @settings(max_examples=250, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(_single, _range_like, _field_text), if_ranges)
    def answered_by_the_book(range_header: str, if_range: str | None) -> None:
        lines = [("Range", range_header)] + ([("If-Range", if_range)] if if_range else [])

        get = ask(served.api, "GET", target.path, lines)
        head = ask(served.api, "HEAD", target.path, lines)

        assert get.status in (200, 206, 416), (get.status, get.body[:200])
        if get.status == 200:
            assert get.body == target.body
        elif get.status == 206:
            match = _CONTENT_RANGE.match(get.headers["content-range"])
            assert match is not None
            first, last, size = (int(group) for group in match.groups())
            assert size == target.size and 0 <= first <= last < size
            assert get.body == target.body[first:last + 1]
        else:
            assert get.headers["content-range"] == f"bytes */{target.size}"
            assert "etag" not in get.headers
        assert head.status == get.status and head.body == b""
        assert _comparable(head.headers) == _comparable(get.headers)

    answered_by_the_book()
