"""Browser security headers on every answer of the proxy, the player's files and the API
alike: a Content-Security-Policy that allows the proxy's own origin only, nosniff, a
Referrer-Policy, no framing, and HSTS when the client came over https; over https too, a
replica's session cookie is marked Secure (``secure_session_cookies``).

``SecureRequest`` is the proxy site's request: bodies spooled and limited (bodylimit.py), and
these headers added as the response starts, over whatever a replica sent.
"""
# test-case-name: tests.unit.test_proxy_security, tests.e2e.test_player_https

from __future__ import annotations

from twisted.web.http_headers import Headers

from distpotify.bodylimit import LimitedRequest
from proxy.forwarded import client_origin

# The player loads its scripts, styles, icon, audio and API answers from this origin only and
# runs no inline script or style (its JavaScript sets styles through the CSSOM, which CSP
# allows); nothing may frame it, post a form elsewhere, or move its base URL.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none';"
    b" object-src 'none'"
)
BROWSER_HEADERS = (
    (b"Content-Security-Policy", [CONTENT_SECURITY_POLICY]),
    (b"X-Content-Type-Options", [b"nosniff"]),
    # The whole URL to this origin (so same-origin writes keep their Origin), none elsewhere.
    (b"Referrer-Policy", [b"same-origin"]),
    (b"X-Frame-Options", [b"DENY"]),  # frame-ancestors, for browsers that predate it
)
# A year, the usual; without includeSubDomains, which would bind every sibling host too.
STRICT_TRANSPORT_SECURITY = (b"Strict-Transport-Security", [b"max-age=31536000"])


SESSION_COOKIE = b"distpotify_session="


def secure_session_cookies(headers: Headers) -> None:
    """Mark the replica's session cookies in ``headers`` Secure: the client came over https,
    which the replica behind the proxy cannot see for itself."""
    cookies = headers.getRawHeaders(b"set-cookie")
    if not cookies:
        return
    marked = []
    for cookie in cookies:
        attributes = {part.strip().lower() for part in cookie.split(b";")[1:]}
        if cookie.lstrip().startswith(SESSION_COOKIE) and b"secure" not in attributes:
            cookie += b"; Secure"
        marked.append(cookie)
    headers.setRawHeaders(b"set-cookie", marked)


class SecureRequest(LimitedRequest):
    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            headers = self.responseHeaders
            for name, values in BROWSER_HEADERS:
                headers.setRawHeaders(name, values)
            if client_origin(self).https:
                headers.setRawHeaders(*STRICT_TRANSPORT_SECURITY)
        super().write(data)
