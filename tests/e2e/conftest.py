"""Fixtures of the browser tests: one Chromium for the session, a fresh tab per test (its
screenshot saved at the end, pass or fail), and clusters behind the proxy: one shared by the
tests that leave it whole, a fresh one for each test that kills a replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    CHROMIUM_ARGS,
    PlayerPage,
    Stack,
    player_page,
    require_browser,
    start_stack,
)
from tests.helpers.replica import ReplicaProcess


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


def _stack(root: Path) -> Iterator[Stack]:
    started: list[ReplicaProcess] = []
    try:
        stack = start_stack(root, started)
    except BaseException:
        for node in started:
            node.kill()
        raise
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A cluster for the tests that keep every replica running."""
    yield from _stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A cluster of this test's own, for the tests that kill a replica."""
    yield from _stack(tmp_path / "stack")


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
