"""A userspace stand-in for ``tc netem``: forwards Ethernet frames between two interfaces,
delaying (and optionally dropping) the frames a host sends, for kernels without sch_netem.

Run by the lab inside the bridge namespace:
``python -m lab.delayline --host-side IF --bridge-side IF --delay S --loss P``.
Frames keep their virtio-net header (PACKET_VNET_HDR), so checksum offload and GSO survive
the trip through userspace. It prints ``ready`` once both sockets are bound, and exits with
its parent.
"""
# test-case-name: tests.lab.test_network

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 64
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 8 * 1024 * 1024
QUEUE_LIMIT = 1000  # frames, like netem's default limit
PARENT_CHECK_INTERVAL = 1.0


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    # Room for a burst: a frame dropped here would be loss nobody asked for.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, frame: bytes) -> None:
    # A full queue or a vanished interface loses the frame, as a real link would.
    with contextlib.suppress(OSError):
        sock.send(frame)


def forward(
    host_side: str, bridge_side: str, delay: float, loss: float, rng: random.Random
) -> None:
    from_host, to_bridge = _open(host_side), _open(bridge_side)
    parent = os.getppid()
    print("ready", flush=True)
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    next_parent_check = time.monotonic() + PARENT_CHECK_INTERVAL
    while True:
        now = time.monotonic()
        if now >= next_parent_check:
            if os.getppid() != parent:
                return
            next_parent_check = now + PARENT_CHECK_INTERVAL
        wait = min(next_parent_check, queue[0][0] if queue else next_parent_check) - now
        readable, _, _ = select.select([from_host, to_bridge], [], [], max(wait, 0.0))
        for sock in readable:
            while True:
                try:
                    frame, address = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own transmission, seen on the way out
                if sock is to_bridge:
                    _send(from_host, frame)
                elif len(queue) < QUEUE_LIMIT and not (loss and rng.random() < loss):
                    queue.append((time.monotonic() + delay, frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _send(to_bridge, queue.popleft()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-side", required=True, help="interface facing the slowed host")
    parser.add_argument("--bridge-side", required=True, help="interface facing the bridge")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each frame")
    parser.add_argument("--loss", type=float, default=0.0, help="probability a frame is lost")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    forward(args.host_side, args.bridge_side, args.delay, args.loss, random.Random(args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
