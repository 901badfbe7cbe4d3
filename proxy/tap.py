"""``twistd distpotify-proxy``: the entry point in front of the replicas (not built yet).

The proxy's issue replaces this stub; until then the command says so and exits.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage


class Options(usage.Options):
    synopsis = "--port 8080 --backends HOST:PORT,..."
    longdesc = "The Distpotify proxy. Not implemented yet: see the proxy issue."
    optParameters = [
        ["port", None, "8080", "port clients connect to"],
        ["backends", None, "", "replica HTTP addresses, HOST:PORT,..."],
        ["write-hold", None, "5", "seconds a write waits for a leader during an election"],
        ["health-max-age", None, "0.5", "seconds a backend health check stays fresh"],
    ]


def makeService(options: Options) -> IService:
    raise SystemExit("distpotify-proxy: not implemented yet (the proxy issue builds it)")
