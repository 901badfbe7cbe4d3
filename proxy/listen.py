"""Where the proxy listens: Twisted endpoint descriptions such as ``tcp:8080`` or
``ssl:8443:privateKey=key.pem:certKey=cert.pem``, several at once (``--listen``), with
``--port``/``--host`` as the shorthand for one ``tcp:`` description.

Every ``tcp:``, ``tcp6:`` and ``ssl:`` listener gets a backlog of LISTEN_BACKLOG unless its
description sets one: listeners arrive in bursts (a page of players, a benchmark), and each
SYN the default backlog of 50 drops costs its client a second.
"""
# test-case-name: tests.unit.test_proxy_tap, tests.integration.test_proxy_tls

from __future__ import annotations

import re
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from distpotify.options import ConfigError

LISTEN_BACKLOG = 1024
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl"})


def parse_listen(text: str) -> tuple[str, ...]:
    """Comma-separated endpoint descriptions (a comma inside one is written ``\\,``)."""
    descriptions = tuple(filter(None, (part.strip() for part in re.split(r"(?<!\\),", text))))
    for description in descriptions:
        if ":" not in description:
            raise ConfigError(f"--listen entry must be an endpoint description such as"
                              f" tcp:8080 or ssl:8443:privateKey=KEY:certKey=CERT,"
                              f" got {description!r}")
    return descriptions


def tcp_description(host: str, port: int) -> str:
    """The ``--host``/``--port`` shorthand as a description (an IPv6 host escaped)."""
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


def with_backlog(description: str) -> str:
    kind = description.split(":", 1)[0].strip().lower()
    if kind in _BACKLOG_TYPES and not re.search(r"(?:^|:)backlog=", description):
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def endpoints(reactor: Any, descriptions: tuple[str, ...]
              ) -> list[tuple[str, IStreamServerEndpoint]]:
    """Each description with its endpoint; ConfigError naming the first that cannot be made
    (unknown type, bad argument, a certificate or key file missing or unreadable)."""
    made = []
    for description in descriptions:
        try:
            endpoint = serverFromString(reactor, with_backlog(description))
        except Exception as e:  # any failure to read operator text or files is theirs to fix
            raise ConfigError(f"--listen {description!r}: {type(e).__name__}: {e}") from None
        made.append((description, endpoint))
    return made
