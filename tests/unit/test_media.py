"""read_audio_info: what it finds in real files of each format, and what it refuses."""

from __future__ import annotations

import io
import random
import shutil
import struct
import tracemalloc
import wave
from pathlib import Path

import pytest
from mutagen.flac import FLAC
from mutagen.id3 import TIT2
from mutagen.wave import WAVE

from distpotify import media
from distpotify.media import AudioInfo, NotAudio, read_audio_info
from tests.helpers.audio import WAV_HEADER_SIZE, make_audio, make_wav, run_ffmpeg

TAGS = {
    "title": "Song Title",
    "artist": "The Artist",
    "album": "The Album",
    "track": "3/12",
    "date": "2019-05-01",
    "genre": "Rock",
}
TAGGED_FORMATS = ("mp3", "flac", "ogg", "opus", "wav", "m4a")
MIME = {
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
}
SECONDS = 2.0
# Lossy encoders pad the last frame (MP3 by about 40 ms); that is not an error to detect.
DURATION_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One two-second clip per format, tagged with TAGS (raw AAC cannot carry tags)."""
    folder = tmp_path_factory.mktemp("clips")
    made = {fmt: make_audio(folder / f"tagged.{fmt}", fmt, SECONDS, TAGS) for fmt in TAGGED_FORMATS}
    made["aac"] = make_audio(folder / "plain.aac", "aac", SECONDS)
    return made


@pytest.fixture(scope="module")
def untitled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per format with an artist but no title."""
    folder = tmp_path_factory.mktemp("untitled")
    return {
        fmt: make_audio(folder / f"untitled.{fmt}", fmt, SECONDS, {"artist": "The Artist"})
        for fmt in TAGGED_FORMATS
    }


def read(path: Path) -> AudioInfo:
    with path.open("rb") as f:
        return read_audio_info(f)


def retagged_flac(clips: dict[str, Path], tmp_path: Path, **tags: str) -> Path:
    """A copy of the FLAC clip with some Vorbis comments replaced, without running ffmpeg."""
    path = tmp_path / "retagged.flac"
    shutil.copyfile(clips["flac"], path)
    audio = FLAC(path)
    for name, value in tags.items():
        audio[name] = value
    audio.save()
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class CountingFile(io.FileIO):
    """A file that remembers how many bytes were read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("fmt", TAGGED_FORMATS)
def test_reads_tags(clips: dict[str, Path], fmt: str) -> None:
    info = read(clips[fmt])

    assert (info.title, info.artist, info.album, info.genre) == (
        "Song Title",
        "The Artist",
        "The Album",
        "Rock",
    )


@pytest.mark.parametrize("fmt", TAGGED_FORMATS)
def test_track_of_total_reads_as_track_number(clips: dict[str, Path], fmt: str) -> None:
    assert read(clips[fmt]).track == 3


@pytest.mark.parametrize("fmt", TAGGED_FORMATS)
def test_full_date_reads_as_year(clips: dict[str, Path], fmt: str) -> None:
    assert read(clips[fmt]).year == 2019


@pytest.mark.parametrize("fmt", MIME)
def test_reads_duration(clips: dict[str, Path], fmt: str) -> None:
    duration = read(clips[fmt]).duration

    assert duration == pytest.approx(SECONDS, abs=DURATION_TOLERANCE)


@pytest.mark.parametrize("fmt", MIME)
def test_names_canonical_mime_type(clips: dict[str, Path], fmt: str) -> None:
    assert read(clips[fmt]).mime == MIME[fmt]


@pytest.mark.parametrize("fmt", TAGGED_FORMATS)
def test_missing_title_is_none(untitled: dict[str, Path], fmt: str) -> None:
    info = read(untitled[fmt])

    assert (info.title, info.artist) == (None, "The Artist")


def test_untagged_file_is_audio_with_no_tags(clips: dict[str, Path]) -> None:
    # mutagen's file objects are mappings of their tags: an untagged file is falsy.
    info = read(clips["aac"])

    assert info == AudioInfo(
        mime="audio/aac",
        duration=info.duration,
        title=None,
        artist=None,
        album=None,
        track=None,
        year=None,
        genre=None,
    )


def test_tag_values_are_stripped(clips: dict[str, Path], tmp_path: Path) -> None:
    path = retagged_flac(clips, tmp_path, title="  Padded \x00", artist="\tTabbed\n")

    info = read(path)

    assert (info.title, info.artist) == ("Padded", "Tabbed")


def test_a_tag_longer_than_an_edit_may_write_is_cut_to_its_length(
        clips: dict[str, Path], tmp_path: Path) -> None:
    path = retagged_flac(clips, tmp_path, title="x" * 5000, artist="y" * 999 + " " + "z" * 50)

    info = read(path)

    assert info.title == "x" * media.MAX_TEXT
    assert info.artist == "y" * 999  # cut, then stripped like any tag


def test_blank_tag_is_none(clips: dict[str, Path], tmp_path: Path) -> None:
    path = retagged_flac(clips, tmp_path, title="   ", album="")

    info = read(path)

    assert (info.title, info.album) == (None, None)


@pytest.mark.parametrize(
    ("text", "track"),
    [("7", 7), ("07", 7), (" 3 / 12 ", 3), ("A1", None), ("0", None), ("x/12", None),
     ("12345678901234567890", None)],
)  # fmt: skip
def test_track_number_is_parsed_defensively(
    clips: dict[str, Path], tmp_path: Path, text: str, track: int | None
) -> None:
    path = retagged_flac(clips, tmp_path, tracknumber=text)

    assert read(path).track == track


@pytest.mark.parametrize(
    ("text", "year"),
    [("2019", 2019), ("2019-05-01T10:00:00", 2019), ("20190501", 2019), ("01.05.2019", 2019),
     ("'19", None), ("0000", None), ("someday", None)],
)  # fmt: skip
def test_year_is_parsed_defensively(
    clips: dict[str, Path], tmp_path: Path, text: str, year: int | None
) -> None:
    path = retagged_flac(clips, tmp_path, date=text)

    assert read(path).year == year


def test_reads_id3_chunk_in_wav(clips: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "id3.wav"
    shutil.copyfile(clips["wav"], path)
    audio = WAVE(path)
    audio.add_tags()
    assert audio.tags is not None
    audio.tags.add(TIT2(encoding=3, text=["From ID3"]))
    audio.save()

    info = read(path)

    assert (info.title, info.artist) == ("From ID3", "The Artist")


def test_garbage_bytes_are_not_audio(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.mp3", random.Random(7).randbytes(64 * 1024))

    with pytest.raises(NotAudio):
        read(path)


def test_empty_file_is_not_audio(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.mp3", b"")

    with pytest.raises(NotAudio, match="empty"):
        read(path)


def test_truncated_mp3_header_is_not_audio(clips: dict[str, Path], tmp_path: Path) -> None:
    # Cut inside the ID3v2 tag, before the first MPEG frame.
    path = write(tmp_path / "cut.mp3", clips["mp3"].read_bytes()[:100])

    with pytest.raises(NotAudio):
        read(path)


def test_text_file_is_not_audio(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", b"Not a song, just some notes.\n" * 100)

    with pytest.raises(NotAudio):
        read(path)


def test_png_is_not_audio(tmp_path: Path) -> None:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBB", 13, b"IHDR", 1, 1, 8, 2, 0, 0, 0)
    path = write(tmp_path / "cover.png", header + bytes(1024))

    with pytest.raises(NotAudio):
        read(path)


def test_video_without_audio_track_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent-film.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x48", "-c:v", "mpeg4", str(path))

    with pytest.raises(NotAudio, match="no audio stream"):
        read(path)


def test_wav_without_samples_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(44100)

    with pytest.raises(NotAudio, match="no samples"):
        read(path)


def test_parser_exception_becomes_not_audio(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_parser(*args: object, **kwargs: object) -> None:
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(media.mutagen, "File", broken_parser)

    with pytest.raises(NotAudio, match="unpack requires"):
        read(clips["mp3"])


@pytest.mark.parametrize(
    "data",
    [b"", b"ID3\x04\x00\x00\x00\x00\x01\x05" + bytes(90), b"plain text\n" * 50],
    ids=["empty", "truncated-id3", "text"],
)
def test_refusal_is_one_line(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(NotAudio) as refusal:
        read(write(tmp_path / "bad", data))

    message = str(refusal.value)
    assert message and "\n" not in message


def test_file_is_rewound_after_reading(clips: dict[str, Path]) -> None:
    with clips["flac"].open("rb") as f:
        f.seek(123)
        read_audio_info(f)

        assert f.tell() == 0


def test_file_is_rewound_after_refusing(tmp_path: Path) -> None:
    with write(tmp_path / "notes.txt", b"not audio\n" * 100).open("rb") as f:
        f.seek(42)
        with pytest.raises(NotAudio):
            read_audio_info(f)

        assert f.tell() == 0


def test_large_wav_is_read_without_loading_it(tmp_path: Path) -> None:
    size = 96 * 1024 * 1024
    path = make_wav(tmp_path / "large.wav", size)

    with CountingFile(path, "rb") as f:
        info = read_audio_info(f)

    assert info.duration == pytest.approx((size - WAV_HEADER_SIZE) / (44100 * 2 * 2))
    assert f.bytes_read < 64 * 1024


def test_wav_with_unfinished_header_gets_duration_from_file_size(tmp_path: Path) -> None:
    # A WAV written to a pipe cannot seek back to fill in its sizes: they stay 0xFFFFFFFF.
    size = 4 * 1024 * 1024
    path = make_wav(tmp_path / "piped.wav", size)
    with path.open("r+b") as f:
        for size_field in (4, WAV_HEADER_SIZE - 4):
            f.seek(size_field)
            f.write(b"\xff\xff\xff\xff")

    duration = read(path).duration

    assert duration == pytest.approx(size / (44100 * 2 * 2), abs=0.01)


def test_huge_tag_is_refused_without_buffering_it(tmp_path: Path) -> None:
    # An ID3v2 header claiming a 256 MiB tag: mutagen alone would read all of it.
    path = write(tmp_path / "huge-tag.mp3", b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f")
    with path.open("r+b") as f:
        f.truncate(96 * 1024 * 1024)

    tracemalloc.start()
    try:
        with pytest.raises(NotAudio, match="MiB"):
            read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 80 * 1024 * 1024
