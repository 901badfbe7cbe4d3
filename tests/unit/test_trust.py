"""Failures to prove the cluster key: counted per peer and kind, logged once per peer and kind,
bounded however many addresses a forger claims."""

from __future__ import annotations

from twisted.logger import capturedLogs, formatEvent

from distpotify.cluster.trust import MAX_PEERS, OTHER, AuthFailures


def test_failures_are_counted_per_peer_and_kind() -> None:
    failures = AuthFailures()
    failures.record("10.0.0.3", "heartbeat_forged")
    failures.record("10.0.0.3", "heartbeat_forged")
    failures.record("10.0.0.3", "amp_mismatch")
    failures.record("10.0.0.4", "http_unsigned")

    assert failures.snapshot() == {
        "10.0.0.3": {"amp_mismatch": 1, "heartbeat_forged": 2},
        "10.0.0.4": {"http_unsigned": 1},
    }
    assert (failures.count(), failures.count("heartbeat_forged")) == (4, 2)


def test_a_wrong_key_is_one_clear_line_per_peer_not_a_flood() -> None:
    failures = AuthFailures()
    with capturedLogs() as events:
        for _ in range(100):
            failures.record("10.0.0.3", "heartbeat_forged")
            failures.record("10.0.0.4", "heartbeat_forged")

    lines = [formatEvent(event) for event in events]
    assert len(lines) == 2
    assert lines[0].startswith("cluster key mismatch with 10.0.0.3:")
    assert lines[1].startswith("cluster key mismatch with 10.0.0.4:")


def test_each_kind_from_a_peer_gets_its_own_first_line() -> None:
    failures = AuthFailures()
    with capturedLogs() as events:
        failures.record("10.0.0.3", "http_stale", "+75.0s")
        failures.record("10.0.0.3", "http_stale", "+76.0s")
        failures.record("10.0.0.3", "http_replayed")

    lines = [formatEvent(event) for event in events]
    assert len(lines) == 2
    assert "dated +75.0s from our clock's time" in lines[0]
    assert "replayed" in lines[1]


def test_the_table_is_bounded_however_many_addresses_are_claimed() -> None:
    failures = AuthFailures()
    with capturedLogs():
        for n in range(MAX_PEERS + 100):
            failures.record(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", "heartbeat_forged")

    snapshot = failures.snapshot()
    assert len(snapshot) == MAX_PEERS + 1
    assert snapshot[OTHER] == {"heartbeat_forged": 100}
