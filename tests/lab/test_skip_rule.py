"""Where the lab cannot run, the reason names the missing capability (conftest turns it into
a skip, or an error under CI=true)."""

from __future__ import annotations

import pytest

from lab import netns


def test_without_root_the_reason_names_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)

    assert "needs root" in (netns.unavailable_reason() or "")


def test_without_iproute2_the_reason_names_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)

    assert "iproute2" in (netns.unavailable_reason() or "")
