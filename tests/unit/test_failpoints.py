"""Failpoints: parsed once from DISTPOTIFY_FAILPOINTS, off by default, and a crash is SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distpotify.failpoints import ENV, POINTS, Failpoints
from distpotify.options import ConfigError


def test_nothing_is_armed_by_default() -> None:
    assert Failpoints.from_environ({}).armed == {}
    Failpoints().hit("upload.committed")  # returns: nothing armed


def test_points_are_armed_by_name_and_action() -> None:
    points = Failpoints.parse(" snapshot.installed:crash, upload.committed:crash ,")

    assert points.armed == {"snapshot.installed": "crash", "upload.committed": "crash"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("snapshot.instaled:crash", "unknown failpoint 'snapshot.instaled'"),
        ("snapshot.installed", "needs an action (crash), got ''"),
        ("snapshot.installed:explode", "got 'explode'"),
    ],
)
def test_a_malformed_setting_stops_the_start_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        Failpoints.from_environ({ENV: text})
    assert "\n" not in str(caught.value) and ENV in str(caught.value)


def test_an_armed_crash_kills_the_process_with_sigkill() -> None:
    script = ("from distpotify.failpoints import Failpoints\n"
              "points = Failpoints.parse('purge.written:crash')\n"
              "points.hit('upload.committed')\n"  # not armed: goes on
              "print('before', flush=True)\n"
              "points.hit('purge.written')\n"
              "print('after', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                          env={**os.environ, ENV: ""})

    assert done.returncode == -signal.SIGKILL
    assert done.stdout == b"before\n"
    assert b"failpoint purge.written: crash" in done.stderr


def test_every_point_is_hit_somewhere_in_the_replica() -> None:
    root = Path(__file__).resolve().parents[2] / "distpotify"
    source = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "failpoints.py")
    missing = [name for name in POINTS if f'"{name}"' not in source]
    assert missing == []
