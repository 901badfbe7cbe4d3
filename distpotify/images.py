"""Cover pictures as Pillow sees them: whether some bytes are an image we keep, and a copy
resized to fit a square, as JPEG (PNG when it has transparency).

Both run on worker threads (media.py at upload, covers.py when a size is asked for).
"""
# test-case-name: tests.unit.test_images

from __future__ import annotations

import io
import warnings

from PIL import Image

# The formats a cover may have: what browsers and Subsonic clients all show.
MIME_BY_FORMAT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                  "GIF": "image/gif"}
MAX_COVER_BYTES = 10 << 20  # a bigger embedded picture is ignored, a bigger PUT refused
# About 6000 x 6000: more is no cover but a decompression bomb (a tiny PNG can claim
# 100,000 x 100,000 pixels), which Pillow would otherwise only warn about below 179 MPx.
MAX_PIXELS = 40_000_000
MIN_SIZE, MAX_SIZE = 16, 2048  # the sizes a resized cover may be asked for (clamped)
JPEG_QUALITY = 85


class NotImage(Exception):
    """The bytes are not a picture we keep; the message says why, in one line."""


def image_mime(data: bytes) -> str:
    """The MIME type of a cover picture; NotImage unless ``data`` is a whole JPEG, PNG, WebP
    or GIF of at most MAX_COVER_BYTES and MAX_PIXELS (its structure checked by Pillow's
    ``verify``, without decoding every pixel)."""
    if not data:
        raise NotImage("the picture is empty")
    if len(data) > MAX_COVER_BYTES:
        raise NotImage(f"the picture is over {MAX_COVER_BYTES >> 20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                width, height = image.size
                if kind not in MIME_BY_FORMAT:
                    raise NotImage(f"{kind or 'an unknown'} pictures are not kept")
                if width * height > MAX_PIXELS or width < 1 or height < 1:
                    raise NotImage(f"the picture is {width} x {height} pixels: too many")
                image.verify()
    except NotImage:
        raise
    except Exception as e:  # Pillow reports a corrupt file with many exception types
        raise NotImage(f"not a readable picture: {' '.join(str(e).split())[:200]}") from None
    return MIME_BY_FORMAT[kind]


def clamp_size(size: int) -> int:
    return max(MIN_SIZE, min(MAX_SIZE, size))


def resized(data: bytes, size: int) -> tuple[bytes, str]:
    """``data`` scaled down to fit ``size`` x ``size`` (never up), keeping its aspect: JPEG,
    or PNG when it has transparency; and its MIME type. NotImage if it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise NotImage("too many pixels")
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # decode at a reduced scale: far cheaper
            image.seek(0)  # an animated GIF or WebP: its first frame
            alpha = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info)
            frame = image.convert("RGBA" if alpha else "RGB")
        frame.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if alpha:
            frame.save(out, "PNG", optimize=True)
            return out.getvalue(), "image/png"
        frame.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        return out.getvalue(), "image/jpeg"
    except NotImage:
        raise
    except Exception as e:
        raise NotImage(f"the picture cannot be decoded: {' '.join(str(e).split())[:200]}") \
            from None
