"""The twistd command lines of a replica and the proxy, built in one place."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from distpotify.cli.processes import (
    AUTH_OFF,
    ProxyCommand,
    ReplicaCommand,
    Supervisor,
    auth_off_unless_given,
    child_env,
    twistd,
    twistd_command,
)

pytestmark = pytest.mark.timeout(60)


def replica(**options: Any) -> ReplicaCommand:
    return ReplicaCommand(node_id=2, data_dir=Path("d/node2"), http_port=8002, amp_port=9002,
                          **options)


def test_a_child_runs_in_the_foreground_without_a_pid_file() -> None:
    argv = twistd_command("web", "--path", "/srv")

    assert argv[len(twistd()):] == ["-n", "--pidfile=", "web", "--path", "/srv"]


def test_a_logfile_goes_before_the_command() -> None:
    argv = replica().argv(logfile=Path("/var/log/node2.log"))

    rest = argv[len(twistd()):]
    assert rest[:4] == ["-n", "--pidfile=", "--logfile=/var/log/node2.log", "distpotify"]


def test_options_left_unset_keep_the_replicas_own_defaults() -> None:
    assert replica().options() == [
        "--node-id", "2", "--data-dir", "d/node2", "--http-port", "8002", "--amp-port", "9002",
    ]


def test_every_replica_option_set_is_passed() -> None:
    options = replica(host="0.0.0.0", advertise_host="10.0.0.2", cluster="c",
                      multicast_port=7946, multicast_interface="10.0.0.2",
                      multicast_ttl=0, cluster_key_file=Path("/run/secrets/k")).options()

    assert options == [
        "--node-id", "2", "--data-dir", "d/node2", "--host", "0.0.0.0",
        "--advertise-host", "10.0.0.2", "--http-port", "8002", "--amp-port", "9002",
        "--cluster", "c", "--multicast-port", "7946", "--multicast-interface", "10.0.0.2",
        "--multicast-ttl", "0", "--cluster-key-file", "/run/secrets/k",
    ]


def test_extra_options_come_last_so_they_can_override() -> None:
    options = replica(host="127.0.0.1", extra=["--chunk-size", "32K", "--host", "::1"]).options()

    assert options[-4:] == ["--chunk-size", "32K", "--host", "::1"]


def test_the_proxy_fronts_every_backend_given() -> None:
    argv = ProxyCommand(backends=["a:1", "b:2"], port=8080, extra=["--write-hold", "1"]).argv()

    assert argv[len(twistd()):] == [
        "-n", "--pidfile=", "distpotify-proxy", "--port", "8080", "--backends", "a:1,b:2",
        "--write-hold", "1",
    ]


def test_twistd_is_the_script_beside_this_python() -> None:
    beside = Path(sys.executable).with_name("twistd")
    if not beside.exists():
        pytest.skip("no twistd beside this Python (not a virtualenv)")

    assert twistd() == [str(beside)]


def test_without_a_twistd_script_python_runs_twistds_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))

    argv = twistd()

    assert argv[:2] == [str(tmp_path / "python"), "-c"]
    assert "twisted.scripts.twistd" in argv[2]


def test_a_child_is_not_configured_by_the_callers_distpotify_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISTPOTIFY_NODE_ID", "7")
    monkeypatch.setenv("UNRELATED", "kept")

    env = child_env({"DISTPOTIFY_CHUNK_SIZE": "32K"})

    assert "DISTPOTIFY_NODE_ID" not in env
    assert env["UNRELATED"] == "kept" and env["DISTPOTIFY_CHUNK_SIZE"] == "32K"


def test_tools_run_without_accounts_unless_their_options_name_auth() -> None:
    assert auth_off_unless_given(["--chunk-size", "64K"]) == AUTH_OFF == ("--auth", "off")
    assert auth_off_unless_given(["--auth", "on", "--metrics-token", "t"]) == ()
    assert auth_off_unless_given(["--auth=on"]) == ()


def test_a_child_that_exits_is_reported_with_the_command_that_starts_it_again(
        tmp_path: Path) -> None:
    supervisor = Supervisor()
    argv = [sys.executable, "-c", "raise SystemExit(3)", "--data-dir", "my data"]
    process = supervisor.start("replica 1", argv, tmp_path / "node1.log")
    process.wait(30)
    [child] = supervisor.exited()
    message = child.exit_message()
    assert message.startswith("replica 1 exited (status 3); the others go on."), message
    assert message.endswith(
        f"{shlex.quote(sys.executable)} -c 'raise SystemExit(3)' --data-dir 'my data'")
    assert list(supervisor.exited()) == [], "reported once"
    assert child.exit_message(restartable=True).endswith(
        "the others go on. Press Enter to start it again.")


def test_an_exited_child_starts_again_as_it_was_started(tmp_path: Path) -> None:
    supervisor = Supervisor()
    record = tmp_path / "runs"
    argv = [sys.executable, "-c",
            "import os, sys; open(sys.argv[1], 'a').write(os.environ['LAB_MARK'] + chr(10))",
            str(record)]
    supervisor.start("replica 2", argv, tmp_path / "node2.log", env={"LAB_MARK": "marked"})
    supervisor.children[0].process.wait(30)
    [child] = supervisor.exited()

    again = supervisor.restart(child)
    again.wait(30)

    assert record.read_text() == "marked\nmarked\n"  # the same command, the same variables
    assert [c.name for c in supervisor.exited()] == ["replica 2"], "supervised again"
