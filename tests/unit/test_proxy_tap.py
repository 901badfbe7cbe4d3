"""The proxy's twistd options: defaults, environment overrides, one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from distpotify.cli.keygen import key_file_text
from distpotify.httpchannel import Timeouts
from distpotify.keys import ClusterKeys
from distpotify.options import env_name
from proxy.config import WEB_DIR, ConfigError, parse_backends
from proxy.listen import with_backlog
from proxy.tap import OPTIONS, Options, makeService

pytestmark = pytest.mark.timeout(10)


def parse(args: list[str], env: dict[str, str] | None = None) -> Options:
    """Options parsed from ARGS and ENV, with --auth off (from the environment, so ARGS may
    still say on) unless ENV names it: these tests are about the other options, which
    need no cluster key."""
    options = Options(environ={"DISTPOTIFY_AUTH": "off", **(env or {})})
    options.parseOptions(args)
    return options


def test_auth_is_on_by_default_with_the_cluster_key(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text(key_file_text())

    options = Options(environ={})
    options.parseOptions(["--backends", "a:1", "--cluster-key-file", str(key)])
    config = options.config

    assert config.auth is True and config.cluster_keys == ClusterKeys.load(key)


@pytest.mark.parametrize("env", [{}, {"DISTPOTIFY_AUTH": "on"}])
def test_without_the_cluster_key_auth_on_is_one_line_naming_the_fix(env: dict[str, str]
                                                                    ) -> None:
    options = Options(environ=env)

    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions(["--backends", "a:1"])

    message = str(raised.value)
    assert message.startswith("--cluster-key-file is required (or DISTPOTIFY_CLUSTER_KEY_FILE)")
    assert "--auth off" in message and "\n" not in message


def test_auth_off_needs_no_cluster_key() -> None:
    options = Options(environ={})
    options.parseOptions(["--backends", "a:1", "--auth", "off"])

    assert (options.config.auth, options.config.cluster_keys) == (False, None)


def test_defaults_match_the_design() -> None:
    config = parse(["--backends", "127.0.0.1:8001,127.0.0.1:8002"]).config

    assert config.backends == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert (config.port, config.host) == (8080, "127.0.0.1")
    assert (config.write_hold, config.health_max_age, config.poll_interval) == (5.0, 0.5, 0.25)
    assert config.session_memory == 5.0
    assert config.web_dir == WEB_DIR and (WEB_DIR / "index.html").is_file()
    assert config.max_upload == 512 * 1024 * 1024  # the replicas' default
    assert config.listeners == ("tcp:8080:interface=127.0.0.1",)
    assert not config.trusted_proxies and config.max_connections_per_client == 64
    assert config.timeouts == Timeouts(header=30, body=60, idle=75)
    assert config.splice is True


def test_max_upload_takes_binary_suffixes() -> None:
    assert parse(["--backends", "a:1", "--max-upload", "1G"]).config.max_upload == 1 << 30
    assert parse(["--backends", "a:1"], {"DISTPOTIFY_MAX_UPLOAD": "256K"}
                 ).config.max_upload == 256 * 1024


def test_environment_sets_options_and_the_command_line_wins() -> None:
    env = {"DISTPOTIFY_BACKENDS": "a:1,b:2", "DISTPOTIFY_PORT": "9090",
           "DISTPOTIFY_WRITE_HOLD": "2.5", "DISTPOTIFY_WEB_DIR": "/srv/player"}

    config = parse(["--port", "9999"], env).config

    assert config.backends == ("http://a:1", "http://b:2")
    assert (config.port, config.write_hold, config.web_dir) == (9999, 2.5, Path("/srv/player"))


@pytest.mark.parametrize(("args", "env", "splice"), [
    (["--splice", "off"], {}, False),
    ([], {"DISTPOTIFY_SPLICE": "no"}, False),
    (["--splice", "ON"], {"DISTPOTIFY_SPLICE": "off"}, True),
])
def test_splicing_is_switched_by_option_or_environment(
    args: list[str], env: dict[str, str], splice: bool,
) -> None:
    assert parse(["--backends", "a:1", *args], env).config.splice is splice


def test_every_option_has_an_environment_variable_in_its_help() -> None:
    text = str(Options(environ={}))

    for name, *_ in OPTIONS:
        assert f"--{name}" in text and env_name(name) in text


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "--backends is required"),
        (["--backends", "nohost"], {}, "--backends entry must be HOST:PORT"),
        (["--backends", "a:0"], {}, "bad port"),
        (["--backends", "a:1", "--port", "70000"], {}, "--port must be a port number"),
        (["--backends", "a:1", "--port", "http"], {}, "bad value for --port"),
        (["--backends", "a:1"], {"DISTPOTIFY_WRITE_HOLD": "soon"},
         "bad value for DISTPOTIFY_WRITE_HOLD"),
        (["--backends", "a:1", "--health-max-age", "0"], {}, "--health-max-age must be positive"),
        (["--backends", "a:1", "--stall-timeout", "nan"], {},
         "--stall-timeout must be positive, got nan"),
        (["--backends", "a:1", "--write-hold", "-1"], {}, "--write-hold must be 0 or more"),
        (["--backends", "a:1", "--session-memory", "nan"], {},
         "--session-memory must be 0 or more"),
        (["--backends", "a:1", "--max-upload", "lots"], {}, "bad value for --max-upload"),
        (["--backends", "a:1", "--max-upload", "0"], {}, "--max-upload must be positive"),
        (["--backends", "a:1", "--listen", "8080"], {}, "--listen entry must be an endpoint"),
        (["--backends", "a:1", "--trusted-proxies", "caddy"], {},
         "--trusted-proxies entry must be an address or CIDR network, got 'caddy'"),
        (["--backends", "a:1", "--max-connections-per-client", "-1"], {},
         "--max-connections-per-client must be 0 (no cap) or more"),
        (["--backends", "a:1"], {"DISTPOTIFY_HEADER_TIMEOUT": "0"},
         "--header-timeout must be positive"),
        (["--backends", "a:1", "--idle-timeout", "soon"], {}, "bad value for --idle-timeout"),
        (["--backends", "a:1", "--splice", "maybe"], {},
         "bad value for --splice: must be on or off, got 'maybe'"),
    ],
)
def test_a_bad_value_is_one_clear_line(args: list[str], env: dict[str, str], message: str
                                       ) -> None:
    with pytest.raises(usage.UsageError) as raised:
        parse(args, env)

    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_backends_accept_urls_ipv6_and_drop_duplicates() -> None:
    assert parse_backends(" http://h:1/, [::1]:2 ,h:1") == ("http://h:1", "http://[::1]:2")
    with pytest.raises(ConfigError):
        parse_backends("h:1/path")


def test_listen_takes_several_descriptions_and_replaces_host_and_port() -> None:
    listen = r"tcp:8080, ssl:8443:privateKey=/k\,ey.pem:certKey=/c.pem,tcp6:8080:interface=\:\:1"
    config = parse(["--backends", "a:1", "--port", "9999", "--listen", listen]).config

    assert config.listeners == ("tcp:8080", r"ssl:8443:privateKey=/k\,ey.pem:certKey=/c.pem",
                                r"tcp6:8080:interface=\:\:1")


def test_the_shorthand_escapes_an_ipv6_host() -> None:
    config = parse(["--backends", "a:1", "--host", "::1", "--port", "8081"]).config

    assert config.listeners == (r"tcp:8081:interface=\:\:1",)


def test_trusted_proxies_and_caps_from_the_environment() -> None:
    config = parse([], {"DISTPOTIFY_BACKENDS": "a:1", "DISTPOTIFY_TRUSTED_PROXIES": "10.0.0.0/8",
                        "DISTPOTIFY_MAX_CONNECTIONS_PER_CLIENT": "0"}).config

    assert "10.1.2.3" in config.trusted_proxies and "192.0.2.1" not in config.trusted_proxies
    assert config.max_connections_per_client == 0


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:8080", "tcp:8080:backlog=1024"),
    ("tcp:port=8080:backlog=5", "tcp:port=8080:backlog=5"),
    ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=1024"),
    ("unix:/run/distpotify.sock", "unix:/run/distpotify.sock"),
])
def test_tcp_and_ssl_listeners_get_a_deep_backlog(description: str, expected: str) -> None:
    assert with_backlog(description) == expected


@pytest.mark.parametrize(("description", "message"), [
    ("carrier:8080", "--listen 'carrier:8080': ValueError"),
    ("tcp:8080:colour=blue", "--listen 'tcp:8080:colour=blue': TypeError"),
    ("ssl:8443:privateKey=/nonexistent/key.pem", "/nonexistent/key.pem"),
])
def test_a_description_that_cannot_be_made_stops_the_proxy_with_one_line(
    description: str, message: str
) -> None:
    options = parse(["--backends", "a:1", "--listen", description])

    with pytest.raises(SystemExit) as raised:
        makeService(options)

    assert str(raised.value).startswith("distpotify-proxy: --listen")
    assert message in str(raised.value) and "\n" not in str(raised.value)
