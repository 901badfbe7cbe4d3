"""The cover art API of a replica (issue 18): ``GET /covers/<sha256>?size=N``, ``GET`` and
``PUT /albums/<album id>/cover``. Mounted by ReplicaRoot beside PublicAPI, shaped the same
way: a Klein app on a class, typed path segments, failures answered by failures.py.
"""
# test-case-name: tests.unit.test_covers_api, tests.integration.test_covers

from __future__ import annotations

import re

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.routing import BaseConverter

from distpotify.api.failures import answer_failure
from distpotify.api.gate import actor_of
from distpotify.api.outcomes import answer, request_key
from distpotify.api.parsing import query, typed_routes
from distpotify.covers import Covers
from distpotify.errors import BadRequest, NotFound
from distpotify.images import clamp_size


class Sha256Converter(BaseConverter):
    """``<sha256:name>``: a SHA-256 in lowercase hex, the name of a cover."""

    regex = "[0-9a-f]{64}"


_INTEGER = re.compile(r"-?[0-9]{1,30}")


def size_arg(text: str | None) -> int | None:
    """``?size=``: absent or empty is None (the original); a decimal integer of up to 30
    digits is clamped to 16..2048 (clients ask for what their screen wants); anything else
    is a 400."""
    if text is None or text == "":
        return None
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"size must be a whole number of pixels, got {text[:20]!r}")
    return clamp_size(int(text))


class CoversAPI:
    app = typed_routes(Klein())
    app.url_map.converters["sha256"] = Sha256Converter

    def __init__(self, covers: Covers) -> None:
        self._covers = covers

    @app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return answer_failure(request, failure)

    @app.route("/covers/<sha256:sha256>", methods=["GET"])
    async def cover(self, request: Request, sha256: str) -> bytes:
        return await self._covers.serve(request, sha256, size_arg(query(request).get("size")))

    @app.route("/albums/<id:album_id>/cover", methods=["GET"])
    async def album_cover(self, request: Request, album_id: str) -> bytes:
        size = size_arg(query(request).get("size"))
        sha256 = await self._covers.album_cover(album_id)
        if sha256 is None:
            raise NotFound(f"album {album_id} has no cover")
        return await self._covers.answer(request, sha256, size, immutable=False)

    @app.route("/albums/<id:album_id>/cover", methods=["PUT"])
    async def set_album_cover(self, request: Request, album_id: str) -> bytes:
        assert request.content is not None
        key = await request_key(request, self._covers.request_key)
        return answer(request, await self._covers.set_album_cover(
            album_id, request.content, key, actor_of(request)))
