"""twistd options: defaults, environment overrides, and one clear message per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from distpotify.httpchannel import Timeouts
from distpotify.options import env_name
from distpotify.service import build_replica
from distpotify.tap import OPTIONS, Options


def parse(args: list[str], env: dict[str, str] | None = None) -> Options:
    options = Options(environ=env or {})
    options.parseOptions(args)
    return options


def test_defaults_match_the_design() -> None:
    config = parse(["--node-id", "2"]).config

    assert config.data_dir == Path("data/node2")
    assert (config.http_port, config.amp_port, config.host) == (8000, 9000, "127.0.0.1")
    assert (config.multicast_group, config.multicast_port) == ("239.255.77.77", 7946)
    assert (config.multicast_interface, config.multicast_ttl) == ("127.0.0.1", 0)
    assert (config.chunk_size, config.max_upload) == (256 * 1024, 512 * 1024 * 1024)
    assert (config.heartbeat_interval, config.failure_timeout, config.answer_timeout) == (
        0.1, 0.75, 0.2)
    assert config.anti_entropy_interval == 10.0
    assert (config.sync_replicas, config.sync_timeout, config.catch_up_timeout) == (
        1, 0.25, 2.0)
    assert (config.header_timeout, config.body_timeout, config.idle_timeout) == (30.0, 60.0, 75.0)
    assert (config.idempotency_ttl, config.read_wait) == (86400.0, 0.25)


def test_environment_sets_options_and_the_command_line_wins() -> None:
    env = {"DISTPOTIFY_NODE_ID": "3", "DISTPOTIFY_HTTP_PORT": "8003",
           "DISTPOTIFY_PEERS": "a:7946,[::1]:7000", "DISTPOTIFY_HEARTBEAT": "unicast"}

    config = parse(["--http-port", "9999"], env).config

    assert (config.node_id, config.http_port) == (3, 9999)
    assert config.peers == (("a", 7946), ("::1", 7000))


def test_every_option_has_an_environment_variable_in_its_help() -> None:
    text = str(Options(environ={}))

    for name, *_ in OPTIONS:
        assert f"--{name}" in text and env_name(name) in text


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "--node-id is required"),
        (["--node-id", "0"], {}, "--node-id must be a positive integer"),
        (["--node-id", "x"], {}, "bad value for --node-id"),
        (["--node-id", "1"], {"DISTPOTIFY_HTTP_PORT": "http"},
         "bad value for DISTPOTIFY_HTTP_PORT"),
        (["--node-id", "1", "--heartbeat", "carrier-pigeon"], {}, "--heartbeat must be"),
        (["--node-id", "1", "--heartbeat", "unicast"], {}, "needs --peers"),
        (["--node-id", "1", "--peers", "nohost"], {}, "--peers entry must be HOST:PORT"),
        (["--node-id", "1", "--multicast-group", "10.0.0.1"], {}, "not a multicast address"),
        (["--node-id", "1", "--chunk-size", "1"], {}, "--chunk-size must be between"),
        (["--node-id", "1", "--failure-timeout", "-1"], {}, "--failure-timeout must be positive"),
        (["--node-id", "1", "--heartbeat-interval", "nan"], {},
         "--heartbeat-interval must be positive, got nan"),
        (["--node-id", "1", "--sync-replicas", "-1"], {}, "--sync-replicas must be 0-99"),
        (["--node-id", "1", "--sync-replicas", "one"], {}, "bad value for --sync-replicas"),
        (["--node-id", "1", "--sync-timeout", "0"], {}, "--sync-timeout must be positive"),
        (["--node-id", "1"], {"DISTPOTIFY_CATCH_UP_TIMEOUT": "-2"},
         "--catch-up-timeout must be positive"),
        (["--node-id", "1", "--header-timeout", "0"], {}, "--header-timeout must be positive"),
        (["--node-id", "1"], {"DISTPOTIFY_IDLE_TIMEOUT": "soon"},
         "bad value for DISTPOTIFY_IDLE_TIMEOUT"),
        (["--node-id", "1", "--idempotency-ttl", "0"], {}, "--idempotency-ttl must be positive"),
        (["--node-id", "1", "--read-wait", "-0.1"], {}, "--read-wait must be 0 or more"),
        (["--node-id", "1", "--read-wait", "nan"], {}, "--read-wait must be 0 or more"),
    ],
)
def test_bad_values_are_one_clear_usage_error(args: list[str], env: dict[str, str],
                                              message: str) -> None:
    with pytest.raises(usage.UsageError, match=message.replace("-", r"\-")):
        parse(args, env)


def test_sync_replicas_zero_is_asynchronous_replication() -> None:
    config = parse(["--node-id", "1", "--sync-replicas", "0", "--sync-timeout", "0.5"]).config

    assert (config.sync_replicas, config.sync_timeout) == (0, 0.5)


def test_sizes_take_binary_suffixes() -> None:
    config = parse(["--node-id", "1", "--chunk-size", "64K", "--max-upload", "2G"]).config

    assert (config.chunk_size, config.max_upload) == (64 * 1024, 2 * 1024**3)


def test_the_http_timeouts_reach_the_replicas_site(tmp_path: Path) -> None:
    config = parse(["--node-id", "1", "--data-dir", str(tmp_path / "node1"),
                    "--header-timeout", "5", "--body-timeout", "6", "--idle-timeout", "7"]).config
    replica = build_replica(config, Clock(), run_db=lambda f, *a, **k: f(*a, **k))
    try:
        site = replica.http.args[1]  # type: ignore[attr-defined]  # TCPServer(port, site)
        assert site.timeouts == Timeouts(header=5, body=6, idle=7)
    finally:
        replica.db.close()
