"""``distpotify-cluster``: the command lines it runs and the demo tracks it makes."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from proxy.localcluster import DEMOS, Layout, banner, tone_wav

pytestmark = pytest.mark.timeout(60)


def test_replicas_keep_their_heartbeats_on_this_machine() -> None:
    command = Layout().replica_command("twistd", 1)

    joined = " ".join(command)
    assert "--node-id 2" in joined and "--data-dir data/node2" in joined
    assert "--http-port 8002" in joined and "--amp-port 9002" in joined
    assert "--multicast-interface 127.0.0.1" in joined and "--multicast-ttl 0" in joined
    assert "--host 127.0.0.1" in joined and "--pidfile=" in command


def test_the_proxy_fronts_every_replica_on_8080() -> None:
    joined = " ".join(Layout().proxy_command("twistd"))

    assert "--port 8080" in joined
    assert "--backends 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003" in joined


def test_a_demo_tone_is_a_real_wav_of_the_asked_length(tmp_path: Path) -> None:
    path = tone_wav(tmp_path / "tone.wav", (440.0, 660.0), seconds=2.0, rate=8000)

    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.getnframes() == 16000
        frames = wav.readframes(16000)
    assert frames[:2] == b"\x00\x00"  # faded in: no click
    assert max(frames) > 0


def test_demo_tracks_have_distinct_titles() -> None:
    assert len({demo.title for demo in DEMOS}) == len(DEMOS) >= 3


def test_the_banner_says_where_to_go() -> None:
    view = {"backends": [
        {"http": f"http://127.0.0.1:800{i}", "node_id": i,
         "role": "leader" if i == 3 else "follower"} for i in (1, 2, 3)]}

    text = banner(Layout(), view)

    assert "http://127.0.0.1:8080/" in text and "/proxy/status" in text
    assert "http://127.0.0.1:8003/status (leader)" in text
