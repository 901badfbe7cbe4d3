"""Child processes as distpotify-cluster, the lab, the test helpers and the benchmarks run
them: started, waited for, stopped with SIGTERM then SIGKILL, and reported with their log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distpotify.cli import processes
from distpotify.cli.processes import ChildError, Supervisor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Says it is ready (once its SIGTERM handler, if any, is in place), then waits to be stopped.
SLEEPER = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
STUBBORN = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")


def python(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def started(script: str, output: Path) -> subprocess.Popen[bytes]:
    child = processes.spawn(python(script), output=output)
    processes.wait_ready(lambda: "ready" in output.read_text(), what="the child", timeout=30,
                         child=child, logs=[output])
    return child


def test_stop_ends_a_child_with_sigterm(tmp_path: Path) -> None:
    child = started(SLEEPER, tmp_path / "out")

    assert processes.stop(child) == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_once_the_timeout_passes(tmp_path: Path) -> None:
    child = started(STUBBORN, tmp_path / "out")
    began = time.monotonic()

    code = processes.stop(child, timeout=0.5)

    assert code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - began < 10


def test_a_paused_child_still_stops_cleanly(tmp_path: Path) -> None:
    child = started(SLEEPER, tmp_path / "out")
    child.send_signal(signal.SIGSTOP)

    assert processes.stop(child, timeout=10) == -signal.SIGTERM


def test_a_child_restarted_on_the_same_output_keeps_its_earlier_lines(tmp_path: Path) -> None:
    output = tmp_path / "out"
    for word in ("first", "second"):
        processes.spawn(python(f"print({word!r})"), output=output).wait(30)

    assert output.read_text().split() == ["first", "second"]


def test_waiting_fails_at_once_when_the_child_exits_and_shows_its_log(tmp_path: Path) -> None:
    output = tmp_path / "out"
    child = processes.spawn(python("print('bad value for --port'); raise SystemExit(3)"),
                            output=output)
    began = time.monotonic()

    with pytest.raises(ChildError) as caught:
        processes.wait_ready(lambda: None, what="replica 2", timeout=30, child=child,
                             logs=[output])

    assert time.monotonic() - began < 10
    assert "replica 2 exited with status 3" in str(caught.value)
    assert "bad value for --port" in str(caught.value)


def test_waiting_gives_up_after_the_timeout_naming_what_it_waited_for() -> None:
    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ChildError) as caught:
        processes.wait_ready(refused, what="the proxy", timeout=0.3)

    assert "the proxy did not get ready in 0.3 s" in str(caught.value)
    assert "ConnectionRefusedError" in str(caught.value)


def test_waiting_returns_the_first_answer_that_says_ready() -> None:
    answers = iter([None, {}, {"role": "leader"}])

    assert processes.wait_ready(lambda: next(answers), what="a leader", timeout=10,
                                interval=0.01) == {"role": "leader"}


def test_a_supervisor_stops_every_child_together(tmp_path: Path) -> None:
    supervisor = Supervisor()
    children = [supervisor.start(name, python(STUBBORN if name == "stubborn" else SLEEPER),
                                 tmp_path / f"{name}.log", output=tmp_path / f"{name}.log")
                for name in ("replica", "stubborn")]
    for child in supervisor.children:
        processes.wait_ready(lambda c=child: "ready" in c.log.read_text(), what=child.name,
                             timeout=30, child=child.process)

    supervisor.stop_all(timeout=0.5)

    assert [child.returncode for child in children] == [-signal.SIGTERM, -signal.SIGKILL]
    assert supervisor.children == []


def test_a_supervisor_waiting_for_its_children_fails_when_one_exits(tmp_path: Path) -> None:
    supervisor = Supervisor()
    log = tmp_path / "proxy.log"
    supervisor.start("replica 1", python(SLEEPER), tmp_path / "node1.log")
    supervisor.start("proxy", python("print('cannot listen on 127.0.0.1:8080')"), log,
                     output=log)
    try:
        with pytest.raises(ChildError) as caught:
            supervisor.wait_ready(lambda: None, what="the cluster", timeout=30)
    finally:
        supervisor.stop_all()

    assert "proxy exited with status 0" in str(caught.value)
    assert "cannot listen on 127.0.0.1:8080" in str(caught.value)
