"""The methods that answer with bytes: stream and download (a song's original bytes, with
Range, by GET /songs/{id}/stream's own code) and getCoverArt (covers.py's pictures).

There is no transcoding: ``maxBitRate``, ``format`` (``raw`` too), ``timeOffset`` and
``estimateContentLength`` are accepted and the original file is served.
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

from distpotify.model import valid_uuid
from distpotify.subsonic.call import NOT_FOUND, SENT, Call, Sent, SubsonicError, method

MAX_COVER_SIZE = 4096  # pixels: a bigger size is the original


async def _original(call: Call) -> Sent:
    song_id = call.params.required("id")
    if not valid_uuid(song_id):
        raise SubsonicError(NOT_FOUND, "Song not found")
    body = await call.server.stream(call.request, song_id)
    if body:
        call.request.write(body)
    return SENT


@method("stream")
async def stream(call: Call) -> Sent:
    return await _original(call)


@method("download")
async def download(call: Call) -> Sent:
    return await _original(call)


@method("getCoverArt")
async def get_cover_art(call: Call) -> Sent:
    cover_id = call.params.required("id")
    size = call.params.integer("size", None, 1, 2**31 - 1)
    covers = call.server.covers
    if covers is None:
        raise SubsonicError(NOT_FOUND, "Cover art not found")
    body = await covers.serve(call.request, cover_id,
                              None if size is None or size > MAX_COVER_SIZE else size)
    if body:
        call.request.write(body)
    return SENT
