"""A small blocking HTTP client whose connections start inside a lab host's namespace.

The workload, the checker and the tests use it from ordinary threads: the socket is created
in the namespace (like a process running on that host) and used from the caller's thread.
"""
# test-case-name: tests.lab.test_network

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Mapping
from typing import Any

import attrs

from distpotify.keys import ClusterKeys
from distpotify.signing import body_sha256, sign
from lab.netns import socket_in

DEFAULT_TIMEOUT = 5.0


@attrs.frozen
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    elapsed: float

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-served-by")

    def json(self) -> Any:
        return json.loads(self.body)


class _NetnsConnection(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = socket_in(self._netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class LabClient:
    """HTTP from inside NETNS to any lab address; one connection per request, so a killed or
    partitioned server is noticed at once instead of on a stale keep-alive connection.
    ``credentials`` (an ``Authorization`` header) go with every request that names none."""

    def __init__(self, netns: str, timeout: float = DEFAULT_TIMEOUT,
                 credentials: Mapping[str, str] | None = None) -> None:
        self.netns = netns
        self.timeout = timeout
        self.credentials = dict(credentials or {})

    def request(
        self,
        method: str,
        host: str,
        port: int,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Send one request; OSError (refused, unreachable, timeout, reset) when it fails."""
        started = time.monotonic()
        connection = _NetnsConnection(self.netns, host, port, timeout or self.timeout)
        try:
            connection.request(method, path, body=body,
                               headers={**self.credentials, **(headers or {})})
            response = connection.getresponse()
            data = response.read()
        except http.client.HTTPException as exc:
            raise OSError(f"bad HTTP answer from {host}:{port}: {exc!r}") from exc
        finally:
            connection.close()
        return Answer(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=data,
            elapsed=time.monotonic() - started,
        )

    def get_json(self, host: str, port: int, path: str, timeout: float | None = None,
                 keys: ClusterKeys | None = None) -> Any:
        """GET PATH and decode JSON; OSError unless the answer is 200 with a JSON body. With
        ``keys``, the request is signed as a replica signs it (what /sync/* requires)."""
        headers = ({k.decode(): v.decode() for k, v in sign(
            keys, b"GET", path.encode(), body_sha256(b""), time.time()).items()}
            if keys is not None else None)
        answer = self.request("GET", host, port, path, headers=headers, timeout=timeout)
        if answer.status != 200:
            raise OSError(f"GET {path} on {host}:{port} answered {answer.status}")
        try:
            return answer.json()
        except ValueError as exc:
            raise OSError(f"GET {path} on {host}:{port} is not JSON: {exc}") from exc
