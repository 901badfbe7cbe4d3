"""What Pillow says of cover pictures (images.py): the formats kept, corrupt and hostile
files refused, and resized copies that fit their box."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from distpotify.images import (
    MAX_COVER_BYTES,
    NotImage,
    clamp_size,
    image_mime,
    resized,
)
from tests.helpers.covers import picture


@pytest.mark.parametrize(("kind", "mime"), [
    ("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
])
def test_kept_formats_are_recognised(kind: str, mime: str) -> None:
    assert image_mime(picture(kind)) == mime


@pytest.mark.parametrize("data", [
    b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, picture("PNG")[:60], picture("BMP"),
    b"GIF89a" + b"\xff" * 20,
])
def test_anything_else_is_not_an_image(data: bytes) -> None:
    with pytest.raises(NotImage):
        image_mime(data)


def test_picture_over_the_byte_limit_is_refused() -> None:
    with pytest.raises(NotImage, match="MiB"):
        image_mime(picture("PNG") + b"\0" * MAX_COVER_BYTES)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_picture_claiming_too_many_pixels_is_refused() -> None:
    with pytest.raises(NotImage):
        image_mime(_png_header_claiming(100_000, 100_000))


def test_resized_copy_fits_the_box_and_keeps_the_aspect() -> None:
    data, mime = resized(picture("PNG", size=(400, 200)), 100)

    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, mime) == ("JPEG", (100, 50), "image/jpeg")


def test_small_picture_is_not_scaled_up() -> None:
    data, _ = resized(picture("JPEG", size=(40, 30)), 300)

    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 30)


def test_transparency_is_kept_as_png() -> None:
    data, mime = resized(picture("PNG", size=(200, 200), color=(0, 0, 0, 0), mode="RGBA"), 50)

    with Image.open(io.BytesIO(data)) as image:
        assert (mime, image.mode, image.getpixel((0, 0))[3]) == ("image/png", "RGBA", 0)


@pytest.mark.parametrize(("asked", "given"), [(1, 16), (16, 16), (300, 300), (99999, 2048)])
def test_sizes_are_clamped(asked: int, given: int) -> None:
    assert clamp_size(asked) == given


def test_resizing_garbage_is_not_image() -> None:
    with pytest.raises(NotImage):
        resized(b"not an image at all", 100)
