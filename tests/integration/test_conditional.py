"""Range and conditional requests on real processes: every row of the table in
tests/helpers/conditional.py sent to the real proxy in front of three real replicas and to a
replica directly, answered alike and never retried; and the same rows sent to nginx serving
the same bytes, which answers as we do except where the differences listed below are ours
by choice.

The replicas start from copies of one data dir, as in test_proxy.py: same songs, same ids.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.audio import make_wav
from tests.helpers.conditional import CASES, HUGE, Case, Target, check, send
from tests.helpers.proxy import ProxyProcess, clone_data_dir, seed_data_dir
from tests.helpers.replica import ReplicaProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                  else None)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@attrs.frozen
class Fronted:
    nodes: dict[int, ReplicaProcess]
    proxy: ProxyProcess
    stream: Target
    chunk: Target
    created: datetime.datetime


@pytest.fixture(scope="module")
def fronted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronted]:
    root = tmp_path_factory.mktemp("conditional")
    (root / "seed").mkdir()
    audio = make_wav(root / "song.wav", 300_000, seed=11).read_bytes()
    seed, songs = seed_data_dir(root / "seed", [(audio, "audio/wav")], "--chunk-size", "64K")
    song = songs[0]
    nodes = {i: clone_data_dir(seed, ReplicaProcess(i, root)) for i in (1, 2, 3)}
    proxy: ProxyProcess | None = None
    try:
        for node in nodes.values():
            node.start(wait=False)
        for node in nodes.values():
            node.wait_ready(timeout=60)
        proxy = ProxyProcess(root, list(nodes.values())).start()
        proxy.wait_view(lambda s: len(s["readers"]) == 2, timeout=30, what="two readers")
        chunk = nodes[1].get(f"/songs/{song['id']}").json()["chunks"][1]
        created = datetime.datetime.fromisoformat(song["created_at"]).replace(microsecond=0)
        modified = email.utils.format_datetime(created, usegmt=True)
        yield Fronted(
            nodes, proxy,
            Target(f"/songs/{song['id']}/stream", audio, f'"{song["sha256"]}"', modified),
            Target(f"/songs/{song['id']}/chunks/1", audio[65536:131072],
                   f'"{chunk["sha256"]}"', modified),
            created,
        )
    finally:
        if proxy is not None:
            proxy.kill()
        for node in nodes.values():
            node.kill()


def _no_tracebacks(fronted: Fronted) -> None:
    for node in fronted.nodes.values():
        log = node.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"node {node.node_id}: {log[-3000:]}"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("which", ["stream", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_request_is_answered_alike_by_the_proxy_and_a_replica(
    fronted: Fronted, case: Case, which: str, method: str
) -> None:
    target: Target = getattr(fronted, which)
    lines = case.render(target)
    before = fronted.proxy.status()["counters"]

    proxied = send(fronted.proxy.port, method, target.path, lines)
    direct = send(fronted.nodes[1].http_port, method, target.path, lines)

    check(proxied, case, target, method)
    check(direct, case, target, method)
    after = fronted.proxy.status()["counters"]
    # The replica's answer is the answer: a 304, 412 or 416 is never a reason to ask another.
    assert (after["retries"], after["unavailable"]) == (before["retries"], before["unavailable"])


def test_an_enormous_range_is_one_416_and_no_traceback(fronted: Fronted) -> None:
    target = fronted.stream
    before = fronted.proxy.status()["counters"]

    answers = [send(fronted.proxy.port, "GET", target.path, [("Range", value)])
               for value in (f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}", f"bytes={HUGE * 2}-")]

    assert [answer.status for answer in answers] == [416, 416, 416]
    assert all(a.headers["content-range"] == f"bytes */{target.size}" for a in answers)
    after = fronted.proxy.status()["counters"]
    assert after["retries"] == before["retries"]
    _no_tracebacks(fronted)


def test_any_range_through_the_proxy_is_200_206_with_its_slice_or_416(
    fronted: Fronted
) -> None:
    target = fronted.stream
    number = st.one_of(st.integers(0, 2 * target.size).map(str),
                       st.text("0123456789", min_size=1, max_size=5000))
    spec = st.one_of(st.builds("{}-{}".format, number, number), number.map("{}-".format),
                     number.map("-{}".format))
    ranges = st.builds(lambda unit, specs: f"{unit}={','.join(specs)}",
                       st.sampled_from(["bytes", "BYTES", "bytes ", "items"]),
                       st.lists(spec, min_size=1, max_size=2))
    if_ranges = st.one_of(st.none(), st.sampled_from([target.etag, f"W/{target.etag}",
                                                      target.modified, '"x"']))

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ranges, if_ranges)
    def answered_by_the_book(header: str, if_range: str | None) -> None:
        lines = [("Range", header)] + ([("If-Range", if_range)] if if_range else [])

        answer = send(fronted.proxy.port, "GET", target.path, lines)

        assert answer.status in (200, 206, 416), (answer.status, answer.body[:200])
        if answer.status == 206:
            match = _CONTENT_RANGE.match(answer.headers["content-range"])
            assert match is not None
            first, last, size = (int(group) for group in match.groups())
            assert size == target.size and answer.body == target.body[first:last + 1]
        elif answer.status == 200:
            assert answer.body == target.body

    answered_by_the_book()
    _no_tracebacks(fronted)


# nginx serving the same bytes: the differential test the table came from

@attrs.frozen
class Nginx:
    port: int
    stream: Target
    chunk: Target


@pytest.fixture(scope="module")
def nginx(fronted: Fronted, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    root = tmp_path_factory.mktemp("nginx")
    www = root / "www"
    www.mkdir()
    mtime = fronted.created.timestamp()
    for name, target in (("stream", fronted.stream), ("chunk", fronted.chunk)):
        (www / name).write_bytes(target.body)
        os.utime(www / name, (mtime, mtime))
    port = free_port()
    temp = "\n".join(f"    {kind}_temp_path {root / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"};
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    large_client_header_buffers 4 64k;
    if_modified_since before;  # RFC 9110 section 13.1.3 (nginx's default is exact)
    server {{
        listen 127.0.0.1:{port};
        root {www};
        default_type application/octet-stream;
    }}
}}
""")
    process = subprocess.Popen(
        [NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        def serving() -> Nginx | None:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"nginx exited {process.returncode}: {output}")
            answer = send(port, "HEAD", "/stream", [], timeout=2)
            etag = answer.headers.get("etag")
            if answer.status != 200 or etag is None:
                return None
            chunk_etag = send(port, "HEAD", "/chunk", [], timeout=2).headers["etag"]
            modified = answer.headers["last-modified"]
            return Nginx(port, attrs.evolve(fronted.stream, path="/stream", etag=etag,
                                            modified=modified),
                         attrs.evolve(fronted.chunk, path="/chunk", etag=chunk_etag,
                                      modified=modified))

        yield wait_until(serving, timeout=10, what="nginx to serve")
    finally:
        process.kill()
        process.wait(10)


# Rows where we answer otherwise than nginx 1.22, on purpose: RFC 9110 says what we do, or
# lets a server do either.
_MULTIPART = "several ranges: nginx sends multipart/byteranges; we send the whole body (14.2)"
_IGNORED = "an invalid range set: nginx rejects it (416), we ignore it (200); 14.2 allows both"
_LISTS = "field lines combine into one list (5.3); nginx refuses a repeated header with 400"
DIFFERENT_FROM_NGINX = {
    "two ranges: the whole body": _MULTIPART,
    "one satisfiable of two": _MULTIPART,
    # A last-pos or suffix-length past what nginx's off_t holds is a 416 there; 14.1.1 and
    # 14.1.3 make them "to the end" and "all of it".
    "enormous end": "nginx 416, 14.1.1: a last-pos past the end means the end",
    "enormous suffix": "nginx 416, 14.1.3: a suffix longer than the body means all of it",
    # Optional whitespace and empty list elements (5.6.1.2) are accepted; nginx takes spaces
    # only, and no empty element.
    "tab after =": "nginx 416: it skips spaces but not tabs",
    "trailing empty element": "nginx 416, 5.6.1.2: empty list elements are ignored",
    "leading empty elements": "nginx 416, 5.6.1.2: empty list elements are ignored",
    "last before first": _IGNORED,
    "no numbers": _IGNORED,
    "not a number": _IGNORED,
    "plus sign": _IGNORED,
    "hexadecimal": _IGNORED,
    "Range on two lines": "nginx reads the first line alone; combined, the set is invalid: 200",
    "If-None-Match on two lines": _LISTS,
    "If-Match on two lines": _LISTS,
    # 13.1.4: If-Unmodified-Since is ignored when If-Match is present, and when it is not
    # one valid HTTP-date; nginx answers 412 to all of these.
    "If-Unmodified-Since: not a date": "nginx 412, 13.1.4: not a date is ignored",
    "If-Unmodified-Since: enormous year": "nginx 412, 13.1.4: not a date is ignored",
    "If-Unmodified-Since: two dates": "nginx 412, 13.1.4: a list of dates is ignored",
    "If-Unmodified-Since ignored with If-Match": "nginx 412, 13.1.4: ignored with If-Match",
    # 13.1.3: If-Modified-Since with more than one member is ignored; nginx reads the first.
    "If-Modified-Since: two dates": "nginx 304, 13.1.3: a list of dates is ignored",
}


@pytest.mark.parametrize("which", ["stream", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_we_answer_as_nginx_serving_the_same_bytes(
    fronted: Fronted, nginx: Nginx, case: Case, which: str
) -> None:
    ours_target: Target = getattr(fronted, which)
    theirs_target: Target = getattr(nginx, which)

    ours = send(fronted.proxy.port, "GET", ours_target.path, case.render(ours_target))
    theirs = send(nginx.port, "GET", theirs_target.path, case.render(theirs_target))

    check(ours, case, ours_target)
    if case.name in DIFFERENT_FROM_NGINX:
        assert theirs.status != ours.status, f"nginx agrees now: {DIFFERENT_FROM_NGINX[case.name]}"
        return
    assert theirs.status == ours.status, f"nginx {theirs.status}, ours {ours.status}"
    assert theirs.headers.get("content-range") == ours.headers.get("content-range")
    if ours.status in (200, 206):
        assert theirs.body == ours.body
