"""The Distpotify proxy without the guards of its internet face, for ``bench/proxy.py`` to
measure what they cost in the same run.

It runs ``twistd -n distpotify-proxy ARGS...`` in this process after putting back what
twisted.web has on its own: its stock HTTP channel (one 12-hour idle timer reset by every
read, no admission, no per-phase timeouts) and a request without the browser security
headers. Routing, retries, resume and the body limit are the proxy's own, unchanged.

Usage: ``python -P bench/unguarded_proxy.py --backends HOST:PORT,... --port PORT [options]``
(``-P``: without it bench/ comes first on the path, and bench/proxy.py shadows the package).
"""

from __future__ import annotations

import sys

from twisted.scripts.twistd import run
from twisted.web import http

from distpotify.bodylimit import LimitedRequest
from proxy import service, site


class UnguardedSite(site.ProxySite):
    # twisted.web's own channel and a request without the proxy's guards: on purpose.
    protocol = http.HTTPFactory.protocol  # type: ignore[assignment]
    requestFactory = LimitedRequest  # type: ignore[assignment]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.timeOut = http._REQUEST_TIMEOUT  # twisted.web's own idle timer, as before


def main() -> None:
    # proxy.service took ProxySite by name when it was imported: it builds the site.
    service.ProxySite = UnguardedSite  # type: ignore[misc]
    sys.argv = ["twistd", "-n", "--pidfile=", "distpotify-proxy", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
