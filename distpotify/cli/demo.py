"""Demo tracks for an empty library: a few tones made on this machine, never downloaded.

``distpotify-cluster`` offers them when it starts on an empty library; MP3 when ffmpeg can
encode one, else WAV.
"""
# test-case-name: tests.unit.test_cli_demo

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import attrs


@attrs.frozen
class Demo:
    title: str
    artist: str
    album: str
    notes: tuple[float, ...]  # Hz, played one after another, each for seconds / len(notes)
    seconds: float


DEMOS = (
    Demo("A440", "The Oscillators", "Distpotify Demo", (440.0,), 20.0),
    Demo("C Major Arpeggio", "The Oscillators", "Distpotify Demo",
         (261.63, 329.63, 392.00, 523.25) * 8, 16.0),
    Demo("Slow Descent", "The Oscillators", "Distpotify Demo",
         tuple(440.0 * 2 ** (-n / 12) for n in range(12)), 24.0),
)


def tone_wav(path: Path, notes: Sequence[float], seconds: float, rate: int = 22050) -> Path:
    """A mono 16-bit WAV playing ``notes`` in turn, each softly faded in and out (no clicks)."""
    per_note = max(1, int(seconds * rate / len(notes)))
    fade = max(1, min(per_note // 8, rate // 50))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for frequency in notes:
            step = 2 * math.pi * frequency / rate
            frames = bytearray()
            for i in range(per_note):
                envelope = min(1.0, i / fade, (per_note - i) / fade)
                frames += struct.pack("<h", int(12000 * envelope * math.sin(step * i)))
            out.writeframes(bytes(frames))
    return path


def demo_file(demo: Demo, directory: Path) -> tuple[Path, str]:
    """The demo as MP3 when ffmpeg can encode one, else as WAV; (file, content type)."""
    wav = tone_wav(directory / f"{demo.title}.wav", demo.notes, demo.seconds)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is not None:
        mp3 = directory / f"{demo.title}.mp3"
        tags = ["-metadata", f"title={demo.title}", "-metadata", f"artist={demo.artist}",
                "-metadata", f"album={demo.album}"]
        done = subprocess.run(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
             *tags, "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3", str(mp3)],
            capture_output=True, timeout=120, check=False,
        )
        if done.returncode == 0:
            return mp3, "audio/mpeg"
    return wav, "audio/wav"
