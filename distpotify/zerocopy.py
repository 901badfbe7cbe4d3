"""Shared: what the kernel data paths (the replica's sendfile(2), the proxy's splice(2)) need
of a Twisted TCP transport: its socket, to write to it directly, and a wake-up when it drains.

Bytes written straight to a socket bypass the transport's own buffer, so they must wait until
that buffer is empty (the response headers are in it) and the socket takes more. The transport
already knows how to say so: with ``producerPaused`` set and write interest on, its ``doWrite``
writes out what it holds, and once empty resumes its producer, which for twisted.web is the
HTTPChannel, which resumes the request's producer. No second selectable on the descriptor.
"""
# test-case-name: tests.unit.test_sendfile, tests.unit.test_splice

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISystemHandle

_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def plain_socket(transport: Any) -> socket.socket | None:
    """The socket under ``transport`` if bytes written to it reach the peer as they are: a
    stream socket of a file-descriptor reactor. None for TLS (the transport is then a protocol
    wrapper), an in-memory transport, or anything else."""
    if not isinstance(transport, FileDescriptor) or not ISystemHandle.providedBy(transport):
        return None
    handle = transport.getHandle()
    if not isinstance(handle, socket.socket):
        return None
    if handle.type != socket.SOCK_STREAM or handle.family not in _STREAM_FAMILIES:
        return None
    return handle


def resume_when_drained(transport: FileDescriptor) -> None:
    """Have ``transport`` resume its producer once its buffer is written out and its socket
    is writable (at once, on the next reactor turn, if both are true already)."""
    transport.producerPaused = True
    transport.startWriting()
