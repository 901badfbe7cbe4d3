"""The Subsonic methods that write (issue 18), shared by the replica's /rest API and the proxy:
they are GETs as often as POSTs, so the proxy sends them to the leader by name, not by HTTP
method, and read-your-writes follows them like any write.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

# Lower-case method names (a client's "/rest/createPlaylist.view" matches "createplaylist").
WRITES = frozenset(name.lower() for name in (
    "createPlaylist", "updatePlaylist", "deletePlaylist",
    "star", "unstar", "setRating", "scrobble", "savePlayQueue", "savePlayQueueByIndex",
    "changePassword", "createUser", "updateUser", "deleteUser",
    "createBookmark", "deleteBookmark", "createShare", "updateShare", "deleteShare",
    "createInternetRadioStation", "updateInternetRadioStation", "deleteInternetRadioStation",
    "createPodcastChannel", "deletePodcastChannel", "deletePodcastEpisode",
    "downloadPodcastEpisode", "refreshPodcasts", "startScan", "jukeboxControl",
))


def method_name(path: bytes | str) -> str | None:
    """The lower-case Subsonic method a request path names ("/rest/ping.view" -> "ping"), or
    None for a path outside /rest."""
    text = path.decode("latin-1") if isinstance(path, bytes) else path
    text = text.split("?", 1)[0]
    if not text.startswith("/rest/"):
        return None
    name = text[len("/rest/"):]
    if name.endswith(".view"):
        name = name[: -len(".view")]
    return name.lower() if name and "/" not in name else None


def method_of_uri(uri: bytes) -> str | None:
    """The method a request's raw URI names, its path unquoted as the replica's router
    unquotes it ("/%72est/star" is a star); None outside /rest. Asked of every request the
    proxy forwards: a path without "%" outside /rest is answered without unquoting."""
    path = uri.partition(b"?")[0]
    if b"%" in path:
        path = unquote_to_bytes(path)
    elif not path.startswith(b"/rest/"):
        return None
    return method_name(path)


def writes(path: bytes | str) -> bool:
    """Whether the request for ``path`` is a Subsonic write (sent to the leader)."""
    return method_name(path) in WRITES
