"""AMP connections that prove the cluster key both ways before any other command
(docs/architecture.md section 3.2): a challenge-response with a fresh nonce from each side.

The connecting side sends ``Challenge(its nonce)``; the listener answers with its own nonce
and a proof over both; the connector checks it and sends ``Prove(its proof over both)``.
Each proof is an HMAC under the AMP key with the side's role in it, so neither can be
reflected back as the other's, and the nonces make every connection's proofs new, so none
can be replayed. ``ProvingAMP`` is the listening side: until the proof, any other command is
a fatal error (the connection closes). ``Handshake.prove`` is the connecting side.
"""
# test-case-name: tests.unit.test_ampauth

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from distpotify.cluster.trust import AuthFailures
from distpotify.keys import AMP, ClusterKeys

NONCE_BYTES = 32
# How long a connection may stay unproven before the listener closes it.
HANDSHAKE_DEADLINE = 5.0
LISTENER = b"listener"
CONNECTOR = b"connector"


class Unproven(Exception):
    """A command before the connection proved the cluster key, or a handshake out of order."""


class KeyMismatch(Exception):
    """A proof that verifies under none of our keys: the other side holds another key."""


class Challenge(amp.Command):
    """The connector's fresh nonce; the answer is the listener's nonce and its proof."""

    arguments = [(b"nonce", amp.String())]
    response = [(b"nonce", amp.String()), (b"proof", amp.String())]
    fatalErrors = {Unproven: b"UNPROVEN"}


class Prove(amp.Command):
    """The connector's proof over both nonces: from its answer on, the connection is trusted."""

    arguments = [(b"proof", amp.String())]
    fatalErrors = {KeyMismatch: b"KEY_MISMATCH", Unproven: b"UNPROVEN"}


def proof(keys: ClusterKeys, role: bytes, connector_nonce: bytes, listener_nonce: bytes
          ) -> bytes:
    return keys.sign(AMP, role + connector_nonce + listener_nonce)


def proven(keys: ClusterKeys, role: bytes, connector_nonce: bytes, listener_nonce: bytes,
           tag: bytes) -> bool:
    return keys.verify(AMP, role + connector_nonce + listener_nonce, tag)


class Handshake:
    """One replica's part in every handshake: its keys, where failures go, and its clock."""

    def __init__(self, keys: ClusterKeys, failures: AuthFailures, clock: IReactorTime,
                 timeout: float) -> None:
        self.keys = keys
        self.failures = failures
        self.clock = clock
        self.timeout = timeout

    async def prove(self, connection: amp.AMP, peer: str) -> None:
        """Prove the key to the listener at the other end of ``connection`` (at host
        ``peer``), and check its proof; KeyMismatch if either proof fails, TimeoutError if
        the listener does not answer within ``timeout``."""
        ours = os.urandom(NONCE_BYTES)
        answer = await self._call(connection, Challenge, nonce=ours)
        theirs, tag = answer["nonce"], answer["proof"]
        if len(theirs) != NONCE_BYTES or not proven(self.keys, LISTENER, ours, theirs, tag):
            self.failures.record(peer, "amp_mismatch")
            raise KeyMismatch(f"{peer} did not prove the cluster key")
        try:
            await self._call(connection, Prove, proof=proof(self.keys, CONNECTOR, ours, theirs))
        except KeyMismatch:
            # It holds a key we accept, but not the one we sign with (a rotation out of order).
            self.failures.record(peer, "amp_mismatch")
            raise KeyMismatch(f"{peer} does not accept our proof") from None

    def _call(self, connection: amp.AMP, command: type[amp.Command], **arguments: Any
              ) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = connection.callRemote(command, **arguments)
        return d.addTimeout(self.timeout, self.clock)


class ProvingAMP(amp.AMP):
    """The listening side of a connection: answers Challenge and Prove, and takes no other
    command until the connector has proved the key (each is answered UNPROVEN and the
    connection closed). A connection still unproven after HANDSHAKE_DEADLINE is closed."""

    def __init__(self, handshake: Handshake) -> None:
        super().__init__()
        self._handshake = handshake
        self.proven = False
        self._nonces: tuple[bytes, bytes] | None = None
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self._handshake.clock.callLater(HANDSHAKE_DEADLINE, self._too_slow)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _peer(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "unknown"))  # type: ignore[union-attr]

    @Challenge.responder
    def _challenged(self, nonce: bytes) -> dict[str, bytes]:
        if self.proven or self._nonces is not None or len(nonce) != NONCE_BYTES:
            self._handshake.failures.record(self._peer(), "amp_unproven")
            raise Unproven(f"one Challenge per connection, with a {NONCE_BYTES}-byte nonce")
        ours = os.urandom(NONCE_BYTES)
        self._nonces = (nonce, ours)
        return {"nonce": ours, "proof": proof(self._handshake.keys, LISTENER, nonce, ours)}

    @Prove.responder
    def _proved(self, proof: bytes) -> dict[str, Any]:
        if self.proven or self._nonces is None:
            self._handshake.failures.record(self._peer(), "amp_unproven")
            raise Unproven("Prove comes once, after Challenge")
        if not proven(self._handshake.keys, CONNECTOR, *self._nonces, proof):
            self._handshake.failures.record(self._peer(), "amp_mismatch")
            raise KeyMismatch("the proof does not verify under this cluster's key")
        self.proven = True
        self._cancel_deadline()
        return {}

    def locateResponder(self, name: bytes) -> Any:
        if self.proven or name in (Challenge.commandName, Prove.commandName):
            return super().locateResponder(name)
        self._handshake.failures.record(self._peer(), "amp_unproven")
        return self._refuse

    def _refuse(self, box: amp.AmpBox) -> Deferred[Any]:
        if amp.ASK not in box:
            # No answer to carry the error: just close.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return succeed(None)
        # Fatal: AMP sends the error in a QuitBox, which closes the connection after it.
        return fail(amp.RemoteAmpError(b"UNPROVEN", "prove the cluster key first", fatal=True))

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.proven and self.transport is not None:
            self.transport.loseConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
