"""``distpotify-cluster`` end to end: three replicas and the proxy, demo tracks, Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.replica import Response, free_port, free_udp_port, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCRIPT = Path(sys.executable).with_name("distpotify-cluster")


def start(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path, list[int], int]:
    """``distpotify-cluster FLAGS`` on free ports: (its process, its output file, the replicas'
    HTTP ports, the proxy's port)."""
    assert SCRIPT.exists(), "distpotify-cluster is not installed: run `make venv`"
    http_ports = [free_port() for _ in range(3)]
    proxy_port = free_port()
    output = tmp_path / "out.txt"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [str(SCRIPT), *flags, "--data", str(tmp_path / "data"),
             "--http-ports", ",".join(map(str, http_ports)),
             "--amp-ports", ",".join(str(free_port()) for _ in range(3)),
             "--proxy-port", str(proxy_port), "--cluster", f"test-{proxy_port}",
             "--multicast-port", str(free_udp_port())],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return process, output, http_ports, proxy_port


def wait_running(process: subprocess.Popen[bytes], output: Path) -> str:
    wait_until(lambda: b"running; Ctrl-C" in output.read_bytes()
               or process.poll() is not None, timeout=120, what="the cluster to run")
    return output.read_text()


def stop(process: subprocess.Popen[bytes]) -> int:
    try:
        process.send_signal(signal.SIGINT)
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def printed_password(text: str) -> str:
    found = re.search(r"user admin, password (\S+) at ", text)
    assert found is not None, text
    return found.group(1)


def log_in(port: int, password: str) -> Response:
    """The first admin's login, tried while the leader has not made it yet."""
    body = json.dumps({"username": "admin", "password": password}).encode()
    return wait_until(
        lambda: (answer := request(port, "POST", "/auth/login", body,
                                   {"Content-Type": "application/json"})).status == 200
        and answer, timeout=20, interval=2.0, what="the first admin to log in")


def test_the_local_cluster_starts_offers_demo_tracks_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    # --auth off, as on a trusted machine: the library and the views are open to anyone
    process, output, http_ports, proxy_port = start(tmp_path, "--auth", "off", "--demo")
    try:
        text = wait_running(process, output)
        view = request(proxy_port, "GET", "/proxy/status").json()
        songs = wait_until(
            lambda: (answer := request(proxy_port, "GET", "/songs")).status == 200
            and answer.json()["total"] == 3 and answer.json(),
            timeout=20, what="the demo tracks on the followers")
        admin = log_in(proxy_port, printed_password(text))
    finally:
        code = stop(process)

    assert f"http://127.0.0.1:{proxy_port}/" in text and "added 3 demo tracks" in text
    assert "--auth off: the library is open" in text
    assert f"made the cluster key {tmp_path / 'data' / 'cluster.key'}" in text
    assert (tmp_path / "data" / "cluster.key").stat().st_mode & 0o777 == 0o600
    assert view["leader"] is not None and len(view["backends"]) == 3
    assert {song["album"] for song in songs["songs"]} == {"Distpotify Demo"}
    assert admin.json()["user"]["role"] == "admin"
    password_file = tmp_path / "data" / "admin.password"
    assert password_file.read_text().strip() == printed_password(text)
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert code == 0 and output.read_text().rstrip().endswith("stopped")
    for port in [*http_ports, proxy_port]:
        with pytest.raises(OSError):
            request(port, "GET", "/status", timeout=2)


def test_the_default_cluster_needs_a_login_and_prints_a_working_admin_login(
    tmp_path: Path,
) -> None:
    process, output, http_ports, proxy_port = start(tmp_path, "--demo")
    try:
        text = wait_running(process, output)
        anonymous = request(proxy_port, "GET", "/proxy/status")
        anonymous_reads = [request(port, "GET", "/songs") for port in [proxy_port, *http_ports]]
        anonymous_write = request(proxy_port, "POST", "/playlists", b'{"name": "Mine"}',
                                  {"Content-Type": "application/json"})
        token = log_in(proxy_port, printed_password(text)).json()["token"]
        admin = {"Authorization": f"Bearer {token}"}
        view = request(proxy_port, "GET", "/proxy/status", headers=admin)
        songs = wait_until(
            lambda: (answer := request(proxy_port, "GET", "/songs", headers=admin)).status
            == 200 and answer.json()["total"] == 3,
            timeout=20, what="the demo tracks on the followers")
        playlists = request(proxy_port, "GET", "/playlists", headers=admin).json()
    finally:
        code = stop(process)
    process, output, _, proxy_port = start(tmp_path, "--no-demo")
    try:
        again = wait_running(process, output)
        still = log_in(proxy_port, printed_password(text))
    finally:
        stop(process)

    assert anonymous.status == 401 and view.status == 200 and code == 0
    assert [answer.status for answer in anonymous_reads] == [401] * 4
    assert anonymous_write.status == 401 and playlists["playlists"] == []
    assert "--auth on: the library needs a login" in text
    assert "added 3 demo tracks" in text and songs
    assert "the password in" in again and printed_password(text) not in again
    assert still.status == 200
