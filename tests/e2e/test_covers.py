"""Cover art in the web player, in a real headless Chromium behind the real proxy: album
covers in the library list, in the player bar and in the Media Session; a song without one
shows a placeholder and asks for no picture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import PlayerPage, Stack
from tests.helpers.audio import require_ffmpeg
from tests.helpers.covers import audio_with_cover, picture

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) before any test body runs
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

COVER = picture("JPEG", size=(400, 400), color=(220, 40, 160))


@pytest.fixture(scope="module")
def songs(shared_stack: Stack, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, dict[str, Any]]]:
    """A song with an embedded cover and one without, uploaded as a script would."""
    require_ffmpeg()
    directory = tmp_path_factory.mktemp("covers")
    found = {}
    for name, cover, tags in (
        ("covered.mp3", COVER, {"title": "Magenta Sleeve", "artist": "Printers",
                                "album": "Gatefold"}),
        ("bare.mp3", None, {"title": "Plain Sleeve", "artist": "Printers",
                            "album": "White Label"}),
    ):
        path = directory / name
        audio_with_cover(path, "mp3", cover, seconds=6, tags=tags)
        song = shared_stack.upload(path, "audio/mpeg")
        shared_stack.wait_replicated(song)
        found[tags["title"]] = song
    yield found


def loaded_image(locator: Any) -> Any:
    """The <img> in ``locator``, once the browser decoded it (naturalWidth > 0)."""
    image = locator.locator("img")
    expect(image).to_have_count(1)
    image.evaluate("img => img.decode()")
    assert image.evaluate("img => img.naturalWidth") > 0
    return image


def test_the_library_shows_album_covers(player: PlayerPage, songs: dict[str, Any]) -> None:
    covered = songs["Magenta Sleeve"]

    player.open()

    cover = player.row("Magenta Sleeve").locator(".cover")
    image = loaded_image(cover)
    assert f"/albums/{covered['album_id']}/cover?size=" in image.get_attribute("src")
    expect(player.row("Plain Sleeve").locator(".cover img")).to_have_count(0)
    expect(player.row("Plain Sleeve").locator(".cover")).to_be_visible()
    assert player.console_errors == []


def test_the_player_and_the_media_session_show_the_cover(player: PlayerPage,
                                                         songs: dict[str, Any]) -> None:
    covered = songs["Magenta Sleeve"]
    player.open()

    player.play("Magenta Sleeve")

    expect(player.page.get_by_test_id("now-title")).to_have_text("Magenta Sleeve")
    loaded_image(player.page.get_by_test_id("now-cover"))
    artwork = player.page.evaluate(
        "() => navigator.mediaSession.metadata.artwork.map(a => [a.src, a.sizes])")
    base = f"{player.base_url}albums/{covered['album_id']}/cover?size="
    assert artwork == [[f"{base}{size}", f"{size}x{size}"] for size in (96, 256, 512)]
    answer = player.page.request.get(artwork[-1][0])
    assert answer.status == 200 and answer.headers["content-type"] == "image/jpeg"


def test_a_song_without_a_cover_plays_with_a_placeholder(player: PlayerPage,
                                                         songs: dict[str, Any]) -> None:
    player.open()

    player.play("Plain Sleeve")

    expect(player.page.get_by_test_id("now-title")).to_have_text("Plain Sleeve")
    expect(player.page.get_by_test_id("now-cover").locator("img")).to_have_count(0)
    assert player.page.evaluate("() => navigator.mediaSession.metadata.artwork.length") == 0
    assert player.console_errors == []
