"""The demo tracks ``distpotify-cluster`` offers: tones made on this machine."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from distpotify.cli.demo import DEMOS, tone_wav

pytestmark = pytest.mark.timeout(60)


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
