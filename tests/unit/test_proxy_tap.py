"""The proxy's twistd options: defaults, environment overrides, one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from distpotify.options import env_name
from proxy.config import WEB_DIR, ConfigError, parse_backends
from proxy.tap import OPTIONS, Options

pytestmark = pytest.mark.timeout(10)


def parse(args: list[str], env: dict[str, str] | None = None) -> Options:
    options = Options(environ=env or {})
    options.parseOptions(args)
    return options


def test_defaults_match_the_design() -> None:
    config = parse(["--backends", "127.0.0.1:8001,127.0.0.1:8002"]).config

    assert config.backends == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert (config.port, config.host) == (8080, "127.0.0.1")
    assert (config.write_hold, config.health_max_age, config.poll_interval) == (5.0, 0.5, 0.25)
    assert config.web_dir == WEB_DIR and (WEB_DIR / "index.html").is_file()
    assert config.max_upload == 512 * 1024 * 1024  # the replicas' default


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
        (["--backends", "a:1", "--max-upload", "lots"], {}, "bad value for --max-upload"),
        (["--backends", "a:1", "--max-upload", "0"], {}, "--max-upload must be positive"),
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
