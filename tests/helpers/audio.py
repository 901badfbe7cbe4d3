"""Real audio for tests: short tagged clips made by ffmpeg, and big WAVs written in pure Python.

Tests that need ffmpeg skip when it is missing, except in CI (CI=true), where that is an error.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import wave
from collections.abc import Mapping
from pathlib import Path

import pytest
from mutagen import id3
from mutagen.oggvorbis import OggVorbis

FFMPEG = shutil.which("ffmpeg")
FFMPEG_AVAILABLE = FFMPEG is not None

# Encoder and muxer per format; the muxer is explicit so the file name's suffix does not matter.
_FFMPEG_FORMATS: Mapping[str, tuple[str, ...]] = {
    "mp3": ("-c:a", "libmp3lame", "-b:a", "128k", "-id3v2_version", "4", "-f", "mp3"),
    "flac": ("-c:a", "flac", "-f", "flac"),
    "ogg": ("-c:a", "libvorbis", "-q:a", "2", "-f", "ogg"),
    "opus": ("-c:a", "libopus", "-b:a", "64k", "-f", "opus"),
    "wav": ("-c:a", "pcm_s16le", "-f", "wav"),  # ffmpeg writes WAV tags as a LIST/INFO chunk
    "m4a": ("-c:a", "aac", "-b:a", "128k", "-f", "ipod"),
    "aac": ("-c:a", "aac", "-b:a", "128k", "-f", "adts"),  # raw ADTS carries no tags
}
AUDIO_FORMATS = tuple(_FFMPEG_FORMATS)

WAV_HEADER_SIZE = 44  # RIFF header + 16-byte PCM fmt chunk + data chunk header, as `wave` writes


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_ffmpeg() -> str:
    """The ffmpeg executable; skips the calling test without it, or fails it in CI."""
    if FFMPEG is None:
        if in_ci():
            pytest.fail("ffmpeg is not installed, and CI must run every audio test", pytrace=False)
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg to run this test)")
    return FFMPEG


def run_ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly and deterministically; raise with its stderr when it fails."""
    command = [require_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed with exit status {result.returncode}: {' '.join(command)}\n"
            f"{result.stderr.strip()}"
        )


def make_audio(
    path: Path, fmt: str, seconds: float = 2.0, tags: dict[str, str] | None = None
) -> Path:
    """Write a real `seconds`-long 440 Hz tone in `fmt` to `path`, with `tags` as metadata.

    Tag names are ffmpeg's (title, artist, album, track, date, genre, ...). Formats:
    mp3 (ID3v2.4), flac, ogg (Vorbis), opus (Ogg Opus), wav (RIFF INFO tags), m4a, aac (ADTS).
    """
    try:
        codec = _FFMPEG_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(AUDIO_FORMATS)}") from None
    metadata: list[str] = []
    for name, value in (tags or {}).items():
        metadata += ["-metadata", f"{name}={value}"]
    run_ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
        *metadata,
        # bitexact: no encoder version tag, so the same call gives the same bytes tomorrow
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *codec,
        str(path),
    )  # fmt: skip
    return path


def make_wav(
    path: Path,
    size_bytes: int,
    *,
    sample_rate: int = 44100,
    channels: int = 2,
    seed: int = 0,
    block_size: int = 1 << 20,
) -> Path:
    """Write a valid 16-bit PCM WAV of `size_bytes` (rounded down to whole frames) to `path`.

    Streams to disk one block at a time, so it suits files of hundreds of MiB. The samples are
    seeded pseudo-random noise: the same for the same seed, and no two blocks alike. The
    duration is ``(size - WAV_HEADER_SIZE) / (sample_rate * channels * 2)`` seconds.
    """
    frame_size = channels * 2
    frames = (size_bytes - WAV_HEADER_SIZE) // frame_size
    if frames < 1:
        raise ValueError(f"a WAV needs more than {WAV_HEADER_SIZE} bytes, not {size_bytes}")
    rng = random.Random(seed)
    frames_per_block = max(1, block_size // frame_size)
    with open(path, "wb") as raw, wave.open(raw, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        # Declared up front, so the header is right without seeking back to patch it.
        out.setnframes(frames)
        left = frames
        while left:
            count = min(left, frames_per_block)
            out.writeframesraw(rng.randbytes(count * frame_size))
            left -= count
    return path


def tagged_copy(base: Path, path: Path, tags: dict[str, str],
                cover: bytes | None = None) -> Path:
    """A copy of the MP3 or Ogg Vorbis file ``base`` at ``path`` with these tags (title,
    artist, album, albumartist, date, tracknumber, discnumber, genre) in place of its own, and
    ``cover`` (JPEG bytes) embedded as the front cover of an MP3: distinct tags make distinct
    bytes, so one ffmpeg run makes any number of distinct songs."""
    shutil.copyfile(base, path)
    if base.suffix == ".ogg":
        vorbis = OggVorbis(path)
        vorbis.delete()
        for name, value in tags.items():
            vorbis[name] = [value]
        vorbis.save()
        return path
    frames = {"title": id3.TIT2, "artist": id3.TPE1, "album": id3.TALB, "albumartist": id3.TPE2,
              "date": id3.TDRC, "tracknumber": id3.TRCK, "discnumber": id3.TPOS,
              "genre": id3.TCON}
    tag = id3.ID3()
    for name, value in tags.items():
        tag.add(frames[name](encoding=3, text=[value]))
    if cover is not None:
        tag.add(id3.APIC(encoding=3, mime="image/jpeg", type=3, desc="cover", data=cover))
    tag.save(path)
    return path
