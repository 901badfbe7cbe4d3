"""twistd options: defaults, environment overrides, and one clear message per bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from distpotify.cli.keygen import key_file_text
from distpotify.httpchannel import Timeouts
from distpotify.keys import ClusterKeys
from distpotify.options import env_name
from distpotify.service import build_replica
from distpotify.tap import OPTIONS, Options


@pytest.fixture(autouse=True)
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A usable key file, given to every parse through the environment."""
    path = tmp_path / "cluster.key"
    path.write_text(key_file_text())
    monkeypatch.setenv("TEST_KEY_FILE", str(path))
    return path


def parse(args: list[str], env: dict[str, str] | None = None, key: bool = True) -> Options:
    """Options parsed from ARGS and ENV, with the test's key file unless KEY is false."""
    environ = {"DISTPOTIFY_CLUSTER_KEY_FILE": os.environ["TEST_KEY_FILE"]} if key else {}
    options = Options(environ={**environ, **(env or {})})
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
    assert config.sendfile is True


def test_environment_sets_options_and_the_command_line_wins() -> None:
    env = {"DISTPOTIFY_NODE_ID": "3", "DISTPOTIFY_HTTP_PORT": "8003",
           "DISTPOTIFY_PEERS": "a:7946,[::1]:7000", "DISTPOTIFY_HEARTBEAT": "unicast"}

    config = parse(["--http-port", "9999"], env).config

    assert (config.node_id, config.http_port) == (3, 9999)
    assert config.peers == (("a", 7946), ("::1", 7000))


def test_the_cluster_key_file_is_read_into_the_config(key_file: Path) -> None:
    config = parse(["--node-id", "1", "--cluster-key-file", str(key_file)], key=False).config

    assert config.cluster_keys == ClusterKeys.load(key_file)


def test_a_replica_without_a_cluster_key_does_not_start() -> None:
    with pytest.raises(usage.UsageError) as raised:
        parse(["--node-id", "1"], key=False)

    message = str(raised.value)
    assert message.startswith("--cluster-key-file is required (or DISTPOTIFY_CLUSTER_KEY_FILE)")
    assert "`distpotify-keygen > cluster.key`" in message


def test_another_bad_option_is_named_before_the_missing_key() -> None:
    with pytest.raises(usage.UsageError, match="--heartbeat must be"):
        parse(["--node-id", "1", "--heartbeat", "pigeon"], key=False)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "No such file or directory"),
    ("", "holds no key"),
    ("c2hvcnQ=", "holds a key of 5 bytes"),
])
def test_an_unusable_key_file_is_one_clear_usage_error(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_text(content)

    with pytest.raises(usage.UsageError) as raised:
        parse(["--node-id", "1", "--cluster-key-file", str(path)], key=False)

    message = str(raised.value)
    assert message.startswith("bad value for --cluster-key-file: cannot read cluster key file"
                              if content is None else "bad value for --cluster-key-file: cluster")
    assert problem in message and f"`distpotify-keygen > {path}`" in message


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
        (["--node-id", "1", "--cluster-size", "0"], {}, "--cluster-size must be 1-999"),
        (["--node-id", "1"], {"DISTPOTIFY_CLUSTER_SIZE": "three"},
         "bad value for DISTPOTIFY_CLUSTER_SIZE"),
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
        (["--node-id", "1"], {"DISTPOTIFY_SENDFILE": "sometimes"},
         "bad value for DISTPOTIFY_SENDFILE: must be on or off"),
    ],
)
def test_bad_values_are_one_clear_usage_error(args: list[str], env: dict[str, str],
                                              message: str) -> None:
    with pytest.raises(usage.UsageError, match=message.replace("-", r"\-")):
        parse(args, env)


def test_cluster_size_is_one_unless_given() -> None:
    assert parse(["--node-id", "1"]).config.cluster_size == 1
    assert parse(["--node-id", "1"], {"DISTPOTIFY_CLUSTER_SIZE": "3"}).config.cluster_size == 3
    assert parse(["--node-id", "1", "--cluster-size", "5"]).config.cluster_size == 5


def test_sync_replicas_zero_is_asynchronous_replication() -> None:
    config = parse(["--node-id", "1", "--sync-replicas", "0", "--sync-timeout", "0.5"]).config

    assert (config.sync_replicas, config.sync_timeout) == (0, 0.5)


def test_sendfile_is_switched_off_by_option_or_environment() -> None:
    assert parse(["--node-id", "1", "--sendfile", "off"]).config.sendfile is False
    assert parse(["--node-id", "1"], {"DISTPOTIFY_SENDFILE": "0"}).config.sendfile is False
    assert parse(["--node-id", "1", "--sendfile", "yes"]).config.sendfile is True


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


def test_oplog_retention_takes_a_count_an_age_or_bytes() -> None:
    def retention(text: str) -> tuple[str, float]:
        config = parse(["--node-id", "1", "--oplog-retention", text]).config
        return config.oplog_retention.kind, config.oplog_retention.amount

    assert parse(["--node-id", "1"]).config.oplog_retention.amount == 2 * 86400
    assert retention("100000ops") == ("ops", 100000)
    assert retention("36h") == ("age", 36 * 3600)
    assert retention("1.5d") == ("age", 1.5 * 86400)
    assert retention("512MiB") == ("bytes", 512 * 1024 * 1024)


@pytest.mark.parametrize("text", ["", "2", "2x", "-1d", "0ops", "1M", "ops"])
def test_a_bad_oplog_retention_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(usage.UsageError, match="--oplog-retention must"):
        parse(["--node-id", "1", "--oplog-retention", text])


def test_failpoints_come_from_the_environment_only() -> None:
    env = {"DISTPOTIFY_FAILPOINTS": "upload.committed:crash"}

    assert parse(["--node-id", "1"], env).config.failpoints.armed == {"upload.committed": "crash"}
    assert parse(["--node-id", "1"]).config.failpoints.armed == {}
    with pytest.raises(usage.UsageError, match="unknown failpoint"):
        parse(["--node-id", "1"], {"DISTPOTIFY_FAILPOINTS": "nowhere:crash"})
