"""The methods about the server itself: ping, getLicense, getMusicFolders and OpenSubsonic's
getOpenSubsonicExtensions (what this server supports beyond Subsonic 1.16.1) and tokenInfo
(part of the apiKeyAuthentication extension).
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

from typing import Any

from distpotify.subsonic.call import Call, method

# The one music folder: the cluster's whole library.
MUSIC_FOLDER = {"id": 1, "name": "Music"}


@method("ping")
async def ping(call: Call) -> dict[str, Any]:
    return {}


@method("getLicense")
async def get_license(call: Call) -> dict[str, Any]:
    return {"license": {"valid": True}}


@method("getMusicFolders")
async def get_music_folders(call: Call) -> dict[str, Any]:
    return {"musicFolders": {"musicFolder": [MUSIC_FOLDER]}}


@method("getOpenSubsonicExtensions", public=True)
async def get_extensions(call: Call) -> dict[str, Any]:
    """OpenSubsonic: answered without credentials, so a client can choose how to log in.
    No transcoding here: ``transcodeOffset`` and ``transcoding`` are not claimed, and stream
    serves the original bytes whatever maxBitRate and format ask. ``indexBasedQueue``: the
    play queue saved and read by index (resume.py)."""
    extensions = [{"name": "formPost", "versions": [1]},
                  {"name": "indexBasedQueue", "versions": [1]}]
    if hasattr(call.server.accounts, "user_by_api_key"):
        extensions.append({"name": "apiKeyAuthentication", "versions": [1]})
    return {"openSubsonicExtensions": extensions}


@method("tokenInfo")
async def token_info(call: Call) -> dict[str, Any]:
    """OpenSubsonic's apiKeyAuthentication: whose the key is (a client that logs in with a key
    alone learns its user's name here); an unknown key is error 44 before this runs. Other
    credentials name their user too."""
    return {"tokenInfo": {"username": call.user.username}}
