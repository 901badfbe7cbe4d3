"""Fixtures of the browser tests: one Chromium for the session, a fresh tab per test (its
screenshot saved at the end, pass or fail), and clusters behind the proxy: one shared by the
tests that leave it whole, a fresh one for each test that kills a replica, and one with
accounts on and an admin for the tests of accounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    ADMIN_PASSWORD,
    CHROMIUM_ARGS,
    PlayerPage,
    Stack,
    admin_token,
    player_page,
    require_browser,
    running_stack,
)
from tests.helpers.fronted import bearer
from tests.helpers.replica import wait_until


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the web player in headless Chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A cluster for the tests that keep every replica running."""
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A cluster of this test's own, for the tests that kill a replica."""
    with running_stack(tmp_path / "stack") as stack:
        yield stack


@pytest.fixture(scope="module")
def accounts_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A cluster with accounts on and an admin (``admin`` / ADMIN_PASSWORD), for the tests of
    accounts; the stack's own uploads carry the admin's session."""
    with running_stack(tmp_path_factory.mktemp("accounts"),
                       env={"DISTPOTIFY_ADMIN_PASSWORD": ADMIN_PASSWORD},
                       accounts=True) as stack:
        # The leader makes the admin once it leads (an asynchronous write): log in only when
        # every replica holds it, whichever one the login reaches.
        wait_until(lambda: [s["accounts"]["users"] for s in stack.cluster.statuses().values()]
                   == [1, 1, 1], timeout=30, what="the first admin on every replica")
        stack.headers = bearer(admin_token(stack))
        yield stack


@pytest.fixture
def player(browser: Any, shared_stack: Stack, request: pytest.FixtureRequest
           ) -> Iterator[PlayerPage]:
    yield from player_page(browser, shared_stack.url, request, {"width": 1280, "height": 800})


@pytest.fixture
def phone(browser: Any, shared_stack: Stack, request: pytest.FixtureRequest
          ) -> Iterator[PlayerPage]:
    yield from player_page(browser, shared_stack.url, request, {"width": 390, "height": 800})


@pytest.fixture
def own_player(browser: Any, own_stack: Stack, request: pytest.FixtureRequest
               ) -> Iterator[PlayerPage]:
    yield from player_page(browser, own_stack.url, request, {"width": 1280, "height": 800})
