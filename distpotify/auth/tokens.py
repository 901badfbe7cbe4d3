"""Session tokens: JWTs (HS256) signed with the user-token key derived from the cluster key,
so any replica and the proxy can check one from memory, without a database round trip.

A token names the user, the user's session generation when it was issued (bumping it ends
every session: comparing is the caller's part, which holds the user), and its expiry.
PyJWT checks the signature, the algorithm (HS256 only, so ``alg: none`` and key-confusion
tricks are refused), the issuer and the audience; the times are checked here, against the
injected clock, so tests can move it.
"""
# test-case-name: tests.unit.test_auth_tokens

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
import jwt
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from distpotify.keys import TOKEN, ClusterKeys

ALGORITHM = "HS256"
ISSUER = "distpotify"
AUDIENCE = "distpotify session"
DEFAULT_TTL = 30 * 24 * 3600
# Clocks of replicas and the proxy may differ a little: a token issued by one is accepted by
# another whose clock is up to this far behind, and lives this much longer there.
LEEWAY = 60
# Far more than a token of ours takes (about 250 characters): longer input is not parsed.
MAX_LENGTH = 4096
_REQUIRED = ["iss", "aud", "sub", "gen", "iat", "exp"]
# Tokens whose signature verified, kept with their claims so the next request that sends one
# skips PyJWT (about 95 us a check, a tenth of a chunk GET's cost on a replica). The claims'
# times are checked on every use all the same; a process's keys never change.
VERIFIED_MAX = 4096


class InvalidToken(Exception):
    """A token that proves nothing: forged, altered, expired, malformed or for something
    else. The message says which, in words fit for a log line; it never holds the token."""


class NotKnownYet(InvalidToken):
    """A genuine token (the cluster signed it, it has not expired) naming an account, or a
    session generation, that this replica has not applied yet: the account was made, or its
    sessions renewed, on the leader a moment ago (or this replica is joining). Nothing here
    proves it; the leader may."""


@attrs.frozen
class TokenClaims:
    """What a valid token says. The caller still compares ``generation`` with the user's."""

    user_id: str
    generation: int
    issued_at: int
    expires_at: int


class TokenSigner:
    """Issues session tokens under the cluster's signing key and checks them under every
    accepted key, so tokens survive a key rotation until the old key leaves the file."""

    def __init__(self, keys: ClusterKeys, clock: IReactorTime, *, leeway: int = LEEWAY) -> None:
        self._keys = keys
        self._clock = clock
        self._leeway = leeway
        self._verified_claims: OrderedDict[str, TokenClaims] = OrderedDict()

    def issue(self, user_id: str, generation: int, ttl: int = DEFAULT_TTL) -> str:
        """A token for ``user_id`` at session ``generation``, valid for ``ttl`` seconds."""
        if not user_id:
            raise ValueError("a token names a user")
        if isinstance(generation, bool) or generation < 0:
            raise ValueError(f"a session generation is a whole number >= 0, not {generation}")
        if ttl <= 0:
            raise ValueError(f"a token lives a positive number of seconds, not {ttl}")
        now = int(self._clock.seconds())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user_id, "gen": generation,
                  "iat": now, "exp": now + int(ttl)}
        return jwt.encode(claims, self._keys.signing(TOKEN), algorithm=ALGORITHM)

    def check(self, token: str) -> TokenClaims:
        """The claims of ``token``; InvalidToken unless it was signed under an accepted key,
        names us as issuer and audience, and is current by our clock."""
        if not isinstance(token, str) or not token or len(token) > MAX_LENGTH:
            raise InvalidToken("malformed token")
        claims = self._verified_claims.get(token)
        if claims is None:
            claims = _claims(self._verified(token))
            self._verified_claims[token] = claims
            if len(self._verified_claims) > VERIFIED_MAX:
                self._verified_claims.popitem(last=False)
        else:
            self._verified_claims.move_to_end(token)
        now = self._clock.seconds()
        if claims.expires_at + self._leeway <= now:
            raise InvalidToken("token expired")
        if claims.issued_at - self._leeway > now:
            raise InvalidToken("token issued in the future")
        return claims

    def _verified(self, token: str) -> dict[str, Any]:
        for key in self._keys.accepted(TOKEN):
            try:
                return jwt.decode(
                    token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                    options={"require": _REQUIRED, "verify_signature": True,
                             "verify_exp": False, "verify_iat": False, "verify_nbf": False},
                )
            except jwt.InvalidSignatureError:
                continue  # perhaps signed with the other key of a rotation
            except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
                raise InvalidToken("token for another service") from None
            except jwt.MissingRequiredClaimError:
                raise InvalidToken("token lacks a claim") from None
            except jwt.InvalidAlgorithmError:
                raise InvalidToken("token signed with another algorithm than HS256") from None
            except jwt.PyJWTError:
                raise InvalidToken("malformed token") from None
        raise InvalidToken("token signature does not verify under any cluster key")


def _claims(payload: dict[str, Any]) -> TokenClaims:
    user_id, generation = payload["sub"], payload["gen"]
    issued_at, expires_at = payload["iat"], payload["exp"]
    if not (isinstance(user_id, str) and user_id and _whole(generation) and generation >= 0
            and _whole(issued_at) and _whole(expires_at)):
        raise InvalidToken("token claims of the wrong type")
    return TokenClaims(user_id, generation, issued_at, expires_at)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bearer_token(request: IRequest) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None. The header is read as bytes:
    one that is not UTF-8 is a bad token (refused 401), not a 500."""
    raw = request.getHeader(b"Authorization")
    if raw is None:
        return None
    scheme, _, token = raw.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
