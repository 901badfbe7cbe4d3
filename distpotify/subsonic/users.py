"""The Subsonic user methods: getUser (one's own; an admin, anyone's), getUsers (admins) and
changePassword (one's own; an admin, anyone's; never by an API key), on the accounts of
accounts.py.

Roles map onto ours: every account may stream, download, upload, make playlists and scrobble;
only an admin has ``adminRole`` and ``settingsRole``. What the server does not offer (podcasts,
jukebox, shares, video, comments) is false for all.
"""
# test-case-name: tests.unit.test_subsonic_user

from __future__ import annotations

from typing import Any

from distpotify.auth.users import ADMIN, User
from distpotify.subsonic.annotations import write_key, written
from distpotify.subsonic.call import (
    GENERIC,
    NOT_AUTHORIZED,
    NOT_FOUND,
    Call,
    SubsonicError,
    decoded_password,
    method,
)
from distpotify.subsonic.system import MUSIC_FOLDER


def _element(user: User) -> dict[str, Any]:
    """An account as the spec's ``User``."""
    admin = user.role == ADMIN
    return {
        "username": user.username, "scrobblingEnabled": True, "adminRole": admin,
        "settingsRole": admin, "downloadRole": True, "uploadRole": True,
        "playlistRole": True, "coverArtRole": admin, "commentRole": False,
        "podcastRole": False, "streamRole": True, "jukeboxRole": False, "shareRole": False,
        "videoConversionRole": False, "folder": [MUSIC_FOLDER["id"]],
    }


def _named(call: Call, username: str) -> User:
    """The account ``username`` names, if the caller may act on it: their own, or any for an
    admin (error 50 otherwise, before saying whether it exists; 70 if it does not)."""
    own = call.server.accounts.directory.by_id(call.user.id) or call.user
    found: User | None = call.server.accounts.directory.by_name(username)
    if found is not None and found.id == own.id:
        return own
    if own.role != ADMIN:
        raise SubsonicError(NOT_AUTHORIZED, "Only an admin may act on another user")
    if found is None:
        raise SubsonicError(NOT_FOUND, f"No user {username[:64]!r}")
    return found


@method("getUser")
async def get_user(call: Call) -> dict[str, Any]:
    return {"user": _element(_named(call, call.params.required("username")))}


@method("getUsers")
async def get_users(call: Call) -> dict[str, Any]:
    if call.user.role != ADMIN:
        raise SubsonicError(NOT_AUTHORIZED, "Only an admin may list the users")
    found = sorted(call.server.accounts.directory, key=lambda u: (u.created_at, u.id))
    return {"users": {"user": [_element(user) for user in found]}}


@method("changePassword", writes=True)
async def change_password(call: Call) -> dict[str, Any]:
    """A new password (``password``, plain or ``enc:`` and its UTF-8 in hex) for
    ``username``: every session of the account ends, as with any new password, and its
    Subsonic box is sealed anew. Keyed as the account API's password change is: the
    digest leaves the new password out, so one key sent again with another password is
    answered the first outcome."""
    if call.params.get("apiKey") is not None:
        # A key is an app's, made to play music: a password set by it would let whoever holds
        # the key log in to the account itself and make keys of their own.
        raise SubsonicError(NOT_AUTHORIZED, "an API key cannot change a password: send the"
                            " account's password (p, or t and s)")
    user = _named(call, call.params.required("username"))
    password = decoded_password(call.params.required("password"), GENERIC)
    key = await write_key(call, secret="password")
    return written(call, await call.server.accounts.update(user.id, {"password": password}, key))

