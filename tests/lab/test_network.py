"""The lab's wiring: hosts reach each other over HTTP and multicast, partitions and cuts
separate and heal restores, slow adds the delay and loss it says, and the root namespace is
left alone."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from lab import probes
from lab.lab import HTTP_PORT, Lab
from lab.nemesis import Nemesis
from lab.network import Host

TEST_GROUP = probes.HEARTBEAT_GROUP
TEST_PORT = 7947  # beside the replicas' 7946, so their heartbeats do not mix in
PROBE_PORT = 7000

pytestmark = [pytest.mark.lab]


def _reaches(lab: Lab, source: int, target: int) -> bool:
    host = lab.replicas[target].host
    try:
        answer = lab.client(source, timeout=1.0).request("GET", host.address, HTTP_PORT,
                                                         "/status")
    except OSError:
        return False
    return answer.status == 200 and answer.served_by == str(target)


def _multicast_reaches(sender: Host, listeners: dict[int, socket.socket], deadline: float,
                       expected: set[int]) -> set[int]:
    """Send numbered datagrams until every EXPECTED listener got one; who received it."""
    sock = probes.multicast_sender(sender)
    token = f"probe-{time.monotonic_ns()}".encode()
    heard: set[int] = set()
    try:
        while time.monotonic() < deadline and not expected <= heard:
            sock.sendto(token, (TEST_GROUP, TEST_PORT))
            time.sleep(0.02)
            for node_id, listener in listeners.items():
                if token in probes.drain(listener):
                    heard.add(node_id)
        return heard
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_every_host_reaches_every_replica_over_http(lab: Lab) -> None:
    for source in lab.replicas:
        for target in lab.replicas:
            assert _reaches(lab, source, target), f"node {source} cannot reach node {target}"


@pytest.mark.timeout(60)
def test_multicast_with_ttl_1_crosses_the_bridge_to_every_host(lab: Lab) -> None:
    hosts = {n: r.host for n, r in lab.replicas.items()}
    listeners = {n: probes.multicast_listener(hosts[n], TEST_GROUP, TEST_PORT) for n in (2, 3)}
    try:
        heard = _multicast_reaches(hosts[1], listeners, time.monotonic() + 10, {2, 3})
    finally:
        for sock in listeners.values():
            sock.close()
    assert heard == {2, 3}


@pytest.mark.timeout(60)
def test_partition_stops_traffic_between_groups_and_heal_restores_it(lab: Lab) -> None:
    nemesis = Nemesis(lab)
    hosts = {n: r.host for n, r in lab.replicas.items()}
    listeners = {n: probes.multicast_listener(hosts[n], TEST_GROUP, TEST_PORT) for n in (2, 3)}
    try:
        nemesis.partition([[1, 2], [3]])

        assert _reaches(lab, 1, 2) and _reaches(lab, 3, 3)
        assert not _reaches(lab, 1, 3) and not _reaches(lab, 3, 2)
        # Node 2 hearing a datagram proves it went out; node 3, on the same flood domain
        # before the partition, must not have heard it.
        assert _multicast_reaches(hosts[1], listeners, time.monotonic() + 10, {2}) == {2}
        assert probes.drain(listeners[3]) == []

        nemesis.heal()

        deadline = time.monotonic() + 10
        while not (_reaches(lab, 1, 3) and _reaches(lab, 3, 2)):
            assert time.monotonic() < deadline, "heal did not restore HTTP"
            time.sleep(0.05)
        assert _multicast_reaches(hosts[1], listeners, deadline, {2, 3}) == {2, 3}
    finally:
        for sock in listeners.values():
            sock.close()
    assert [e.op for e in nemesis.events] == ["partition", "heal"]


@pytest.mark.timeout(60)
def test_a_cut_separates_two_hosts_that_a_third_still_reaches(lab: Lab) -> None:
    nemesis = Nemesis(lab)
    hosts = {n: r.host for n, r in lab.replicas.items()}
    listeners = {n: probes.multicast_listener(hosts[n], TEST_GROUP, TEST_PORT) for n in (1, 3)}
    try:
        nemesis.cut(1, [2])

        assert not _reaches(lab, 1, 2) and not _reaches(lab, 2, 1)
        assert _reaches(lab, 3, 1) and _reaches(lab, 3, 2) and _reaches(lab, 1, 3)
        # Node 3 hearing node 2's datagram proves it went out; node 1 must not have heard it.
        assert _multicast_reaches(hosts[2], listeners, time.monotonic() + 10, {3}) == {3}
        assert probes.drain(listeners[1]) == []
        assert lab.network is not None and lab.network.cuts() == [("n1", "n2")]

        nemesis.heal()

        deadline = time.monotonic() + 10
        while not (_reaches(lab, 1, 2) and _reaches(lab, 2, 1)):
            assert time.monotonic() < deadline, "heal did not restore HTTP"
            time.sleep(0.05)
        assert _multicast_reaches(hosts[2], listeners, deadline, {1, 3}) == {1, 3}
    finally:
        for sock in listeners.values():
            sock.close()
    assert [e.op for e in nemesis.events] == ["cut", "heal"]


@pytest.mark.timeout(60)
def test_slow_adds_the_delay_it_says_and_fast_removes_it(lab: Lab) -> None:
    nemesis = Nemesis(lab)
    source, target = lab.replicas[1].host, lab.replicas[2].host
    listener = probes.tcp_listener(target, PROBE_PORT)
    try:
        before = probes.round_trip(source, listener)
        nemesis.slow(2, delay=0.1)
        slowed = probes.round_trip(source, listener)
        nemesis.fast(2)
        after = probes.round_trip(source, listener)
    finally:
        listener.close()
    print(f"round trip {before * 1000:.2f} ms, slowed {slowed * 1000:.2f} ms, "
          f"after {after * 1000:.2f} ms (via {lab.network and lab.network.shaper})")
    assert 0.1 <= slowed - before < 0.13
    assert after < 0.02


@pytest.mark.timeout(60)
def test_slow_loses_the_fraction_it_says(lab: Lab) -> None:
    nemesis = Nemesis(lab)
    hosts = {n: r.host for n, r in lab.replicas.items()}
    listener = probes.multicast_listener(hosts[1], TEST_GROUP, TEST_PORT)
    sender = probes.multicast_sender(hosts[2])
    sent = 400
    try:
        nemesis.slow(2, delay=0.0, loss=0.3)
        received: list[bytes] = []
        for number in range(sent):
            sender.sendto(b"%d" % number, (TEST_GROUP, TEST_PORT))
            if number % 50 == 49:  # drain as we go: a full socket buffer would add loss
                time.sleep(0.01)
                received += probes.drain(listener)
        quiet_until = time.monotonic() + 0.5
        deadline = time.monotonic() + 10
        while time.monotonic() < min(quiet_until, deadline):
            batch = probes.drain(listener)
            if batch:
                received += batch
                quiet_until = time.monotonic() + 0.5
            time.sleep(0.02)
    finally:
        listener.close()
        sender.close()
    print(f"{len(received)} of {sent} arrived with loss 0.3")
    assert 0.55 * sent <= len(received) <= 0.85 * sent, f"{len(received)} of {sent} arrived"


@pytest.mark.timeout(60)
def test_the_root_namespace_gets_no_address_route_or_interface() -> None:
    def root_network() -> tuple[str, str, str]:
        return tuple(  # type: ignore[return-value]
            subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
            for args in (["-o", "addr"], ["route", "show", "table", "all"], ["-o", "link"])
        )

    before = root_network()
    with Lab(2, replica="standin", echo=print) as lab:
        nemesis = Nemesis(lab)
        nemesis.partition([[1], [2]])
        nemesis.slow(1, 0.01)
        during = root_network()
        nemesis.heal()
    assert during == before
    assert "10.77." not in "".join(during)
