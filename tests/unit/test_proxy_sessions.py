"""The proxy's memory of each client's last write, with a Clock: who a client is (token hash,
else our cookie), how long a write is remembered, and that the memory stays bounded."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from proxy.sessions import COOKIE, Sessions

V1, V2 = b"0000000001-00003-000000000001", b"0000000001-00003-000000000002"


def request(authorization: bytes | None = None, cookie: bytes | None = None) -> Request:
    made = Request(DummyChannel())
    if authorization is not None:
        made.requestHeaders.setRawHeaders(b"authorization", [authorization])
    if cookie is not None:
        made.received_cookies = {COOKIE: cookie}
    return made


def cookie_set(made: Request) -> bytes:
    (cookie,) = made.cookies
    return cookie.split(b";")[0].split(b"=", 1)[1]


def test_a_first_write_gets_a_cookie_that_names_the_client_afterwards() -> None:
    sessions = Sessions(Clock(), 5.0)
    write = request()

    sessions.remember(write, V1)
    value = cookie_set(write)

    assert sessions.recall(request(cookie=value)) == V1
    assert sessions.recall(request()) is None
    attributes = {part.strip().lower() for part in write.cookies[0].split(b";")[1:]}
    assert attributes == {b"path=/", b"httponly", b"samesite=lax"}


def test_a_client_is_known_by_its_token_whose_text_is_never_kept() -> None:
    sessions = Sessions(Clock(), 5.0)
    write = request(authorization=b"Bearer s3cret")

    sessions.remember(write, V1)

    assert write.cookies == []
    assert sessions.recall(request(authorization=b"Bearer s3cret")) == V1
    assert sessions.recall(request(authorization=b"Bearer other")) is None
    assert not any(b"s3cret".decode() in key for key in sessions._last)


def test_a_later_write_replaces_the_version_and_a_cookie_we_did_not_make_is_replaced() -> None:
    sessions = Sessions(Clock(), 5.0)
    first = request(cookie=b"not-ours")
    sessions.remember(first, V1)
    value = cookie_set(first)

    again = request(cookie=value)
    sessions.remember(again, V2)

    assert sessions.recall(request(cookie=value)) == V2
    assert again.cookies == []  # it has ours already
    assert sessions.recall(request(cookie=b"not-ours")) is None


def test_a_write_is_forgotten_after_the_memory() -> None:
    clock = Clock()
    sessions = Sessions(clock, 5.0)
    sessions.remember(request(authorization=b"t"), V1)

    clock.advance(5.0)
    assert sessions.recall(request(authorization=b"t")) == V1
    clock.advance(0.01)

    assert sessions.recall(request(authorization=b"t")) is None
    assert len(sessions) == 0


def test_the_memory_is_bounded_forgetting_the_least_recent_writer() -> None:
    sessions = Sessions(Clock(), 5.0, limit=3)
    for n in range(4):
        sessions.remember(request(authorization=str(n).encode()), V1)

    assert len(sessions) == 3
    assert sessions.recall(request(authorization=b"0")) is None
    assert sessions.recall(request(authorization=b"3")) == V1


def test_writes_of_clients_that_never_come_back_are_forgotten_as_they_expire() -> None:
    clock = Clock()
    sessions = Sessions(clock, 5.0)
    for _ in range(1000):  # a client that never sends its cookie back: a new one each write
        sessions.remember(request(), V1)
        clock.advance(0.1)

    assert len(sessions) <= 51  # the last 5 s of them, not the 1,000


def test_a_memory_of_zero_keeps_nothing_and_sets_no_cookie() -> None:
    sessions = Sessions(Clock(), 0.0)
    write = request()

    sessions.remember(write, V1)

    assert write.cookies == [] and len(sessions) == 0


def test_an_earlier_writes_answer_coming_later_does_not_take_the_version_back() -> None:
    """A replayed answer (the same key sent again) or two writes answered out of order: the
    client's reads still wait for its latest write."""
    clock = Clock()
    sessions = Sessions(clock, 5.0)
    token = b"Bearer s3cret"

    sessions.remember(request(authorization=token), V2)
    sessions.remember(request(authorization=token), V1)
    assert sessions.recall(request(authorization=token)) == V2

    clock.advance(6)  # V2 forgotten: an older version is remembered again
    sessions.remember(request(authorization=token), V1)
    assert sessions.recall(request(authorization=token)) == V1
