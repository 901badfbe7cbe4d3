"""The API's description (OpenAPI 3.1, ``proxy/openapi.yaml``, which docs/openapi.yaml links
to), read once when the proxy starts and served as JSON at ``GET /openapi.json``.
"""
# test-case-name: tests.unit.test_proxy_site,tests.unit.test_openapi_description

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

OPENAPI_YAML = Path(__file__).resolve().parent / "openapi.yaml"


def load_description(path: Path = OPENAPI_YAML) -> dict[str, Any]:
    """The description as data; ValueError if the file is not a YAML mapping."""
    with path.open("rb") as file:
        description = yaml.safe_load(file)
    if not isinstance(description, dict):
        raise ValueError(f"{path} does not hold an OpenAPI description")
    return description


def description_json(path: Path = OPENAPI_YAML) -> bytes:
    """The description as the compact JSON the proxy serves. Its YAML anchors (the header
    sets several answers share) are written out where they are used, as JSON has none."""
    return json.dumps(load_description(path), separators=(",", ":")).encode()
