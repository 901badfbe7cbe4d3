"""The web player over https in Chromium: the proxy on an ``ssl:`` endpoint with a certificate
made in the test (this test's browser context alone told to accept it), under its
Content-Security-Policy. Browsing, playing, uploading and the cluster view log no console
error, so nothing the player does is refused by its policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PlayerPage, Stack, player_page
from tests.helpers.audio import make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import STARTUP, free_port
from tests.helpers.tls import make_certificates

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) before any test body runs
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECONDS_OF_AUDIO = 6 * 44100 * 2 * 2


@pytest.fixture(scope="module")
def https_url(shared_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second proxy in front of the shared cluster, serving https (and http, for waiting)."""
    root = tmp_path_factory.mktemp("https")
    certificates = make_certificates(root / "certs")
    port = free_port()
    proxy = ProxyProcess(root, list(shared_stack.cluster.nodes.values()))
    proxy.extra = ("--listen", f"tcp:{proxy.port}:interface=127.0.0.1,"
                               f"{certificates.ssl_description(port)}")
    try:
        proxy.start()
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 3, timeout=STARTUP)
        yield f"https://localhost:{port}/"
    finally:
        proxy.kill()


@pytest.fixture(scope="module")
def song(shared_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = make_wav(tmp_path_factory.mktemp("songs") / "secure.wav", SECONDS_OF_AUDIO, seed=8)
    uploaded = shared_stack.upload(path, "audio/wav", title="Secure Channel",
                                   artist="The Handshakes")
    shared_stack.wait_replicated(uploaded)
    return uploaded


@pytest.fixture
def secure_player(browser: Any, https_url: str, request: pytest.FixtureRequest
                  ) -> Iterator[PlayerPage]:
    yield from player_page(browser, https_url, request, {"width": 1280, "height": 800},
                           ignore_https_errors=True)


def test_the_player_is_served_over_https_with_its_security_headers(
    secure_player: PlayerPage, https_url: str
) -> None:
    response = secure_player.page.goto(https_url)

    assert response is not None and response.ok
    headers = response.headers
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"


def test_the_player_works_under_its_policy_with_no_console_error(
    secure_player: PlayerPage, song: dict[str, Any], tmp_path: Path
) -> None:
    player = secure_player.open()
    expect(player.row("Secure Channel")).to_be_visible()

    player.play("Secure Channel")
    player.wait_playing_past(0.5)
    upload = make_wav(tmp_path / "over-tls.wav", SECONDS_OF_AUDIO // 3, seed=9)
    player.upload(upload)
    expect(player.upload_state(upload.name)).to_contain_text("added", timeout=30_000)
    player.go("#/cluster")
    expect(player.page.get_by_test_id("cluster-pill")).to_contain_text("leader 3")
    player.go("#/library")
    expect(player.row("Secure Channel")).to_be_visible()

    assert player.audio("audio.currentSrc").startswith("https://localhost:")
    assert player.console_errors == []
