"""Every option of the proxy, its default, and its checks (README "The proxy" lists them).

ProxyConfig is built once (tap.py) from options and environment and passed down.
"""
# test-case-name: tests.unit.test_proxy_tap

from __future__ import annotations

from pathlib import Path

import attrs

from distpotify.httpchannel import DEFAULT_TIMEOUTS, Timeouts
from distpotify.keys import ClusterKeys
from distpotify.options import ConfigError, check_positive
from proxy.forwarded import TrustedProxies
from proxy.listen import tcp_description

WEB_DIR = Path(__file__).resolve().parent / "web"
MIB = 1024 * 1024


def parse_backends(text: str) -> tuple[str, ...]:
    """``HOST:PORT,http://HOST:PORT,[::1]:PORT`` -> base URLs like ``http://HOST:PORT``."""
    urls: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        address = item.removeprefix("http://").rstrip("/")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or "/" in address:
            raise ConfigError(f"--backends entry must be HOST:PORT, got {item!r}")
        if not 0 < int(port) <= 65535:
            raise ConfigError(f"--backends entry has a bad port: {item!r}")
        host = host.strip("[]")
        url = f"http://[{host}]:{int(port)}" if ":" in host else f"http://{host}:{int(port)}"
        if url not in urls:
            urls.append(url)
    return tuple(urls)


NO_KEY = (
    "--cluster-key-file is required (or DISTPOTIFY_CLUSTER_KEY_FILE): the replicas' cluster"
    " key file, with which the proxy signs its /status polls and checks session tokens"
    " (with --auth on, the default; --auth off, for a trusted network only, needs none)"
)


@attrs.frozen
class ProxyConfig:
    backends: tuple[str, ...]
    port: int = 8080
    host: str = "127.0.0.1"
    write_hold: float = 5.0
    health_max_age: float = 0.5
    poll_interval: float = 0.25
    check_timeout: float = 0.5
    connect_timeout: float = 2.0
    response_timeout: float = 2.0
    stall_timeout: float = 1.0
    write_timeout: float = 300.0
    session_memory: float = 5.0
    max_upload: int = 512 * MIB
    web_dir: Path = WEB_DIR
    listen: tuple[str, ...] = ()  # endpoint descriptions; none: --host and --port
    trusted_proxies: TrustedProxies = attrs.field(factory=TrustedProxies)
    max_connections_per_client: int = 64  # 0: no cap per client
    header_timeout: float = DEFAULT_TIMEOUTS.header
    body_timeout: float = DEFAULT_TIMEOUTS.body
    idle_timeout: float = DEFAULT_TIMEOUTS.idle
    # GET bodies relayed with splice(2), reads sent by the lean client (splice.py, leanclient.py)
    splice: bool = True
    # The replicas' cluster key: the proxy signs its /status polls with it (required with
    # --auth on, where replicas answer unsigned ones 401).
    cluster_keys: ClusterKeys | None = attrs.field(default=None, repr=False)
    # --auth: on (the default), /proxy/status and the proxy's /metrics answer admins and
    # --metrics-token; off, for a trusted network, anyone
    auth: bool = True
    metrics_token: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.backends:
            raise ConfigError("--backends needs at least one replica, HOST:PORT,...")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be a port number (0-65535), got {self.port}")
        for name in (
            "health_max_age", "poll_interval", "check_timeout", "connect_timeout",
            "response_timeout", "stall_timeout", "write_timeout", "header_timeout",
            "body_timeout", "idle_timeout",
        ):
            check_positive(name.replace("_", "-"), getattr(self, name))
        check_positive("max-upload", self.max_upload)
        for name in ("write_hold", "session_memory"):
            if not getattr(self, name) >= 0:  # nan too
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more,"
                                  f" got {getattr(self, name)}")
        if self.max_connections_per_client < 0:
            raise ConfigError("--max-connections-per-client must be 0 (no cap) or more,"
                              f" got {self.max_connections_per_client}")
        if self.auth and self.cluster_keys is None:
            raise ConfigError(NO_KEY)


    @property
    def listeners(self) -> tuple[str, ...]:
        """The endpoint descriptions to listen on: --listen, else --host and --port."""
        return self.listen or (tcp_description(self.host, self.port),)

    @property
    def timeouts(self) -> Timeouts:
        """The deadlines for a client's headers, body and idle keep-alive."""
        return Timeouts(self.header_timeout, self.body_timeout, self.idle_timeout)
