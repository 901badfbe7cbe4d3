"""Subsonic calls in tests: the query a client sends, answers checked against the schema
(tests/data/subsonic-1.16.1.xsd, validated with xmlschema) or read as JSON, and songs with
tags uploaded to an in-memory replica."""

from __future__ import annotations

import functools
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import xmlschema

from tests.helpers.api import Answer, InMemoryReplica
from tests.helpers.audio import make_wav

SCHEMA_FILE = Path(__file__).parent.parent / "data" / "subsonic-1.16.1.xsd"
NS = "{http://subsonic.org/restapi}"


@functools.cache
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA_FILE))


def path(method: str, **params: Any) -> str:
    """``/rest/<method>.view?...``: repeated parameters as lists."""
    pairs = [(k, v) for k, value in params.items()
             for v in (value if isinstance(value, list) else [value])]
    return f"/rest/{method}.view?{urlencode(pairs)}"


def rest(replica: InMemoryReplica, method: str, headers: dict[str, str] | None = None,
         **params: Any) -> Answer:
    """A client's GET (unsigned, no cookie)."""
    return replica.call("GET", path(method, **params), headers=headers, signed=False,
                        cookies=False)


def valid_xml(answer: Answer) -> ET.Element:
    """The answer's XML, after checking it is a 200 the schema accepts."""
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/xml"), answer.headers
    schema().validate(answer.body.decode("utf-8"))
    return ET.fromstring(answer.body)


def ok_xml(answer: Answer) -> ET.Element:
    root = valid_xml(answer)
    assert root.get("status") == "ok", answer.body
    return root


def error_code(answer: Answer) -> int:
    """The spec's error code of a failed XML answer (validated)."""
    root = valid_xml(answer)
    assert root.get("status") == "failed", answer.body
    found = root.find(f"{NS}error")
    assert found is not None
    return int(found.get("code", "-1"))


def json_of(answer: Answer) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    found: dict[str, Any] = json.loads(answer.body)["subsonic-response"]
    return found


def upload_song(replica: InMemoryReplica, tmp: Path, seed: int, **tags: Any) -> dict[str, Any]:
    """A small WAV of its own bytes (``seed``) uploaded with ``tags`` as query overrides."""
    wav = make_wav(tmp / f"song-{seed}.wav", 8192 + 4 * seed, seed=seed)
    answer = replica.upload(wav.read_bytes(), query="?" + urlencode(tags) if tags else "")
    assert answer.status == 201, answer.body
    song: dict[str, Any] = answer.json()["song"]
    return song
