"""Structural types for the parts of the reactor the cluster code calls.

mypy reads zope Interfaces (IReactorTime, IMulticastTransport, ...) as classes whose methods
lack ``self`` unless the mypy-zope plugin is installed, so these Protocols name the same
methods. Public signatures keep the Twisted interface names; code casts once to these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class Clock(Protocol):
    """What the cluster needs of IReactorTime."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: Any, **kw: Any
    ) -> DelayedCall: ...


class DatagramTransport(Protocol):
    def write(self, datagram: bytes, addr: tuple[str, int]) -> None: ...


class MulticastPort(Protocol):
    """What the cluster needs of IMulticastTransport and IListeningPort."""

    def setTTL(self, ttl: int) -> None: ...

    def setLoopbackMode(self, mode: bool) -> None: ...

    def setOutgoingInterface(self, addr: str) -> Deferred[Any]: ...

    def joinGroup(self, addr: str, interface: str = "") -> Deferred[Any]: ...

    def stopListening(self) -> Deferred[None] | None: ...


class MulticastReactor(Protocol):
    def listenMulticast(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> MulticastPort: ...


class UDPReactor(Protocol):
    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> Any: ...
