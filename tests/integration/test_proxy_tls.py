"""The real proxy serving https itself, on an ``ssl:`` endpoint with a certificate made in the
test, beside a plain ``tcp:`` one (--listen, two at once): curl and Python's ssl stream a song
byte-exact, the certificate is really checked, HSTS only over https, and a TLS handshake that
stalls is timed out like a stalled request."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers.audio import in_ci, make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import STARTUP, ReplicaProcess, free_port, request
from tests.helpers.tls import Certificates, make_certificates

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIB = 1024 * 1024
HEADER_TIMEOUT = 3.0


@attrs.frozen
class Stack:
    proxy: ProxyProcess
    https_port: int
    certificates: Certificates
    song: dict[str, Any]
    audio: bytes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(root / "certs")
    audio = make_wav(root / "song.wav", 6 * MIB, seed=443).read_bytes()
    replica = ReplicaProcess(1, root)
    https_port = free_port()
    proxy = ProxyProcess(root, [replica])
    proxy.extra = ("--header-timeout", str(HEADER_TIMEOUT), "--listen",
                   f"tcp:{proxy.port}:interface=127.0.0.1,"
                   f"{certificates.ssl_description(https_port)}")
    try:
        replica.start()
        answer = request(replica.http_port, "POST", "/songs", audio,
                         {"Content-Type": "audio/wav"}, timeout=60)
        assert answer.status == 201, answer.body
        proxy.start()
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 1, timeout=STARTUP)
        yield Stack(proxy, https_port, certificates, answer.json()["song"], audio)
    finally:
        proxy.kill()
        replica.kill()


def https(stack: Stack, path: str, headers: dict[str, str] | None = None,
          host: str = "127.0.0.1") -> tuple[http.client.HTTPResponse, bytes]:
    context = ssl.create_default_context(cafile=str(stack.certificates.ca))
    conn = http.client.HTTPSConnection(host, stack.https_port, context=context, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pythons_ssl_streams_a_song_byte_exact_and_by_range(stack: Stack) -> None:
    path = f"/songs/{stack.song['id']}/stream"

    whole, body = https(stack, path)
    part, tail = https(stack, path, {"Range": f"bytes={MIB}-"}, host="localhost")

    assert whole.status == 200 and sha256(body) == sha256(stack.audio)
    assert part.status == 206 and tail == stack.audio[MIB:]
    assert whole.getheader("X-Served-By") == "1"


def test_curl_streams_a_song_byte_exact(stack: Stack, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if in_ci():
            pytest.fail("curl is missing, and CI must run this test")
        pytest.skip("needs curl (apt-get install curl)")
    out = tmp_path / "song.wav"

    result = subprocess.run(
        [curl, "--silent", "--show-error", "--fail", "--cacert", str(stack.certificates.ca),
         "--output", str(out), "--write-out", "%{http_code} %{scheme}",
         f"https://localhost:{stack.https_port}/songs/{stack.song['id']}/stream"],
        capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.lower() == "200 https"
    assert sha256(out.read_bytes()) == sha256(stack.audio)


def test_a_client_that_does_not_trust_the_certificate_refuses_it(stack: Stack) -> None:
    context = ssl.create_default_context()  # the system's CAs: not the test's
    with socket.create_connection(("127.0.0.1", stack.https_port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="localhost")


def test_hsts_over_https_only_and_the_browser_headers_on_both(stack: Stack) -> None:
    secure, _ = https(stack, "/")
    plain = stack.proxy.get("/")

    assert secure.getheader("Strict-Transport-Security") == "max-age=31536000"
    assert "strict-transport-security" not in plain.headers
    for headers in ({k.lower(): v for k, v in secure.getheaders()}, plain.headers):
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-content-type-options"] == "nosniff"
    assert b"<!doctype html>" in plain.body.lower()


def test_both_listeners_are_logged(stack: Stack) -> None:
    log = stack.proxy.log()

    assert f"tcp:{stack.proxy.port}:interface=127.0.0.1 and ssl:{stack.https_port}" in log


def test_a_stalled_tls_handshake_is_closed_within_the_header_timeout(stack: Stack) -> None:
    stalled = socket.create_connection(("127.0.0.1", stack.https_port), timeout=30)
    started = time.monotonic()

    with contextlib.suppress(ConnectionResetError):
        while stalled.recv(4096):
            pass

    assert time.monotonic() - started <= HEADER_TIMEOUT + 1.0
    stalled.close()
