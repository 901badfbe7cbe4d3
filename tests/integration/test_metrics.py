"""/metrics on a real replica: Prometheus text that counts requests and shows cluster state."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.audio import make_audio
from tests.helpers.replica import ReplicaProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def samples(replica: ReplicaProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = replica.get("/metrics")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.body.decode())
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_and_show_leadership(
    replica: ReplicaProcess, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path / "a.wav", "wav", seconds=1).read_bytes()
    song = replica.post("/songs", audio, "audio/wav").json()["song"]
    replica.get(f"/songs/{song['id']}/stream")
    replica.get("/songs/00000000-0000-4000-8000-000000000000")

    found = samples(replica)

    def requests(route: str, method: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return found[("distpotify_http_requests_total", labels)]

    assert requests("/songs", "POST", "201") == 1
    assert requests("/songs/{id}/stream", "GET", "200") == 1
    assert requests("/songs/{id}", "GET", "404") == 1
    sent = found[("distpotify_http_sent_bytes_total", (("route", "/songs/{id}/stream"),))]
    assert sent >= len(audio)
    assert found[("distpotify_is_leader", ())] == 1.0
    assert found[("distpotify_epoch", ())] >= 1
    assert found[("distpotify_active", ())] == 1.0
    # A lone replica has no follower to wait for: its write is acknowledged as degraded.
    assert found[("distpotify_write_acks", (("outcome", "alone"),))] == 1
    assert found[("distpotify_write_acks", (("outcome", "replicated"),))] == 0
    assert found[("distpotify_takeover_timeouts", ())] == 0


def test_metrics_count_failures_to_prove_the_cluster_key(replica: ReplicaProcess) -> None:
    assert replica.get("/sync/digest").status == 401

    found = samples(replica)

    labels = (("kind", "http_unsigned"), ("peer", "127.0.0.1"))
    assert found[("distpotify_auth_failures", labels)] == 1
