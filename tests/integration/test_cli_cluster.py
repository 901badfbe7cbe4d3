"""``distpotify-cluster`` end to end: three replicas and the proxy, demo tracks, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.replica import free_port, free_udp_port, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCRIPT = Path(sys.executable).with_name("distpotify-cluster")


def test_the_local_cluster_starts_offers_demo_tracks_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    assert SCRIPT.exists(), "distpotify-cluster is not installed: run `make venv`"
    http_ports = [free_port() for _ in range(3)]
    proxy_port = free_port()
    output = tmp_path / "out.txt"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [str(SCRIPT), "--demo", "--data", str(tmp_path / "data"),
             "--http-ports", ",".join(map(str, http_ports)),
             "--amp-ports", ",".join(str(free_port()) for _ in range(3)),
             "--proxy-port", str(proxy_port), "--cluster", f"test-{proxy_port}",
             "--multicast-port", str(free_udp_port())],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: b"running; Ctrl-C" in output.read_bytes()
                   or process.poll() is not None, timeout=120, what="the cluster to run")
        text = output.read_text()
        view = request(proxy_port, "GET", "/proxy/status").json()
        songs = wait_until(
            lambda: (answer := request(proxy_port, "GET", "/songs")).status == 200
            and answer.json()["total"] == 3 and answer.json(),
            timeout=20, what="the demo tracks on the followers")

        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert f"http://127.0.0.1:{proxy_port}/" in text and "added 3 demo tracks" in text
    assert f"made the cluster key {tmp_path / 'data' / 'cluster.key'}" in text
    assert (tmp_path / "data" / "cluster.key").stat().st_mode & 0o777 == 0o600
    assert view["leader"] is not None and len(view["backends"]) == 3
    assert {song["album"] for song in songs["songs"]} == {"Distpotify Demo"}
    assert code == 0 and output.read_text().rstrip().endswith("stopped")
    for port in [*http_ports, proxy_port]:
        with pytest.raises(OSError):
            request(port, "GET", "/status", timeout=2)
