"""The account's Subsonic API keys in the web player, in a real headless Chromium behind the
real proxy with accounts on: create a key by name, its secret shown once and copied, listed
by name, revoked.

Needs the account API's /auth/apikeys (GET, POST, DELETE), built on branch
``subsonic-user``: this test passes once that branch is merged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
)

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) before any test body runs
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def page(browser: Any, accounts_stack: Stack, request: pytest.FixtureRequest
         ) -> Iterator[PlayerPage]:
    yield from player_page(browser, accounts_stack.url, request, {"width": 1280, "height": 800},
                           permissions=["clipboard-read", "clipboard-write"])


def listed(stack: Stack) -> list[dict[str, Any]]:
    status, body = api(stack, "GET", "/auth/apikeys", token=admin_token(stack))
    assert status == 200, body
    return body["keys"]  # type: ignore[no-any-return]


def test_a_key_is_created_shown_once_copied_and_revoked(page: PlayerPage,
                                                        accounts_stack: Stack) -> None:
    page.open(cluster=False)
    log_in(page, "admin", ADMIN_PASSWORD)
    dialog = page.page.locator("#apikeys-dialog")

    page.page.locator("#account-apikeys").click()
    expect(dialog).to_be_visible()
    expect(page.page.locator("#apikeys-status")).to_have_text("No API keys yet.")
    page.page.locator("#apikeys-name").fill("phone")
    page.page.locator("#apikeys-create").click()

    secret_field = page.page.get_by_test_id("apikey-secret")
    expect(secret_field).to_be_visible()
    secret = secret_field.input_value()
    assert len(secret) >= 16
    page.page.locator("#apikeys-copy").click()
    expect(page.page.locator("#apikeys-copy")).to_have_text("Copied")
    assert page.page.evaluate("() => navigator.clipboard.readText()") == secret
    expect(page.page.locator("#apikeys-list li")).to_have_count(1)
    expect(page.page.locator("#apikeys-list li")).to_contain_text("phone")
    keys = listed(accounts_stack)
    assert [key["name"] for key in keys] == ["phone"]
    assert secret not in json.dumps(keys), "the list must never give a secret again"

    page.page.locator("#apikeys-close").click()
    page.page.locator("#account-apikeys").click()
    expect(page.page.locator("#apikeys-new")).to_be_hidden()
    expect(page.page.locator("#apikeys-list li")).to_have_count(1)

    revoke = page.page.get_by_role("button", name="Revoke the key “phone”")
    revoke.click()
    revoke.click()
    expect(page.page.locator("#apikeys-list li")).to_have_count(0)
    expect(page.page.locator("#apikeys-status")).to_have_text("No API keys yet.")
    assert listed(accounts_stack) == []
