"""Freezing start-up objects out of full garbage collections."""

from __future__ import annotations

import gc

from distpotify.gcfreeze import freeze_startup_objects


def test_what_is_alive_is_frozen_and_what_comes_after_is_not() -> None:
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000  # this process's modules at least
        later = [[] for _ in range(100)]  # made after: still collected as before
        assert gc.get_freeze_count() == frozen and all(gc.is_tracked(x) for x in later)
    finally:
        gc.unfreeze()  # the rest of the test run keeps its collector as it was
