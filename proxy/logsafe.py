"""What the proxy's log lines say of a request's URI: a Subsonic request (``/rest/...``)
carries its client's password, token and salt, or API key, in the query string on every
call, so its query never reaches a log line; other URIs are shown whole."""
# test-case-name: tests.unit.test_proxy_rest

from __future__ import annotations

from urllib.parse import unquote_to_bytes

# The query's place, shown instead of it.
HIDDEN = "?<hidden>"


def loggable_uri(uri: bytes) -> str:
    """``uri`` as a log line may show it: without the query of anything under /rest (any
    case, however many slashes lead: the replica may not serve those, but the log must not
    show their secrets either)."""
    path, mark, _ = uri.partition(b"?")
    text = path.decode("utf-8", "replace")
    plain = unquote_to_bytes(path).decode("utf-8", "replace")  # as the replica routes it
    if mark and plain.lstrip("/").lower().startswith("rest"):
        return text + HIDDEN
    return uri.decode("utf-8", "replace")
