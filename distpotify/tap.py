"""``twistd distpotify``: the replica's command-line options and makeService.

Every option also reads ``DISTPOTIFY_<OPTION>`` from the environment; the command line wins.
"""
# test-case-name: tests.unit.test_tap

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs
from twisted.application.service import IService
from twisted.python import usage

from distpotify.auth.passwords import WeakPassword, check_new_password
from distpotify.config import ConfigError, OplogRetention, ReplicaConfig, parse_peers
from distpotify.failpoints import Failpoints
from distpotify.httpchannel import TIMEOUT_OPTIONS
from distpotify.keys import KEYGEN, ClusterKeys, KeyFileError
from distpotify.options import (
    EnvOptions,
    OptionList,
    env_name,
    env_parameters,
    parse_size,
    parse_switch,
)


def load_keys(path: str) -> ClusterKeys:
    """The --cluster-key-file option: its keys, or the one line saying what is wrong."""
    try:
        return ClusterKeys.load(Path(path))
    except KeyFileError as e:
        raise ConfigError(str(e)) from None


NO_KEY = (
    f"--cluster-key-file is required (or {env_name('cluster-key-file')}): replicas prove to"
    f" each other that they hold the cluster key; make one with `{KEYGEN} > cluster.key` and"
    " give every replica the same file"
)

# (option, default, help, converter to the ReplicaConfig field)
OPTIONS: OptionList = [
    ("node-id", None, "this replica's id, a positive integer unique in the cluster (required)",
     int),
    ("data-dir", None, "where metadata and chunks live [default: data/node<ID>]", Path),
    ("host", "127.0.0.1", "address the HTTP and AMP ports bind to", str),
    ("advertise-host", "127.0.0.1", "address peers and the proxy use to reach this replica",
     str),
    ("http-port", "8000", "HTTP port of the music API and /sync", int),
    ("amp-port", "9000", "AMP port of the Bully election", int),
    ("cluster", "distpotify", "cluster name; heartbeats of other clusters are ignored", str),
    ("cluster-size", "1", "replicas in the cluster (set it to their number): an empty replica"
     " founds a new cluster only once it hears a majority of them, itself included, and"
     " none holds data", int),
    ("heartbeat", "multicast", "heartbeat transport: multicast or unicast", str),
    ("peers", "", "unicast heartbeat peers, HOST:UDPPORT,...", parse_peers),
    ("multicast-group", "239.255.77.77", "heartbeat multicast group", str),
    ("multicast-port", "7946", "heartbeat UDP port", int),
    ("multicast-interface", "127.0.0.1", "interface address heartbeats are sent and joined on",
     str),
    ("multicast-ttl", "0", "heartbeat TTL (0 keeps datagrams on this host)", int),
    ("chunk-size", "256K", "bytes per chunk of newly uploaded songs (K/M suffixes)", parse_size),
    ("max-upload", "512M", "largest accepted upload body (K/M/G suffixes)", parse_size),
    ("heartbeat-interval", "0.1", "seconds between heartbeats", float),
    ("failure-timeout", "0.75", "seconds of silence before a peer is DOWN", float),
    ("answer-timeout", "0.2", "seconds an election waits for a higher node's answer", float),
    ("coordinator-timeout", "1.0", "seconds to wait for the winner's Coordinator", float),
    ("anti-entropy-interval", "10", "seconds between anti-entropy rounds (+-20% jitter)", float),
    ("tombstone-ttl", "604800", "seconds before acknowledged tombstones may be purged", float),
    ("sync-replicas", "1", "followers that must apply a write before the leader answers it"
     " (0: asynchronous replication)", int),
    ("sync-timeout", "0.25", "seconds the leader waits for --sync-replicas followers before"
     " it answers anyway (a degraded acknowledgement)", float),
    ("catch-up-timeout", "2.0", "seconds a new leader may spend pulling the writes it lacks"
     " from its peers, and reconciling with them, before it takes writes anyway", float),
    *TIMEOUT_OPTIONS,
    ("oplog-retention", "2d", "oplog kept for followers catching up by cursor: newest N ops"
     " (100000ops), an age (36h, 2d) or bytes (512MiB)", OplogRetention.parse),
    ("cluster-key-file", None, f"file holding the cluster key, the same on every replica"
     f" (required; `{KEYGEN} > cluster.key` makes one)", load_keys),
    ("idempotency-ttl", "86400", "seconds an Idempotency-Key's stored outcome is kept", float),
    ("read-wait", "0.25", "seconds a read with X-Distpotify-Min-Version waits for that version"
     " before answering 409 behind", float),
    ("sendfile", "on", "send chunk bytes with sendfile(2) on plain TCP connections: on or off",
     parse_switch),
    ("auth", "on", "on: the library, /status and /metrics need a session, each account within"
     " its role (docs/architecture.md section 3.7); off: open to anyone who reaches this"
     " replica, for a trusted network only", parse_switch),
    ("metrics-token", None, "a bearer token that may read /metrics and /status (Prometheus)",
     str),
    ("subsonic-token-auth", "on", "on: each password set is also kept encrypted under a key"
     " derived from the cluster key, for Subsonic clients' token auth (u, t, s); off: none"
     " is kept or used, and Subsonic clients log in with p= or an API key"
     " (docs/architecture.md, \"Per-user state and Subsonic credentials\")", parse_switch),
]

# Read from the environment only: a password on a command line is visible to every user.
ADMIN_PASSWORD = "DISTPOTIFY_ADMIN_PASSWORD"


class Options(EnvOptions):
    synopsis = "--node-id N [options]"
    longdesc = (
        "Run one Distpotify replica. Every option can also be set with the environment "
        "variable DISTPOTIFY_<OPTION> (for example DISTPOTIFY_NODE_ID=2); the command line "
        "wins over the environment."
    )
    optParameters = env_parameters(OPTIONS)
    option_list = OPTIONS
    required = "node-id"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        self._environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        values = self.converted()
        values.setdefault("data_dir", Path("data") / f"node{values['node_id']}")
        keys = values.pop("cluster_key_file", None)
        try:
            values["failpoints"] = Failpoints.from_environ(self._environ)
            admin_password = self._environ.get(ADMIN_PASSWORD) or None
            if admin_password is not None:
                try:
                    check_new_password(admin_password)
                except WeakPassword as e:
                    raise ConfigError(f"{ADMIN_PASSWORD}: {e}") from None
            config = ReplicaConfig(**values, admin_password=admin_password)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        # Checked last, so a bad value of another option is named first.
        if keys is None:
            raise usage.UsageError(NO_KEY)
        self.config = attrs.evolve(config, cluster_keys=keys)


def makeService(options: Options) -> IService:
    # Imported here, not above: importing the replica (Klein) installs the default reactor,
    # and twistd must be free to install the one it was asked for first.
    from twisted.internet import reactor

    from distpotify.gcfreeze import freeze_startup_objects
    from distpotify.service import build_replica

    try:
        return build_replica(options.config, reactor, freeze=freeze_startup_objects)
    except ConfigError as e:
        raise SystemExit(f"distpotify: {e}") from None
