"""A replica's /metrics labels: the route of a request, with ids, numbers and Subsonic method
names folded so that the labels stay few whatever clients ask."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distpotify.metrics import ReplicaMetrics, route_of


@pytest.mark.parametrize(("path", "route"), [
    ("/songs/0b0c8a4e-0000-4000-8000-000000000001/stream", "/songs/{id}/stream"),
    ("/songs/0b0c8a4e-0000-4000-8000-000000000001/chunks/7", "/songs/{id}/chunks/{n}"),
    ("/songs?q=x", "/songs"),
    ("/rest/getAlbumList2.view?u=a&p=secret&type=newest", "/rest/{method}"),
    ("/rest/stream?id=1", "/rest/{method}"),
    ("/rest/STAR.view", "/rest/{method}"),
    ("/rest/anythingAClientMakesUp.view", "/rest/{method}"),
    ("/restore", "other"),
    ("/favicon.ico", "other"),
])
def test_a_request_is_counted_under_its_route(path: str, route: str) -> None:
    assert route_of(path) == route


def test_subsonic_calls_of_any_method_share_one_route_label() -> None:
    metrics = ReplicaMetrics(node_id=1)
    for name in ("ping", "getAlbum", "stream", "noSuchMethod"):
        metrics.request_done("GET", f"/rest/{name}.view?u=a&p=b", 200, 10)

    text = generate_latest(metrics.registry).decode()
    routes = {sample.labels["route"] for family in text_string_to_metric_families(text)
              for sample in family.samples if "route" in sample.labels}

    assert routes == {"/rest/{method}"}
