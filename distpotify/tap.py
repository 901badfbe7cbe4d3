"""``twistd distpotify``: the replica's command-line options and makeService.

Every option also reads ``DISTPOTIFY_<OPTION>`` from the environment; the command line wins.
"""
# test-case-name: tests.unit.test_tap

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from distpotify.config import KIB, MIB, ConfigError, ReplicaConfig, parse_peers

ENV_PREFIX = "DISTPOTIFY_"


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary units): 256K, 512M."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": KIB, "M": MIB, "G": 1024 * MIB}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


# (option, default, help, converter to the ReplicaConfig field)
OPTIONS: list[tuple[str, Any, str, Callable[[str], Any]]] = [
    ("node-id", None, "this replica's id, a positive integer unique in the cluster (required)",
     int),
    ("data-dir", None, "where metadata and chunks live [default: data/node<ID>]", Path),
    ("host", "127.0.0.1", "address the HTTP and AMP ports bind to", str),
    ("advertise-host", "127.0.0.1", "address peers and the proxy use to reach this replica",
     str),
    ("http-port", "8000", "HTTP port of the music API and /sync", int),
    ("amp-port", "9000", "AMP port of the Bully election", int),
    ("cluster", "distpotify", "cluster name; heartbeats of other clusters are ignored", str),
    ("heartbeat", "multicast", "heartbeat transport: multicast or unicast", str),
    ("peers", "", "unicast heartbeat peers, HOST:UDPPORT,...", parse_peers),
    ("multicast-group", "239.255.77.77", "heartbeat multicast group", str),
    ("multicast-port", "7946", "heartbeat UDP port", int),
    ("multicast-interface", "127.0.0.1", "interface address heartbeats are sent and joined on",
     str),
    ("multicast-ttl", "0", "heartbeat TTL (0 keeps datagrams on this host)", int),
    ("chunk-size", "256K", "bytes per chunk of newly uploaded songs (K/M suffixes)", _size),
    ("max-upload", "512M", "largest accepted upload body (K/M/G suffixes)", _size),
    ("heartbeat-interval", "0.1", "seconds between heartbeats", float),
    ("failure-timeout", "0.75", "seconds of silence before a peer is DOWN", float),
    ("answer-timeout", "0.2", "seconds an election waits for a higher node's answer", float),
    ("coordinator-timeout", "1.0", "seconds to wait for the winner's Coordinator", float),
    ("anti-entropy-interval", "10", "seconds between anti-entropy rounds (+-20% jitter)", float),
    ("tombstone-ttl", "604800", "seconds before acknowledged tombstones may be purged", float),
]


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


class Options(usage.Options):
    synopsis = "--node-id N [options]"
    longdesc = (
        "Run one Distpotify replica. Every option can also be set with the environment "
        "variable DISTPOTIFY_<OPTION> (for example DISTPOTIFY_NODE_ID=2); the command line "
        "wins over the environment."
    )
    optParameters = [
        [name, None, default, f"{text} (env {env_name(name)})"]
        for name, default, text, _ in OPTIONS
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._from_env: set[str] = set()
        environ = os.environ if environ is None else environ
        for name, *_ in OPTIONS:
            if env_name(name) in environ:
                self[name] = environ[env_name(name)]
                self._from_env.add(name)

    def postOptions(self) -> None:
        if self["node-id"] is None:
            raise usage.UsageError(f"--node-id is required (or {env_name('node-id')})")
        values: dict[str, Any] = {}
        for name, _, _, convert in OPTIONS:
            raw = self[name]
            if raw is None:
                continue
            try:
                values[name.replace("-", "_")] = convert(raw)
            except (ValueError, ConfigError) as e:
                source = env_name(name) if name in self._from_env else f"--{name}"
                detail = str(e) if isinstance(e, ConfigError) else f"got {raw!r}"
                raise usage.UsageError(f"bad value for {source}: {detail}") from None
        values.setdefault("data_dir", Path("data") / f"node{values['node_id']}")
        try:
            self.config = ReplicaConfig(**values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from distpotify.service import ReplicaService, prepare_data_dir

    try:
        prepare_data_dir(options.config)
    except ConfigError as e:
        raise SystemExit(f"distpotify: {e}") from None
    return ReplicaService(options.config, reactor)
