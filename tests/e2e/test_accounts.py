"""Accounts in the web player, in a real headless Chromium behind the real proxy: the login
first and nothing of the library before it, its errors, who is logged in, log out, what a
role may not do hidden, the admin's users page, a listener an admin created logging in, and
playback going on across a re-login.

The replicas and the proxy run with accounts on, their default (no ``--auth`` option), and an
admin made by DISTPOTIFY_ADMIN_PASSWORD; the proxy signs its /status polls with the cluster
key (``start_stack(accounts=True)``, in the ``accounts_stack`` fixture of conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    ADMIN_PASSWORD,
    PlayerPage,
    Stack,
    admin_token,
    api,
    log_in,
    player_page,
    token_of,
)
from tests.helpers.audio import make_audio, require_ffmpeg
from tests.helpers.fronted import bearer
from tests.helpers.replica import request, wait_until

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) before any test body runs
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# What Chromium logs for an answer it was told to expect: the 401 of GET /auth/me with no
# session, of a wrong login, and the 429 of too many. Anything else (a CSP refusal, an
# uncaught error) is a failure.
EXPECTED_REFUSAL = re.compile(
    r"Failed to load resource: the server responded with a status of (401|429)")


def unexpected_errors(player: PlayerPage) -> list[str]:
    return [line for line in player.console_errors if not EXPECTED_REFUSAL.search(line)]


@pytest.fixture
def page(browser: Any, accounts_stack: Stack, request: pytest.FixtureRequest
         ) -> Iterator[PlayerPage]:
    yield from player_page(browser, accounts_stack.url, request, {"width": 1280, "height": 800})


def log_out(player: PlayerPage) -> None:
    player.page.locator("#account-logout").click()
    expect(player.page.get_by_test_id("account")).to_be_hidden()
    expect(player.page.locator("#account-login")).to_be_visible()


def who(player: PlayerPage) -> Any:
    return player.page.get_by_test_id("account")


def listening(page: PlayerPage, stack: Stack, tmp_path: Path, username: str, password: str,
              tags: dict[str, str]) -> None:
    """``username``, a listener the admin makes with ``password``, logged in on ``page`` and
    playing a song of 30 s (``tags``) uploaded for it."""
    require_ffmpeg()
    status, body = api(stack, "POST", "/users", {"username": username, "password": password},
                       admin_token(stack))
    assert status == 201, body
    song = stack.upload(make_audio(tmp_path / f"{username}.mp3", "mp3", 30.0, tags),
                        "audio/mpeg")
    stack.wait_replicated(song)
    page.open(cluster=False)
    log_in(page, username, password)
    expect(who(page)).to_have_text(f"{username} (listener)")
    page.play(tags["title"])
    page.wait_playing_past(0.5)


def test_the_login_comes_first_and_nothing_of_the_library_shows_before_it(
    page: PlayerPage, accounts_stack: Stack, tmp_path: Path
) -> None:
    require_ffmpeg()
    song = accounts_stack.upload(make_audio(tmp_path / "first.ogg", "ogg", 2.5, {
        "title": "Behind The Login", "artist": "The Gatekeepers"}), "audio/ogg")
    accounts_stack.wait_replicated(song)

    page.open(cluster=False)

    dialog = page.page.locator("#login-dialog")
    expect(dialog).to_be_visible()
    expect(page.page.locator("#login-cancel")).to_be_hidden()
    page.page.keyboard.press("Escape")
    expect(dialog).to_be_visible()
    expect(page.row("Behind The Login")).to_have_count(0)
    expect(page.page.locator("#song-list .row")).to_have_count(0)
    expect(page.page.locator("#nav-users")).to_be_hidden()
    expect(page.page.get_by_test_id("cluster-pill")).to_have_text("cluster: admins")
    assert [r for r in page.streams if song["id"] in r[0]] == []
    log_in(page, "admin", ADMIN_PASSWORD)
    expect(who(page)).to_have_text("admin (admin)")
    expect(page.row("Behind The Login")).to_be_visible()
    expect(page.page.get_by_test_id("cluster-pill")).to_contain_text("leader 3")
    assert unexpected_errors(page) == []


def test_an_admin_logs_in_uploads_plays_makes_a_playlist_and_logs_out(
    page: PlayerPage, tmp_path: Path
) -> None:
    require_ffmpeg()
    file = make_audio(tmp_path / "admin-upload.mp3", "mp3", 6.0, {
        "title": "Admin Anthem", "artist": "The Accounts", "album": "Logged In"})
    page.open(cluster=False)

    log_in(page, "admin", ADMIN_PASSWORD)

    expect(who(page)).to_have_text("admin (admin)")
    expect(page.page.locator("#login-dialog")).to_be_hidden()
    expect(page.page.locator("#nav-users")).to_be_visible()
    page.upload(file)
    expect(page.upload_state(file.name)).to_contain_text("added: Admin Anthem", timeout=30_000)
    page.go("#/library")
    row = page.row("Admin Anthem")
    expect(row.get_by_role("button", name=re.compile("^Delete Admin Anthem"))).to_be_visible()
    page.play("Admin Anthem")
    page.wait_playing_past(0.5)
    row.get_by_role("button", name=re.compile("to a playlist$")).click()
    page.page.locator("#add-dialog-new").fill("Admin Picks")
    page.page.locator("#add-dialog-create").click()
    expect(page.page.locator("#add-dialog")).to_be_hidden()
    page.go("#/playlists")
    page.page.get_by_role("link", name=re.compile("^Admin Picks")).click()
    expect(page.page.get_by_test_id("playlist-title")).to_have_text("Admin Picks")
    expect(page.page.locator("#playlist-items .row")).to_contain_text("Admin Anthem")
    expect(page.page.locator("#playlist-public-label")).to_be_visible()
    page.page.locator("#playlist-public").check()
    expect(page.page.locator("#toasts")).to_contain_text("is public")

    log_out(page)

    expect(page.page.locator("#nav-users")).to_be_hidden()
    expect(page.page.locator("#login-dialog")).to_be_visible()  # accounts are required
    assert unexpected_errors(page) == []


def test_an_admin_creates_a_listener_who_logs_in_and_sees_no_admin_page(
    page: PlayerPage, accounts_stack: Stack, tmp_path: Path
) -> None:
    require_ffmpeg()
    # A song the admin uploaded (the stack's uploads carry the admin's session): not hers.
    song = accounts_stack.upload(make_audio(tmp_path / "old.ogg", "ogg", 2.5, {
        "title": "Uploaded By The Admin", "artist": "Nobody In Particular"}), "audio/ogg")
    accounts_stack.wait_replicated(song)
    status, body = api(accounts_stack, "POST", "/playlists",
                       {"name": "Admin Public", "public": True}, admin_token(accounts_stack))
    assert status == 201, body
    page.open(cluster=False)
    log_in(page, "admin", ADMIN_PASSWORD)
    expect(who(page)).to_have_text("admin (admin)")
    page.page.get_by_role("link", name="Users").click()
    expect(page.page.locator("#users-rows tr[data-username='admin']")).to_contain_text("admin")

    page.page.locator("#new-user-name").fill("lena")
    page.page.locator("#new-user-password").fill("lena-listens-1")
    page.page.locator("#new-user-role").select_option("listener")
    page.page.get_by_role("button", name="Create user").click()

    lena = page.page.locator("#users-rows tr[data-username='lena']")
    expect(lena.locator(".user-role")).to_have_text("listener")
    expect(lena.locator(".user-state")).to_have_text("enabled")
    log_out(page)

    log_in(page, "lena", "lena-listens-1")

    expect(who(page)).to_have_text("lena (listener)")
    expect(page.page.locator("#nav-users")).to_be_hidden()
    page.go("#/users")  # typed by hand: the library instead
    expect(page.page.locator("#view-users")).to_be_hidden()
    expect(page.page.locator("#view-library")).to_be_visible()
    expect(page.page.get_by_test_id("cluster-pill")).to_have_text("cluster: admins")
    row = page.row("Uploaded By The Admin")
    expect(row).to_be_visible()
    expect(row.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    # What she uploads is hers (uploaded_by): she may delete it.
    mine = make_audio(tmp_path / "lena.ogg", "ogg", 2.5, {
        "title": "Lena Uploaded This", "artist": "Lena"})
    page.upload(mine)
    expect(page.upload_state(mine.name)).to_contain_text("added: Lena Uploaded This",
                                                         timeout=30_000)
    page.go("#/library")
    own = page.row("Lena Uploaded This")
    expect(own.get_by_role("button", name=re.compile("^Delete Lena Uploaded This"))).to_be_visible()
    expect(row.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    own.get_by_role("button", name=re.compile("^Delete Lena Uploaded This")).click()
    own.get_by_role("button", name=re.compile("^Really delete Lena Uploaded This")).click()
    expect(own).to_have_count(0)
    # An admin's public playlist is hers to play, not to change.
    page.go("#/playlists")
    card = page.page.locator("#playlist-list li", has_text="Admin Public")
    expect(card).to_contain_text("public")
    expect(card).to_contain_text("read-only")
    card.get_by_role("link").click()
    expect(page.page.get_by_test_id("playlist-title")).to_have_text("Admin Public")
    expect(page.page.locator("#playlist-delete")).to_be_hidden()
    expect(page.page.locator("#playlist-rename")).to_be_hidden()
    expect(page.page.locator("#playlist-public-label")).to_be_hidden()
    # Her own playlist is hers to change.
    page.go("#/playlists")
    page.page.locator("#new-playlist-name").fill("Lena's Mix")
    page.page.locator("#new-playlist button[type=submit]").click()
    expect(page.page.get_by_test_id("playlist-title")).to_have_text("Lena's Mix")
    expect(page.page.locator("#playlist-delete")).to_be_visible()
    expect(page.page.locator("#playlist-public-label")).to_be_visible()
    assert unexpected_errors(page) == []


def test_the_admin_page_disables_resets_and_deletes_an_account(
    page: PlayerPage, accounts_stack: Stack
) -> None:
    token = admin_token(accounts_stack)
    status, body = api(accounts_stack, "POST", "/users",
                       {"username": "otto", "password": "otto-first-1", "role": "listener"},
                       token)
    assert status == 201, body
    page.open(cluster=False)
    log_in(page, "admin", ADMIN_PASSWORD)
    expect(who(page)).to_have_text("admin (admin)")
    page.go("#/users")
    otto = page.page.locator("#users-rows tr[data-username='otto']")

    otto.get_by_role("button", name="Disable otto").click()
    expect(otto.locator(".user-state")).to_have_text("disabled")
    assert api(accounts_stack, "POST", "/auth/login",
               {"username": "otto", "password": "otto-first-1"})[0] == 401
    otto.get_by_role("button", name="Enable otto").click()
    expect(otto.locator(".user-state")).to_have_text("enabled")

    otto.get_by_role("button", name="Reset the password of otto").click()
    page.page.locator("#reset-password").fill("otto-second-2")
    page.page.locator("#reset-form button[type=submit]").click()
    expect(page.page.locator("#reset-dialog")).to_be_hidden()
    assert api(accounts_stack, "POST", "/auth/login",
               {"username": "otto", "password": "otto-second-2"})[0] == 200

    otto.get_by_role("button", name="Delete otto").click()
    otto.get_by_role("button", name="Delete otto").click()
    expect(otto).to_have_count(0)
    assert unexpected_errors(page) == []


def test_a_password_change_asks_for_a_login_and_the_music_plays_on(
    page: PlayerPage, accounts_stack: Stack, tmp_path: Path
) -> None:
    listening(page, accounts_stack, tmp_path, "pia", "pia-before-1",
              {"title": "Long Enough", "artist": "The Sessions"})

    page.page.locator("#account-password").click()
    page.page.locator("#password-old").fill("pia-before-1")
    page.page.locator("#password-new").fill("pia-after-2")
    page.page.locator("#password-repeat").fill("pia-after-2")
    page.page.locator("#password-form button[type=submit]").click()

    # The session ended with the change: the login dialog, over music that goes on.
    expect(page.page.locator("#login-dialog")).to_be_visible()
    expect(page.page.locator("#login-reason")).to_contain_text("password was changed")
    playing_at = page.current_time()
    log_in(page, "pia", "pia-after-2")
    expect(who(page)).to_have_text("pia (listener)")
    page.wait_playing_past(playing_at + 0.5)
    assert unexpected_errors(page) == []


def test_a_session_ended_elsewhere_asks_for_a_login_again_over_the_music(
    page: PlayerPage, accounts_stack: Stack, tmp_path: Path
) -> None:
    listening(page, accounts_stack, tmp_path, "rita", "rita-listens-1",
              {"title": "Required Listening", "artist": "The Gatekeepers"})

    # Every session of rita's ends elsewhere (her logout-all from a script), on every replica.
    elsewhere = token_of(accounts_stack, "rita", "rita-listens-1")
    assert api(accounts_stack, "POST", "/auth/logout-all", token=elsewhere)[0] == 204
    wait_until(lambda: all(request(node.http_port, "GET", "/auth/me", headers=bearer(elsewhere))
                           .status == 401 for node in accounts_stack.cluster.running()),
               timeout=10, what="the sessions ended on every replica")
    page.go("#/playlists")

    dialog = page.page.locator("#login-dialog")
    expect(dialog).to_be_visible()
    expect(page.page.locator("#login-reason")).to_contain_text("session has ended")
    expect(who(page)).to_be_hidden()
    playing_at = page.current_time()
    assert page.audio("audio.paused") is False
    log_in(page, "rita", "rita-listens-1")
    expect(who(page)).to_have_text("rita (listener)")
    expect(page.page.locator("#view-playlists")).to_be_visible()
    expect(page.page.locator("#playlist-list")).not_to_contain_text("Could not load")
    page.wait_playing_past(playing_at + 0.5)
    assert unexpected_errors(page) == []


def test_a_wrong_login_says_so_and_too_many_say_how_long_to_wait(page: PlayerPage) -> None:
    # Last in the module: it leaves the name "mallory" waiting.
    page.open(cluster=False)

    log_in(page, "mallory", "not-the-password")

    error = page.page.locator("#login-error")
    expect(error).to_have_text("Wrong username or password.")
    expect(who(page)).to_be_hidden()
    for _ in range(10):
        with page.page.expect_response(lambda answer: answer.url.endswith("/auth/login")):
            page.page.locator("#login-submit").click()
        expect(page.page.locator("#login-submit")).to_be_enabled()
        if "Too many" in (error.text_content() or ""):
            break
    expect(error).to_have_text(re.compile(r"^Too many failed logins: try again in \d+ (s|min)\.$"))
    assert unexpected_errors(page) == []
