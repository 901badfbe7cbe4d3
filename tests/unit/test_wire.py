"""The wire contract's JSON writers (the shape and headers every process answers with) and
its version text."""

from __future__ import annotations

import json

from twisted.web.test.requesthelper import DummyRequest

from distpotify.wire import (
    ACTIVE,
    CANDIDATE,
    FOLLOWER,
    JOINING,
    LEADER,
    ROLES,
    STATES,
    json_error,
    json_response,
    version_writer,
)


def header(request: DummyRequest, name: bytes) -> bytes:
    values = request.responseHeaders.getRawHeaders(name)
    assert values is not None, name
    return values[-1]


def test_a_json_response_is_compact_with_its_length_and_type() -> None:
    request = DummyRequest([b""])

    body = json_response(request, 201, {"song": {"id": "x", "tags": [1, 2]}})

    assert body == b'{"song":{"id":"x","tags":[1,2]}}'
    assert request.responseCode == 201
    assert header(request, b"Content-Type") == b"application/json"
    assert header(request, b"Content-Length") == str(len(body)).encode()


def test_a_pretty_json_response_is_indented_and_ends_with_a_newline() -> None:
    request = DummyRequest([b""])

    body = json_response(request, 200, {"leader": None}, pretty=True)

    assert body == b'{\n "leader": null\n}\n'
    assert header(request, b"Content-Length") == str(len(body)).encode()


def test_an_error_carries_its_code_message_and_extra_fields() -> None:
    request = DummyRequest([b""])

    body = json_error(request, 421, "not_leader", "write to the leader", leader_id=3)

    assert request.responseCode == 421
    assert json.loads(body) == {"error": "not_leader", "message": "write to the leader",
                                "leader_id": 3}


def test_a_versions_writer_is_its_middle_field_and_other_text_has_none() -> None:
    assert version_writer(b"0000000002-00003-000000000007") == 3
    for text in (b"", b"3", b"0000000002-00003", b"a-b-c", b"1-2-3-4", b"1--3"):
        assert version_writer(text) is None, text


def test_the_roles_and_states_are_the_strings_on_the_wire() -> None:
    assert (LEADER, FOLLOWER, CANDIDATE) == ("leader", "follower", "candidate")
    assert {LEADER, FOLLOWER, CANDIDATE} == ROLES
    assert (JOINING, ACTIVE) == ("JOINING", "ACTIVE")
    assert {JOINING, ACTIVE} == STATES


def test_a_json_answer_names_its_status_even_where_twisted_web_has_no_phrase() -> None:
    request = DummyRequest([b""])

    json_response(request, 429, {"error": "too_many_requests"})

    assert (request.responseCode, request.responseMessage) == (429, b"Too Many Requests")
