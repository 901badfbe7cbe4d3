"""Every option of a replica, its default, and how it is read from the command line and env.

ReplicaConfig is built once (tap.py) and passed down; nothing reads options from globals.
"""
# test-case-name: tests.unit.test_tap

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import attrs

from distpotify.failpoints import Failpoints
from distpotify.httpchannel import DEFAULT_TIMEOUTS, Timeouts
from distpotify.keys import ClusterKeys
from distpotify.options import ConfigError, check_positive

KIB = 1024
MIB = 1024 * KIB

# --oplog-retention units: each names the kind of bound as well as its scale.
_RETENTION_UNITS = {
    "ops": ("ops", 1), "s": ("age", 1), "m": ("age", 60), "h": ("age", 3600),
    "d": ("age", 86400), "B": ("bytes", 1), "KiB": ("bytes", KIB), "MiB": ("bytes", MIB),
    "GiB": ("bytes", 1024 * MIB),
}
_RETENTION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*")


@attrs.frozen
class OplogRetention:
    """How much of its oplog a replica keeps: the newest ``amount`` ops (``ops``), the ops
    applied in the last ``amount`` seconds (``age``), or the newest ops whose bodies add up
    to ``amount`` bytes (``bytes``). The newest op always stays."""

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> OplogRetention:
        """``100000ops``, ``36h``, ``2d``, ``512MiB``: a number and a unit naming the kind."""
        match = _RETENTION.fullmatch(text)
        unit = _RETENTION_UNITS.get(match[2]) if match else None
        if match is None or unit is None:
            raise ConfigError(
                f"--oplog-retention must be a number and one of {', '.join(_RETENTION_UNITS)}"
                f" (100000ops, 2d, 512MiB), got {text!r}")
        kind, scale = unit
        amount = float(match[1]) * scale
        if kind != "age":
            amount = float(int(amount))
        if not amount >= 1:
            raise ConfigError(f"--oplog-retention must keep something, got {text!r}")
        return cls(kind, amount)

    def __str__(self) -> str:
        if self.kind == "age":
            return f"{self.amount:g}s"
        return f"{int(self.amount)}{'ops' if self.kind == 'ops' else 'B'}"


def _port(name: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"--{name} must be a port number (0-65535), got {value}")
    return value


@attrs.frozen
class ReplicaConfig:
    node_id: int
    data_dir: Path
    host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    http_port: int = 8000
    amp_port: int = 9000
    cluster: str = "distpotify"
    heartbeat: str = "multicast"
    peers: tuple[tuple[str, int], ...] = ()
    # Replicas in the cluster: an empty replica founds a new cluster only once it hears a
    # majority of them, none with data (replication/bootstrap.py plan). 1: it founds alone.
    cluster_size: int = 1
    multicast_group: str = "239.255.77.77"
    multicast_port: int = 7946
    multicast_interface: str = "127.0.0.1"
    multicast_ttl: int = 0
    chunk_size: int = 256 * KIB
    max_upload: int = 512 * MIB
    heartbeat_interval: float = 0.1
    failure_timeout: float = 0.75
    answer_timeout: float = 0.2
    coordinator_timeout: float = 1.0
    anti_entropy_interval: float = 10.0
    tombstone_ttl: float = 7 * 24 * 3600.0
    # Semi-synchronous acknowledgement (docs/architecture.md 6.2): followers that must hold
    # a write before its 2xx (0: asynchronous), and how long the leader waits for them.
    sync_replicas: int = 1
    sync_timeout: float = 0.25
    # How long a new leader may spend pulling the writes it lacks, and reconciling with its
    # peers, before it takes writes (and a leader holds them for a peer back from a partition).
    catch_up_timeout: float = 2.0
    header_timeout: float = DEFAULT_TIMEOUTS.header
    body_timeout: float = DEFAULT_TIMEOUTS.body
    idle_timeout: float = DEFAULT_TIMEOUTS.idle
    # Two days: a follower away for a day still catches up by cursor (docs/architecture.md
    # section 2.5); one away longer takes a new snapshot.
    oplog_retention: OplogRetention = OplogRetention("age", 2 * 86400.0)
    # Test-only (DISTPOTIFY_FAILPOINTS), never an option: see failpoints.py.
    failpoints: Failpoints = attrs.field(factory=Failpoints)
    # Read from --cluster-key-file, which twistd requires. The default, a fresh random key,
    # proves nothing to anyone: a replica built without a key file trusts nobody.
    cluster_keys: ClusterKeys = attrs.field(factory=ClusterKeys.generate)
    idempotency_ttl: float = 24 * 3600.0
    read_wait: float = 0.25
    # chunk bodies on plain TCP connections go out with sendfile(2) (api/sendfile.py)
    sendfile: bool = True
    # --auth: whether the library, /status and /metrics need a session (on, the default).
    # Off, for a trusted network, they are open to anyone; /auth/* and /users/* check
    # sessions either way.
    auth: bool = True
    # A bearer Prometheus may send to /metrics (and /status) instead of an admin's session.
    metrics_token: str | None = attrs.field(default=None, repr=False)
    # DISTPOTIFY_ADMIN_PASSWORD: the password of the "admin" made on a cluster with none.
    admin_password: str | None = attrs.field(default=None, repr=False)
    # --subsonic-token-auth: whether passwords are kept sealed (auth/box.py) for Subsonic's
    # token auth (t + s); off, none is sealed or opened, and clients use p= or an API key.
    subsonic_token_auth: bool = True

    def __attrs_post_init__(self) -> None:
        if self.node_id < 1:
            raise ConfigError(f"--node-id must be a positive integer, got {self.node_id}")
        for name in ("http_port", "amp_port", "multicast_port"):
            _port(name.replace("_", "-"), getattr(self, name))
        if self.heartbeat not in ("multicast", "unicast"):
            raise ConfigError(
                f"--heartbeat must be 'multicast' or 'unicast', got {self.heartbeat!r}"
            )
        if self.heartbeat == "unicast" and not self.peers:
            raise ConfigError("--heartbeat unicast needs --peers HOST:PORT,...")
        try:
            group = ipaddress.ip_address(self.multicast_group)
        except ValueError:
            raise ConfigError(
                f"--multicast-group is not an IP address: {self.multicast_group!r}"
            ) from None
        if not group.is_multicast:
            raise ConfigError(f"--multicast-group is not a multicast address: {group}")
        if not 0 <= self.multicast_ttl <= 255:
            raise ConfigError(f"--multicast-ttl must be 0-255, got {self.multicast_ttl}")
        if not 4 * KIB <= self.chunk_size <= 64 * MIB:
            raise ConfigError(
                f"--chunk-size must be between 4 KiB and 64 MiB, got {self.chunk_size}"
            )
        check_positive("max-upload", self.max_upload)
        if not 1 <= self.cluster_size <= 999:
            raise ConfigError(f"--cluster-size must be 1-999, got {self.cluster_size}")
        if not 0 <= self.sync_replicas <= 99:
            raise ConfigError(f"--sync-replicas must be 0-99, got {self.sync_replicas}")
        for name in (
            "heartbeat_interval",
            "failure_timeout",
            "answer_timeout",
            "coordinator_timeout",
            "anti_entropy_interval",
            "tombstone_ttl",
            "sync_timeout",
            "catch_up_timeout",
            "header_timeout",
            "body_timeout",
            "idle_timeout",
            "idempotency_ttl",
        ):
            check_positive(name.replace("_", "-"), getattr(self, name))
        if not self.read_wait >= 0:  # nan too
            raise ConfigError(f"--read-wait must be 0 or more, got {self.read_wait}")

    @property
    def timeouts(self) -> Timeouts:
        """The HTTP port's deadlines for a client's headers, body and idle keep-alive."""
        return Timeouts(self.header_timeout, self.body_timeout, self.idle_timeout)

    @property
    def http_url(self) -> str:
        """Where other replicas and the proxy reach this replica's HTTP API."""
        host = self.advertise_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http_port}"


def parse_peers(text: str) -> tuple[tuple[str, int], ...]:
    """Parse ``HOST:PORT,HOST:PORT`` (IPv6 as ``[::1]:7946``)."""
    peers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--peers entry must be HOST:PORT, got {item!r}")
        peers.append((host.strip("[]"), _port("peers", int(port))))
    return tuple(peers)
