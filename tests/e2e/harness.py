"""What the browser tests stand on: a real cluster behind the real proxy (with accounts on,
an admin and the steps of a login), headless Chromium driven by Playwright, and a
``PlayerPage`` that speaks in the player's terms.

Chromium is Debian's (``/usr/bin/chromium``, or ``$CHROMIUM``), launched by Playwright through
``executable_path``: no browser is ever downloaded. Without Chromium or Playwright the tests
skip, saying what to install; under CI=true that is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers.audio import in_ci
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import Cluster, ReplicaProcess, killed_at_end, request, wait_until

try:
    from playwright.sync_api import ConsoleMessage, Page, Response, expect
except ImportError:  # reported by require_browser()
    ConsoleMessage = Page = Response = Any  # type: ignore[misc, assignment]
    expect = None  # type: ignore[assignment]

CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these Chromium keeps calling home, and there is no network here.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio",
)

REPO = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    return (os.environ.get("CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))


def require_browser() -> str:
    """The Chromium executable; skips without it (or without Playwright), fails in CI."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    path = chromium_path()
    if path is None:
        missing.append("Chromium (apt-get install chromium)")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if in_ci():
            pytest.fail(f"{reason}, and CI must run them", pytrace=False)
        pytest.skip(reason)
    assert path is not None
    return path


def artifacts_dir() -> Path:
    """Where screenshots go: $E2E_ARTIFACTS, else build/e2e/ (ignored by git)."""
    directory = Path(os.environ.get("E2E_ARTIFACTS") or REPO / "build" / "e2e")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# ---------------------------------------------------------------- the cluster


@attrs.define
class Stack:
    """Three replicas (node 3 leads, as Bully elects the highest id) and the proxy.
    ``headers`` go with the stack's own calls (``upload``, ``wait_replicated``): a session's
    bearer where accounts are on."""

    cluster: Cluster
    proxy: ProxyProcess
    headers: dict[str, str] = attrs.Factory(dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/"

    def node(self, node_id: int) -> ReplicaProcess:
        return self.cluster.nodes[node_id]

    def upload(self, path: Path, content_type: str, **tags: str) -> dict[str, Any]:
        """POST a file through the proxy (as a script would): the song's JSON."""
        query = urllib.parse.urlencode(tags)
        answer = request(self.proxy.port, "POST", f"/songs?{query}", path.read_bytes(),
                         {"Content-Type": content_type, **self.headers}, timeout=120)
        assert answer.status in (200, 201), answer.body
        return answer.json()["song"]  # type: ignore[no-any-return]

    def wait_replicated(self, song: dict[str, Any], timeout: float = 30.0) -> None:
        """Every running replica serves the song's last byte (its metadata and chunks)."""
        last = song["size"] - 1

        def everywhere() -> bool:
            for node in self.cluster.running():
                try:
                    answer = node.get(f"/songs/{song['id']}/stream",
                                      headers={"Range": f"bytes={last}-{last}", **self.headers},
                                      timeout=5)
                except OSError:
                    return False
                if answer.status != 206:
                    return False
            return True

        wait_until(everywhere, timeout, what=f"song {song['id']} on every replica")

    def stop(self) -> None:
        self.proxy.kill()
        for node in self.cluster.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGCONT)
            node.kill()


# With accounts: the --metrics-token with which the helpers read /status and /proxy/status.
METRICS_TOKEN = "e2e-metrics-token-0123456789"
# The first admin where accounts are on (the accounts_stack fixture): ``admin`` with this
# password.
ADMIN_PASSWORD = "admin-e2e-Pa55word"


def start_stack(root: Path, started: list[ReplicaProcess], *replica_args: str,
                env: dict[str, str] | None = None, accounts: bool = False) -> Stack:
    """Three replicas (given ``replica_args`` and ``env``, such as DISTPOTIFY_ADMIN_PASSWORD)
    and the proxy. Every process runs ``--auth off`` (processes.AUTH_OFF), unless
    ``accounts``: then none is given an ``--auth`` option, so accounts are on as by default,
    the proxy signs its /status polls with the cluster key, and the helpers read /status and
    /proxy/status with METRICS_TOKEN."""
    monitor = ("--metrics-token", METRICS_TOKEN) if accounts else ()
    cluster = Cluster(root, started, *replica_args, *monitor)
    if accounts:
        cluster.status_headers.update({"Authorization": f"Bearer {METRICS_TOKEN}"})
    for node_id in (1, 2, 3):
        node = cluster.add(node_id, start=False)
        if accounts:
            node.auth = ()
        node.env = {**node.env, **(env or {})}
        node.start(wait=False)
    # Bully settles on the highest id; an earlier agreement (on 2) may still be overturned.
    wait_until(lambda: (s := cluster.agreed_leader()) is not None and s["node_id"] == 3,
               timeout=30, what="three replicas to agree on node 3")
    key = ("--cluster-key-file", str(cluster.key_file)) if accounts else ()
    proxy = ProxyProcess(root, list(cluster.nodes.values()), *key, *monitor)
    if accounts:
        proxy.auth = ()
        proxy.status_headers = dict(cluster.status_headers)
    proxy.start()
    proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 3 and len(s["readers"]) == 2,
                    timeout=30, what="the proxy to see a leader and two readers")
    return Stack(cluster, proxy)


@contextlib.contextmanager
def running_stack(root: Path, *replica_args: str, env: dict[str, str] | None = None,
                  accounts: bool = False) -> Iterator[Stack]:
    """``start_stack``'s stack, stopped when the block ends; its replicas killed if it does
    not start."""
    with killed_at_end() as started:
        stack = start_stack(root, started, *replica_args, env=env, accounts=accounts)
        try:
            yield stack
        finally:
            stack.stop()


def api(stack: Stack, method: str, path: str, value: Any = None,
        token: str | None = None) -> tuple[int, Any]:
    """A JSON call through the proxy, as a script would make it (a bearer token, if given)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = None if value is None else json.dumps(value).encode()
    req = urllib.request.Request(stack.url.rstrip("/") + path, body, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def token_of(stack: Stack, username: str, password: str) -> str:
    status, body = api(stack, "POST", "/auth/login", {"username": username, "password": password})
    assert status == 200, body
    return body["token"]


def admin_token(stack: Stack) -> str:
    return token_of(stack, "admin", ADMIN_PASSWORD)


# ---------------------------------------------------------------- the page


@attrs.define(slots=False)  # Playwright keeps state on the objects of bound-method handlers
class PlayerPage:
    """One browser tab on the player, with what it logged and which replica served streams."""

    page: Page
    base_url: str
    console_errors: list[str] = attrs.Factory(list)
    page_errors: list[str] = attrs.Factory(list)
    streams: list[tuple[str, int, str | None]] = attrs.Factory(list)  # (url, status, served by)

    def __attrs_post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        url = message.location.get("url") or ""
        # The player's first question, GET /auth/me, is answered 401 when nobody is logged
        # in; Chromium logs every 4xx a fetch gets. That one is an answer, not an error.
        if "status of 401" in message.text and url.endswith("/auth/me"):
            return
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({url})")

    def _response(self, response: Response) -> None:
        if re.search(r"/songs/[^/]+/stream$", response.url):
            self.streams.append((response.url, response.status,
                                 response.headers.get("x-served-by")))

    # -- navigation

    def open(self, route: str = "#/library", cluster: bool = True) -> PlayerPage:
        """Load the page at ``route``; with ``cluster``, wait until its cluster pill names
        the leader (not where accounts are on and nobody or a listener is logged in: the
        cluster view is for admins)."""
        self.page.goto(self.base_url + route)
        if cluster:
            # A function, not an expression: Playwright evals expression strings in the
            # page, which the player's CSP (no 'unsafe-eval') refuses.
            self.page.wait_for_function(
                "() => document.querySelector('#cluster-pill').textContent.includes('leader')")
        return self

    def go(self, route: str) -> None:
        self.page.evaluate("route => { location.hash = route; }", route)

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # -- library

    def row(self, title: str) -> Any:
        return self.page.locator("#song-list .row", has_text=title)

    def upload(self, *files: Path) -> None:
        self.go("#/upload")
        self.page.locator("#file-input").set_input_files([str(f) for f in files])

    def upload_state(self, name: str) -> Any:
        return self.page.locator(f'#upload-list li[data-file="{name}"] .upload-state')

    def search(self, text: str) -> None:
        self.go("#/library")
        self.page.locator("#search").fill(text)

    def play(self, title: str) -> None:
        self.row(title).get_by_role("button", name=re.compile(f"^Play {re.escape(title)}")).click()

    # -- the audio element

    def audio(self, expression: str) -> Any:
        """``expression`` evaluated in the page, with ``audio`` the player's <audio>."""
        return self.page.evaluate(
            f"(() => {{ const audio = document.getElementById('audio'); return {expression}; }})()")

    def current_time(self) -> float:
        return float(self.audio("audio.currentTime"))

    def wait_playing_past(self, seconds: float, timeout: float = 20.0) -> float:
        """Wait until the audio element has played past ``seconds``; its currentTime then."""
        self.page.wait_for_function(
            "s => { const a = document.getElementById('audio');"
            " return !a.paused && a.currentTime > s; }",
            arg=seconds, timeout=timeout * 1000, polling=100)
        return self.current_time()

    def seek_bar(self, seconds: float) -> None:
        """Drag the seek bar to ``seconds`` and let go, as a person would."""
        self.page.locator("#seek").evaluate(
            "(bar, to) => { bar.value = to; bar.dispatchEvent(new Event('input', {bubbles: true}));"
            " bar.dispatchEvent(new Event('change', {bubbles: true})); }", seconds)

    def served_streams(self) -> list[str]:
        """The X-Served-By of each stream response, oldest first. Those the browser has
        heard of by the last Playwright call (the sync API hands events over only during one);
        and a response Chromium assembled from its HTTP cache carries the headers it cached,
        naming the replica of the request that filled the cache, not of the one in flight."""
        return [node for _, status, node in self.streams if node and status in (200, 206)]

    def throttle(self, bytes_per_second: float) -> None:
        """Let the page download at most ``bytes_per_second``, as over a slow link (Chromium's
        DevTools throttling: the page reads its sockets no faster)."""
        self._cdp = self.page.context.new_cdp_session(self.page)
        self._cdp.send("Network.enable")
        self._cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "uploadThroughput": -1,
            "downloadThroughput": bytes_per_second})


def log_in(player: PlayerPage, username: str, password: str) -> None:
    """Log in through the player's login dialog, opening it if the player has not."""
    dialog = player.page.locator("#login-dialog")
    # The player first learns who is logged in (body[data-role] once it knows); nobody, with
    # accounts on, and it opens the dialog itself in the same step. Deciding before that
    # raced it: a click on "Log in" that the dialog, opening meanwhile, then covered.
    expect(player.page.locator("body[data-role]")).to_be_attached()
    if not dialog.is_visible():
        player.page.locator("#account-login").click()
    expect(dialog).to_be_visible()
    player.page.locator("#login-username").fill(username)
    player.page.locator("#login-password").fill(password)
    player.page.locator("#login-submit").click()


def player_page(browser: Any, url: str, request: pytest.FixtureRequest,
                viewport: dict[str, int], **options: Any) -> Iterator[PlayerPage]:
    """A fresh browser context on the player at ``url`` (``options`` go to the context); a
    screenshot named after the test when it ends, and no uncaught error in the page."""
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(15_000)
    page = PlayerPage(context.new_page(), url)
    try:
        yield page
    finally:
        try:
            page.screenshot(request.node.name)
        finally:
            context.close()
    assert page.page_errors == [], f"uncaught errors in the page: {page.page_errors}"
