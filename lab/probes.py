"""Network probes between lab hosts, from sockets opened in their namespaces: multicast
senders and listeners, TCP round trips. The lab's tests use them to show that the wiring
(bridge, partitions, delays) does what it says, independently of any replica.
"""
# test-case-name: tests.lab.test_network

from __future__ import annotations

import socket
import statistics
import time

from lab.netns import socket_in
from lab.network import Host

HEARTBEAT_GROUP = "239.255.77.77"


def multicast_listener(host: Host, group: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on HOST that joined GROUP on the host's lab interface."""
    sock = socket_in(host.netns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    membership = socket.inet_aton(group) + socket.inet_aton(host.address)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.setblocking(False)
    return sock


def multicast_sender(host: Host, ttl: int = 1) -> socket.socket:
    """A UDP socket on HOST sending multicast out of its lab interface with TTL."""
    sock = socket_in(host.netns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(host.address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket."""
    received = []
    while True:
        try:
            received.append(sock.recv(65536))
        except BlockingIOError:
            return received


def tcp_listener(host: Host, port: int) -> socket.socket:
    sock = socket_in(host.netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.address, port))
    sock.listen(64)
    return sock


def connect_time(source: Host, address: str, port: int, timeout: float = 2.0) -> float:
    """Seconds a TCP handshake from SOURCE to ADDRESS:PORT takes (one round trip)."""
    sock = socket_in(source.netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        started = time.monotonic()
        sock.connect((address, port))
        return time.monotonic() - started
    finally:
        sock.close()


def round_trip(source: Host, listener: socket.socket, samples: int = 5) -> float:
    """Median handshake time from SOURCE to LISTENER's address (accepting as it goes)."""
    address, port = listener.getsockname()
    times = []
    for _ in range(samples):
        times.append(connect_time(source, address, port))
        listener.accept()[0].close()
    return statistics.median(times)
