"""Three real replicas of one cluster behind the real proxy, for tests of what clients see
through it: a client that keeps the proxy's cookie, agreement waits, and convergence; with
``auth=True``, every process runs ``--auth on`` and the first admin is made at start."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    Response,
    request,
    wait_until,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Client:
    """An HTTP client of the proxy that keeps the cookies it is given, as a browser would."""

    def __init__(self, proxy: ProxyProcess, headers: dict[str, str] | None = None) -> None:
        self.proxy = proxy
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        answer = request(self.proxy.port, method, path, body, sent, timeout=timeout)
        cookie = answer.headers.get("set-cookie")
        if cookie:
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name.strip()] = value.strip()
        return answer

    def send_json(self, method: str, path: str, value: Any,
                  headers: dict[str, str] | None = None) -> Response:
        return self.call(method, path, json.dumps(value).encode(),
                         {"Content-Type": "application/json", **(headers or {})})

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.call("GET", path, headers=headers)


# With auth=True: the helpers read /status and /proxy/status with this bearer, and the
# replicas make the first admin, ADMIN_NAME, with this password.
METRICS_TOKEN = "fronted-metrics-token-0123456789"
ADMIN_NAME = "admin"
ADMIN_PASSWORD = "fronted-admin-password"


class Fronted:
    """A cluster of replicas 1-3 and a proxy in front of them, started and agreed.
    ``extra``: the replicas' options; ``proxy_args``: the proxy's. ``auth``: every process
    with --auth on (the proxy with the cluster key) and the first admin made."""

    def __init__(self, root: Path, started: list[ReplicaProcess], *extra: str,
                 proxy_args: tuple[str, ...] = (), auth: bool = False) -> None:
        monitor = ("--auth", "on", "--metrics-token", METRICS_TOKEN) if auth else ()
        self.cluster = Cluster(root, started, *extra, *monitor)
        if auth:
            self.cluster.status_headers.update(bearer(METRICS_TOKEN))
        for node_id in (1, 2, 3):
            node = self.cluster.add(node_id, start=False)
            if auth:
                node.env = {**node.env, "DISTPOTIFY_ADMIN_PASSWORD": ADMIN_PASSWORD}
            node.start(wait=False)
        if auth:
            proxy_args = ("--cluster-key-file", str(self.cluster.key_file), *monitor,
                          *proxy_args)
        self.proxy = ProxyProcess(root, list(self.cluster.nodes.values()), *proxy_args)
        if auth:
            self.proxy.status_headers = bearer(METRICS_TOKEN)

    def log_in(self, username: str, password: str, timeout: float = STARTUP) -> Client:
        """A client sending the session token of ``username`` as a bearer. Tried every two
        seconds while it is refused (the leader makes the first admin a moment after it
        leads): the proxy lets an address fail five times a minute before it waits."""
        client = Client(self.proxy)

        def token() -> str | None:
            answer = client.send_json("POST", "/auth/login",
                                      {"username": username, "password": password})
            return answer.json()["token"] if answer.status == 200 else None

        found = wait_until(token, timeout, interval=2.0, what=f"{username} to log in")
        client.headers.update(bearer(found))
        return client

    def admin(self, timeout: float = STARTUP) -> Client:
        """A client of the first admin's session (``auth=True``)."""
        return self.log_in(ADMIN_NAME, ADMIN_PASSWORD, timeout)

    def start(self, timeout: float = STARTUP) -> Fronted:
        self.settled(timeout)
        self.proxy.start()
        self.proxy_follows(timeout)
        return self

    def __enter__(self) -> Fronted:
        """Started; its processes stopped (``stop_all``) when the block ends, or at once if
        it does not start."""
        try:
            return self.start()
        except BaseException:
            self.stop_all()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    @property
    def nodes(self) -> list[ReplicaProcess]:
        return list(self.cluster.nodes.values())

    def settled(self, timeout: float = STARTUP) -> dict[str, Any]:
        """The leader's /status once every replica agrees on one Bully will keep."""
        leader = wait_until(self.cluster.agreed_leader, timeout=timeout,
                            what="the replicas to agree on a leader")
        assert leader is not None  # wait_until returns the first truthy answer
        return leader

    def proxy_follows(self, timeout: float = STARTUP) -> int:
        """The leader's node id once the replicas agree on it and the proxy writes to it and
        reads from the two others. The agreement is asked again at every poll: a replica
        back from a pause takes the lead back meanwhile (issue 14's take-back), and waiting
        for the proxy to follow the leader it replaced would never end."""

        def following() -> int | None:
            agreed = self.cluster.agreed_leader()
            if agreed is None:
                return None
            view = self.proxy.status()
            leader = int(agreed["node_id"])
            if (view["leader"] or {}).get("node_id") == leader and len(view["readers"]) == 2:
                return leader
            return None

        return wait_until(following, timeout, what="the proxy to follow the replicas' leader")

    def restore(self, node: ReplicaProcess, how: signal.Signals) -> None:
        """Bring back a replica that was SIGKILLed (restart on its data dir) or SIGSTOPped."""
        if how == signal.SIGKILL:
            node.start(wait=False)
        else:
            node.signal(signal.SIGCONT)

    def converged(self, timeout: float = 90.0) -> None:
        """Wait until every replica holds the same rows (equal anti-entropy digests)."""

        def equal() -> bool:
            digests = [n.signed("GET", "/sync/digest").json()["buckets"] for n in self.nodes]
            return all(d == digests[0] for d in digests)

        wait_until(equal, timeout=timeout, interval=0.5, what="the replicas to converge")

    def stop_all(self) -> None:
        self.proxy.kill()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGCONT)
