"""Browser security headers on every answer of the proxy (player files, relayed API answers,
the proxy's own), HSTS only over https; and a player whose files the policy lets run."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides

from proxy.config import WEB_DIR
from proxy.forwarded import parse_trusted_proxies
from tests.helpers.proxy import CLIENT_IP, Answer, FakeReplica, ProxyHarness

pytestmark = pytest.mark.timeout(10)

CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none';"
       " object-src 'none'")


def harness(**options: object) -> ProxyHarness:
    return ProxyHarness([FakeReplica(1, content=b"x" * 1000),
                         FakeReplica(2, role="leader", content=b"x" * 1000)], **options)


def assert_browser_headers(answer: Answer) -> None:
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["x-frame-options"] == "DENY"


# The player's files are read with HEAD: in memory the static producer would wait on the
# global reactor's cooperator, and the headers are what counts here.
@pytest.mark.parametrize(("method", "path"), [
    ("HEAD", "/"), ("HEAD", "/js/main.js"), ("HEAD", "/app.css"), ("GET", "/songs"),
    ("GET", "/songs/0b0c8a4e-0000-4000-8000-000000000001/stream"), ("GET", "/proxy/status"),
    ("GET", "/sync/digest"),
])
def test_every_answer_carries_the_browser_headers_and_no_hsts_over_http(method: str, path: str
                                                                        ) -> None:
    answer = harness().connect().send(method, path).answer()

    assert_browser_headers(answer)
    assert "strict-transport-security" not in answer.headers


def test_the_proxys_own_503_carries_them_too() -> None:
    proxy = ProxyHarness([FakeReplica(1, down=True)])

    answer = proxy.get("/songs").answer()

    assert answer.status == 503
    assert_browser_headers(answer)


def test_over_tls_answers_carry_hsts() -> None:
    proxy = harness()
    connection = proxy.connect()
    directlyProvides(connection.transport, ISSLTransport)

    answer = connection.send("HEAD", "/").answer()

    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    assert_browser_headers(answer)


def test_hsts_when_a_trusted_proxy_says_the_client_came_over_https() -> None:
    proxy = harness(trusted_proxies=parse_trusted_proxies(CLIENT_IP))

    answer = proxy.get("/songs", {"X-Forwarded-Proto": "https"}).answer()

    assert answer.headers["strict-transport-security"] == "max-age=31536000"


def test_no_hsts_when_an_untrusted_client_claims_https() -> None:
    answer = harness().get("/songs", {"X-Forwarded-Proto": "https"}).answer()

    assert "strict-transport-security" not in answer.headers


class _Inline(HTMLParser):
    """What the policy would refuse in a page: inline scripts, style and event attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("an inline <script>")
        if tag == "style":
            self.found.append("a <style> element")
        self.found += [f"<{tag} {name}=...>" for name in names
                       if name == "style" or name.startswith("on")]
        self.found += [f"<{tag} {name}={value}>" for name, value in attrs
                       if value and re.match(r"\s*(javascript|data):", value)]


def test_the_player_page_has_nothing_inline_the_policy_refuses() -> None:
    parser = _Inline()
    parser.feed((WEB_DIR / "index.html").read_text())

    assert parser.found == []


def test_the_players_scripts_set_no_style_attribute_and_load_nothing_from_elsewhere() -> None:
    for path in sorted((WEB_DIR / "js").glob("*.js")):
        text = path.read_text()
        assert not re.search(r"""setAttribute\(\s*["']style|style:\s*[`"']|\.cssText|"""
                             r"""innerHTML|insertAdjacentHTML|\beval\(|new Function""",
                             text), path.name
        assert not re.search(r"""["'`](https?:|data:|blob:)""", text), path.name
