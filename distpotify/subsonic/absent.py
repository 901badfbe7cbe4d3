"""The spec's reads of what this server does not keep, answered empty rather than error 0.

Podcasts, internet radio, shares, videos and chat are not part of the library here; artist
and album notes, similar songs and lyrics would come from services elsewhere.
Apps ask for some of these as they start or open a page (the podcast and radio tabs, an
artist's page), and an empty list is the true answer to them, where error 0 "not
implemented" shows up as a failure in the app. ``getScanStatus`` says no scan runs: every
upload is in the library as soon as it is acknowledged. The writes of these features
(``createShare``, ``createInternetRadioStation``, ``startScan``, ...) stay error 0:
answering them as done would lose what the user asked to keep. (The play queue and
bookmarks are kept: resume.py.)
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from distpotify.subsonic.browse import catalog_of
from distpotify.subsonic.call import Call, method

# method -> its answer when the server holds nothing of the kind (the lists' JSON arrays).
EMPTY: dict[str, dict[str, Any]] = {
    "getPodcasts": {"podcasts": {"channel": []}},
    "getNewestPodcasts": {"newestPodcasts": {"episode": []}},
    "getInternetRadioStations": {"internetRadioStations": {"internetRadioStation": []}},
    "getShares": {"shares": {"share": []}},
    "getVideos": {"videos": {"video": []}},
    "getChatMessages": {"chatMessages": {"chatMessage": []}},
    "getArtistInfo": {"artistInfo": {}},
    "getArtistInfo2": {"artistInfo2": {}},
    "getAlbumInfo": {"albumInfo": {}},
    "getAlbumInfo2": {"albumInfo": {}},
    "getSimilarSongs": {"similarSongs": {"song": []}},
    "getSimilarSongs2": {"similarSongs2": {"song": []}},
    "getLyrics": {"lyrics": {"value": ""}},  # "value": the text (of none), as JSON gives it
}


def _empty(answer: dict[str, Any]) -> Callable[[Call], Awaitable[dict[str, Any]]]:
    async def handler(call: Call) -> dict[str, Any]:
        return copy.deepcopy(answer)
    return handler


for _name, _answer in EMPTY.items():
    method(_name)(_empty(_answer))


@method("getScanStatus")
async def get_scan_status(call: Call) -> dict[str, Any]:
    catalog = await catalog_of(call)
    return {"scanStatus": {"scanning": False,
                           "count": sum(album["song_count"] for album in catalog.albums)}}
