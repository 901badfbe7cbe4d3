"""Session tokens on a Clock: what a valid one says, and every token refused (another key,
another cluster, expired, altered, ``alg: none``, another algorithm, another audience,
garbage), with the key rotation that keeps old tokens valid."""

from __future__ import annotations

import base64
import json
import secrets

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

import distpotify.auth.tokens as tokens_module
from distpotify.auth.tokens import (
    AUDIENCE,
    DEFAULT_TTL,
    ISSUER,
    LEEWAY,
    InvalidToken,
    TokenClaims,
    TokenSigner,
)
from distpotify.keys import HEARTBEAT, TOKEN, ClusterKeys

USER = "0b7f6c1e-9c4b-4d59-8a43-0e8f3f1f3c0a"
NOW = 1_790_000_000.0
OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)


def signer(keys: ClusterKeys | None = None, now: float = NOW) -> tuple[TokenSigner, Clock]:
    clock = Clock()
    clock.advance(now)
    return TokenSigner(keys or ClusterKeys((OLD,)), clock), clock


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                     b64(signature)])


def valid_claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": USER, "gen": 3,
                                 "iat": int(NOW), "exp": int(NOW) + 3600}
    claims.update(changes)
    return claims


def signed_with_token_key(claims: dict[str, object], keys: ClusterKeys | None = None) -> str:
    """A token made outside TokenSigner with the right key: for claims it would never make."""
    return jwt.encode(claims, (keys or ClusterKeys((OLD,))).signing(TOKEN), algorithm="HS256")


def refusal(tokens: TokenSigner, token: str) -> str:
    with pytest.raises(InvalidToken) as refused:
        tokens.check(token)
    assert not token or token not in str(refused.value)
    return str(refused.value)


# -- a valid token


def test_an_issued_token_checks_and_says_who_and_which_generation() -> None:
    tokens, _ = signer()

    claims = tokens.check(tokens.issue(USER, 3))

    assert claims == TokenClaims(USER, 3, int(NOW), int(NOW) + DEFAULT_TTL)


def test_a_token_lives_thirty_days_by_default() -> None:
    tokens, clock = signer()
    token = tokens.issue(USER, 0)

    clock.advance(30 * 24 * 3600 - 1)
    tokens.check(token)
    clock.advance(1 + LEEWAY)

    assert refusal(tokens, token) == "token expired"


def test_a_shorter_ttl_expires_sooner() -> None:
    tokens, clock = signer()
    token = tokens.issue(USER, 0, ttl=600)

    clock.advance(600 + LEEWAY)

    assert refusal(tokens, token) == "token expired"


def test_a_token_carries_the_generation_for_the_caller_to_compare() -> None:
    tokens, _ = signer()

    old, bumped = tokens.issue(USER, 3), tokens.issue(USER, 4)

    assert (tokens.check(old).generation, tokens.check(bumped).generation) == (3, 4)


def test_a_replica_whose_clock_is_a_little_behind_accepts_a_fresh_token() -> None:
    issuer, _ = signer(now=NOW + LEEWAY - 1)
    checker, _ = signer(now=NOW)

    assert checker.check(issuer.issue(USER, 0)).user_id == USER


def test_a_token_issued_too_far_in_the_future_is_refused() -> None:
    issuer, _ = signer(now=NOW + LEEWAY + 1)
    checker, _ = signer(now=NOW)

    assert refusal(checker, issuer.issue(USER, 0)) == "token issued in the future"


@pytest.mark.parametrize(("user_id", "generation", "ttl"), [
    ("", 0, 60), (USER, -1, 60), (USER, True, 60), (USER, 0, 0), (USER, 0, -5),
])
def test_issue_refuses_what_no_token_should_say(user_id: str, generation: int, ttl: int) -> None:
    tokens, _ = signer()

    with pytest.raises(ValueError):
        tokens.issue(user_id, generation, ttl=ttl)


# -- keys


def test_a_token_signed_with_another_key_is_refused() -> None:
    ours, _ = signer(ClusterKeys((OLD,)))
    theirs, _ = signer(ClusterKeys((NEW,)))

    assert refusal(ours, theirs.issue(USER, 0)) == (
        "token signature does not verify under any cluster key")


def test_a_token_of_another_cluster_is_refused() -> None:
    ours, _ = signer()
    other_cluster, _ = signer(ClusterKeys.generate())

    refusal(ours, other_cluster.issue(USER, 0))


def test_a_token_signed_with_another_purposes_key_is_refused() -> None:
    keys = ClusterKeys((OLD,))
    tokens, _ = signer(keys)

    token = jwt.encode(valid_claims(), keys.signing(HEARTBEAT), algorithm="HS256")

    refusal(tokens, token)


def test_a_token_signed_with_the_cluster_key_itself_is_refused() -> None:
    tokens, _ = signer()

    refusal(tokens, jwt.encode(valid_claims(), OLD, algorithm="HS256"))


def test_during_a_rotation_tokens_of_the_old_key_still_check() -> None:
    before, _ = signer(ClusterKeys((OLD,)))
    rotating, _ = signer(ClusterKeys((NEW, OLD)))

    token = before.issue(USER, 1)

    assert rotating.check(token).user_id == USER


def test_during_a_rotation_new_tokens_are_signed_with_the_new_key() -> None:
    rotating, _ = signer(ClusterKeys((NEW, OLD)))
    after, _ = signer(ClusterKeys((NEW,)))
    not_yet, _ = signer(ClusterKeys((OLD,)))

    token = rotating.issue(USER, 1)

    assert after.check(token).user_id == USER
    refusal(not_yet, token)


# -- altered and crafted tokens


def test_a_tampered_payload_is_refused() -> None:
    tokens, _ = signer()
    header, _, signature = tokens.issue(USER, 3).split(".")
    other = b64(json.dumps(valid_claims(sub="someone-else")).encode())

    refusal(tokens, f"{header}.{other}.{signature}")


def test_a_raised_generation_in_the_payload_is_refused() -> None:
    tokens, _ = signer()
    header, _, signature = tokens.issue(USER, 3).split(".")
    bumped = b64(json.dumps(valid_claims(gen=4)).encode())

    refusal(tokens, f"{header}.{bumped}.{signature}")


def test_a_tampered_signature_is_refused() -> None:
    tokens, _ = signer()
    header, claims, signature = tokens.issue(USER, 3).split(".")
    # The first character, whose six bits are all signature (the last one's are not).
    first = "A" if signature[0] != "A" else "B"

    refusal(tokens, f"{header}.{claims}.{first}{signature[1:]}")


def test_alg_none_is_refused() -> None:
    tokens, _ = signer()

    token = forged({"alg": "none", "typ": "JWT"}, valid_claims())

    assert refusal(tokens, token) == "token signed with another algorithm than HS256"


def test_alg_none_with_our_own_signature_is_refused() -> None:
    tokens, _ = signer()
    _, _, signature = tokens.issue(USER, 3).split(".")
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64(json.dumps(valid_claims()).encode())

    refusal(tokens, f"{header}.{claims}.{signature}")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_another_hmac_algorithm_under_the_right_key_is_refused(algorithm: str) -> None:
    tokens, _ = signer()

    token = jwt.encode(valid_claims(), ClusterKeys((OLD,)).signing(TOKEN), algorithm=algorithm)

    assert refusal(tokens, token) == "token signed with another algorithm than HS256"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"aud": "someone else"}, "token for another service"),
    ({"iss": "someone else"}, "token for another service"),
    ({"gen": "3"}, "token claims of the wrong type"),
    ({"gen": -1}, "token claims of the wrong type"),
    ({"gen": True}, "token claims of the wrong type"),
    ({"exp": "soon"}, "token claims of the wrong type"),
])
def test_a_signed_token_with_wrong_claims_is_refused(changes: dict[str, object],
                                                    reason: str) -> None:
    tokens, _ = signer()

    assert refusal(tokens, signed_with_token_key(valid_claims(**changes))) == reason


@pytest.mark.parametrize("missing", ["sub", "gen", "exp", "iat", "aud", "iss"])
def test_a_signed_token_lacking_a_claim_is_refused(missing: str) -> None:
    tokens, _ = signer()
    claims = valid_claims()
    del claims[missing]

    refusal(tokens, signed_with_token_key(claims))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "....", "x" * 5000, "é.é.é"])
def test_garbage_is_a_malformed_token(token: str) -> None:
    tokens, _ = signer()

    assert refusal(tokens, token) == "malformed token"


@given(st.text(max_size=300))
def test_no_text_makes_check_raise_anything_but_invalid_token(token: str) -> None:
    tokens, _ = signer()

    with pytest.raises(InvalidToken):
        tokens.check(token)


def test_the_refusal_never_shows_the_token_or_its_claims() -> None:
    tokens, clock = signer()
    token = tokens.issue(USER, 0, ttl=60)
    clock.advance(3600)

    message = refusal(tokens, token)

    assert USER not in message
    assert token.split(".")[1] not in message


# -- verified tokens remembered


def test_a_token_is_verified_once_then_its_claims_are_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, clock = signer()
    token = tokens.issue(USER, 3, ttl=600)
    decoded = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decoded.append(1) or real(*a, **k))

    first, second = tokens.check(token), tokens.check(token)

    assert first == second and first.generation == 3
    assert len(decoded) == 1
    clock.advance(600 + LEEWAY)  # remembered claims still expire
    assert refusal(tokens, token) == "token expired"


def test_refused_tokens_are_not_remembered_and_the_memory_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "VERIFIED_MAX", 3)
    tokens, _ = signer()
    other, _ = signer(ClusterKeys((NEW,)))
    foreign = other.issue(USER, 0)

    for _ in range(2):
        assert refusal(tokens, foreign) == (
            "token signature does not verify under any cluster key")
    issued = [tokens.issue(f"user-{n}", 0) for n in range(5)]
    for token in issued:
        tokens.check(token)

    assert list(tokens._verified_claims) == issued[-3:]
