"""Real sockets on 127.0.0.1 for the kernel data paths' tests (sendfile, splice).

Each test gets a private epoll reactor that it turns by hand (``Loop.until``, always with a
deadline), so nothing depends on the global reactor; clients are blocking sockets run in a
thread (``Loop.run``) while the reactor turns in the test's thread. ``tls_options`` makes a
throwaway certificate for a TLS listener, where the kernel paths must step aside.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOFactory

T = TypeVar("T")
HOST = "127.0.0.1"


class Loop:
    """A private EPollReactor, turned until a condition holds."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()
        # Running, though never run(): its thread pool (name resolution) works.
        self.reactor.startRunning(installSignalHandlers=False)
        self.ports: list[IListeningPort] = []

    def listen(self, factory: Any) -> int:
        port = self.reactor.listenTCP(0, factory, interface=HOST)
        self.ports.append(port)
        return int(port.getHost().port)

    def listen_tls(self, factory: Any) -> int:
        """``listen`` behind TLS (a self-signed certificate: clients do not verify it). As
        listenSSL does, but flushing its writes on this reactor's clock, not the global one."""
        return self.listen(TLSMemoryBIOFactory(tls_options(), False, factory, self.reactor))

    def until(self, check: Callable[[], object], timeout: float = 20.0, what: str = "",
              each: Callable[[], None] | None = None) -> None:
        """Turn the reactor until ``check()`` is true; ``each`` runs after every turn."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
            self.reactor.iterate(0.002)
            if each is not None:
                each()

    def run(self, work: Callable[[], T], timeout: float = 30.0,
            each: Callable[[], None] | None = None) -> T:
        """``work()`` in a thread while the reactor turns here; its result or its exception."""
        outcome: list[Any] = []

        def target() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as e:  # handed to the test's thread
                outcome.append((False, e))

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.until(lambda: outcome, timeout, "the client thread", each)
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result

    def settle(self, turns: int = 20) -> None:
        """A few reactor turns, for callLater(0) work such as an aborted connection's loss."""
        for _ in range(turns):
            self.reactor.iterate(0)

    def close(self) -> None:
        for port in self.ports:
            port.stopListening()
        self.reactor.disconnectAll()
        self.reactor.stop()
        self.settle()
        self.reactor._poller.close()


def buffered(transport: FileDescriptor) -> int:
    """Bytes a Twisted transport holds that it has not written to its socket yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def tls_options() -> IOpenSSLServerConnectionCreator:
    """A server's TLS options with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    options: IOpenSSLServerConnectionCreator = PrivateCertificate.loadPEM(pem).options()
    return options


def connect(port: int, rcvbuf: int | None = None, timeout: float = 20.0, tls: bool = False
            ) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((HOST, port))
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's own throwaway certificate
        return context.wrap_socket(sock)
    return sock


class Client:
    """One keep-alive HTTP/1.1 connection (http.client), for use inside ``Loop.run``."""

    def __init__(self, port: int, rcvbuf: int | None = None, tls: bool = False) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=20)
        self.conn.sock = connect(port, rcvbuf, tls=tls)

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
            ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, headers=headers or {})
        response = self.conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        self.conn.close()


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read until the end of a response's headers: (headers, the body bytes read past them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before the headers ended: {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_to_end(sock: socket.socket, limit: int | None = None) -> tuple[bytes, str]:
    """Read until EOF, a reset, or ``limit`` bytes: (bytes, "eof" | "reset" | "limit")."""
    parts: list[bytes] = []
    size = 0
    while limit is None or size < limit:
        try:
            more = sock.recv(65536 if limit is None else min(65536, limit - size))
        except ConnectionResetError:
            return b"".join(parts), "reset"
        if not more:
            return b"".join(parts), "eof"
        parts.append(more)
        size += len(more)
    return b"".join(parts), "limit"
