"""The lab's life cycle: replicas start with the contract command line, closing leaves
nothing behind, and a lab whose owner was killed is removed by the next run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lab.client import LabClient
from lab.lab import (
    HTTP_PORT,
    LAB_BASE,
    LISTENER_NAME,
    PROXY_PORT,
    Lab,
    clean_stale_labs,
    twistd_plugins,
)
from lab.nemesis import Nemesis
from lab.netns import list_netns, netns_inode, netns_pids
from lab.netns import processes_in_netns_inodes as processes_in
from lab.traffic import Traffic

pytestmark = [pytest.mark.lab]


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          check=True).stdout


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def _assert_gone(prefix: str, inodes: set[int], lab_dir: Path | None = None) -> None:
    assert [ns for ns in list_netns() if ns.startswith(prefix)] == []
    assert prefix not in _root_links()
    assert processes_in(inodes) == []
    assert _processes_mentioning(prefix) == []
    if lab_dir is not None:
        assert not lab_dir.exists()


@pytest.mark.timeout(60)
def test_replicas_run_as_the_contract_says(lab: Lab) -> None:
    for node_id, replica in lab.replicas.items():
        status = lab.status(node_id)
        assert status is not None and status["node_id"] == node_id
        assert replica.running and replica.process is not None
        assert netns_pids(replica.host.netns) == [replica.process.pid]
    if "distpotify" in twistd_plugins():
        assert lab.replica_kind == "twistd"


@pytest.mark.timeout(60)
def test_replica_heartbeats_cross_the_bridge_to_every_host(lab: Lab) -> None:
    if lab.replica_kind != "twistd":
        pytest.skip("needs `twistd distpotify` (the replica foundation) to send heartbeats")

    def peers(node_id: int) -> dict[int, str]:
        listed = (lab.status(node_id) or {}).get("peers") or []
        return {p.get("node_id"): p.get("http") for p in listed}

    # Each replica advertises its lab address: that is what the others must have heard.
    expected = {n: f"http://{r.host.address}:8000" for n, r in lab.replicas.items()}
    deadline = time.monotonic() + 15
    while not all(peers(n) == {p: expected[p] for p in expected if p != n}
                  for n in lab.replicas):
        assert time.monotonic() < deadline, {n: peers(n) for n in lab.replicas}
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_close_leaves_no_namespace_interface_process_or_file() -> None:
    lab = Lab(3, echo=print).start()
    try:
        Nemesis(lab).slow(2, 0.01)  # a delay-line process too, where netem is missing
        Nemesis(lab).partition([[1], [2, 3]])
        inodes = {netns_inode(ns) for ns in lab.network.namespaces}  # type: ignore[union-attr]
        assert processes_in(inodes)
    finally:
        lab.close()
    _assert_gone(lab.prefix, inodes, lab.dir)


@pytest.mark.timeout(60)
def test_a_lab_whose_owner_was_killed_is_removed_by_the_next_run(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import threading
            from lab.lab import Lab
            lab = Lab(2, replica="standin", echo=lambda line: None).start()
            print(lab.prefix, flush=True)
            threading.Event().wait(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert owner.stdout is not None
        prefix = owner.stdout.readline().strip()
        assert prefix.startswith("dpl")
        namespaces = [ns for ns in list_netns() if ns.startswith(prefix)]
        inodes = {netns_inode(ns) for ns in namespaces}
        assert processes_in(inodes)
    finally:
        owner.kill()
        owner.wait(timeout=10)

    removed = clean_stale_labs(echo=print)

    assert f"{prefix}-{owner.pid}" in removed
    deadline = time.monotonic() + 10
    while processes_in(inodes) and time.monotonic() < deadline:
        time.sleep(0.05)
    _assert_gone(prefix, inodes, LAB_BASE / f"{prefix}-{owner.pid}")


@pytest.mark.timeout(90)
def test_a_lab_given_an_admin_password_signs_in_and_its_clients_carry_the_session(
        tmp_path: Path) -> None:
    # No proxy: the lab logs in at the replicas, the highest id first.
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print, auth=True,
             admin_password="lab-admin-password") as lab:
        if lab.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        assert lab.credentials["Authorization"].startswith("Bearer ")
        for node_id, replica in lab.replicas.items():
            address = replica.host.address
            # The admin the leader made reaches the followers a moment apart; one that has
            # not applied it yet answers the session 409 behind.
            deadline = time.monotonic() + 15
            while (signed_in := lab.client(node_id).request(
                    "GET", address, HTTP_PORT, "/songs")).status != 200:
                assert time.monotonic() < deadline, (node_id, signed_in.status)
                time.sleep(0.1)
            anonymous = LabClient(replica.host.netns).request("GET", address, HTTP_PORT,
                                                               "/songs")
            assert anonymous.status == 401, node_id
        # What a request names itself wins over the lab's session.
        other = lab.client(1).request("GET", lab.replicas[1].host.address, HTTP_PORT, "/songs",
                                      headers={"Authorization": "Bearer not-a-session"})
        assert other.status == 401
        # The lab also made a listener account and holds its session: the random run's
        # writer that works as it is refused what only an admin may do.
        address = lab.replicas[3].host.address
        me = lab.client(3).request("GET", address, HTTP_PORT, "/auth/me",
                                   headers=lab.listener_credentials)
        assert me.status == 200 and me.json()["user"]["username"] == LISTENER_NAME
        assert me.json()["user"]["role"] == "listener"
        users = lab.client(3).request("GET", address, HTTP_PORT, "/users",
                                      headers=lab.listener_credentials)
        assert users.status == 403
        assert lab.client(3).request("GET", address, HTTP_PORT, "/users").status == 200


@pytest.mark.timeout(120)
def test_the_random_runs_listener_writer_works_as_the_listener_account(tmp_path: Path) -> None:
    """One writer of the random run sends the listener account's session: what it creates
    is that account's, it is never refused, and the admin's private playlists stay hidden
    from it (it fails if the writer sent the admin's session, or none)."""
    with Lab(3, base_dir=tmp_path, echo=print, auth=True, proxy=True,
             admin_password="lab-admin-password") as lab:
        if lab.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        traffic = Traffic(lab, seed=5, pause=0.01).start()
        deadline = time.monotonic() + 60
        while not {"upload", "create_playlist"} <= {
                op.kind for op in traffic.history()
                if op.worker.startswith("w1-") and op.outcome == "ok"}:
            assert time.monotonic() < deadline, "the listener writer made nothing"
            time.sleep(0.2)
        traffic.stop()
        history = traffic.history()

        def get(path: str, credentials: dict[str, str] | None = None) -> Any:
            assert lab.proxy is not None
            return lab.client(lab.proxy).request("GET", lab.proxy.address, PROXY_PORT, path,
                                                 headers=credentials)

        listener = get("/auth/me", lab.listener_credentials).json()["user"]["id"]
        admin = get("/auth/me").json()["user"]["id"]
        mine = [op for op in history if op.worker.startswith("w1-") and op.outcome == "ok"]
        assert not [op for op in history if op.status in (401, 403)]
        owners = []
        for op in mine:
            if op.kind == "upload":
                song = get(f"/songs/{op.result['id']}")
                owners += [("song", song.json()["uploaded_by"])] if song.status == 200 else []
            if op.kind == "create_playlist":
                playlist = get(f"/playlists/{op.result['id']}")
                owners += ([("playlist", playlist.json()["playlist"]["owner"])]
                           if playlist.status == 200 else [])
        assert {kind for kind, _ in owners} == {"song", "playlist"}, owners
        assert {owner for _, owner in owners} == {listener}, (owners, admin)
        theirs = [op.result["id"] for op in history if op.kind == "create_playlist"
                  and op.outcome == "ok" and not op.worker.startswith("w1-")]
        assert theirs and all(get(f"/playlists/{p}").status in (200, 404) for p in theirs)
        hidden = get(f"/playlists/{theirs[0]}", lab.listener_credentials)
        assert hidden.status in (403, 404), hidden.status
