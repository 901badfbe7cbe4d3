"""The ``subsonic-response`` envelope: a handler's neutral tree (call.py) rendered as the spec's
XML (the default), JSON (``f=json``) or JSONP (``f=jsonp&callback=name``), ok or failed.
"""
# test-case-name: tests.unit.test_subsonic_respond

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import attrs

from distpotify import __version__

NAMESPACE = "http://subsonic.org/restapi"
API_VERSION = "1.16.1"
SERVER_TYPE = "distpotify"
# XML 1.0 has no way to write these (control characters, lone surrogates, U+FFFE/F): a tag
# holding one is shown with U+FFFD rather than making the whole answer unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A JSONP callback is a (dotted) JavaScript name, nothing that could be script of its own.
_CALLBACK = re.compile(r"[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*")
MAX_CALLBACK = 100

XML_TYPE = b"text/xml; charset=utf-8"
JSON_TYPE = b"application/json; charset=utf-8"
JSONP_TYPE = b"application/javascript; charset=utf-8"


@attrs.frozen
class Format:
    """How to render: "xml", "json" or "jsonp" (with its ``callback``)."""

    name: str = "xml"
    callback: str | None = None


XML = Format()


def envelope(status: str) -> dict[str, Any]:
    """The attributes every response carries (OpenSubsonic adds the last three)."""
    return {"status": status, "version": API_VERSION, "type": SERVER_TYPE,
            "serverVersion": _server_version(), "openSubsonic": True}


def _server_version() -> str:
    # The OpenSubsonic schema wants three numbers; a local build's "0.1.0.dev3+g..." keeps them.
    match = re.match(r"\d+\.\d+\.\d+", __version__)
    return match.group(0) if match else "0.0.0"


def render(fmt: Format, payload: Mapping[str, Any], status: str = "ok") -> tuple[bytes, bytes]:
    """The body and Content-Type of a response holding ``payload``."""
    tree = {**envelope(status), **payload}
    if fmt.name == "xml":
        return _xml(tree), XML_TYPE
    text = json.dumps({"subsonic-response": _json(tree)}, ensure_ascii=False,
                      separators=(",", ":"))
    if fmt.name == "jsonp" and fmt.callback:
        return f"{fmt.callback}({text});".encode("utf-8", "replace"), JSONP_TYPE
    return text.encode("utf-8", "replace"), JSON_TYPE


def error(fmt: Format, code: int, message: str) -> tuple[bytes, bytes]:
    return render(fmt, {"error": {"code": code, "message": message}}, "failed")


def format_of(f: str | None, callback: str | None) -> Format | None:
    """The Format the ``f`` and ``callback`` parameters ask for; None if they make none (an
    unknown ``f``, or jsonp without a usable callback): answer error 0 in XML then."""
    if f is None or f == "" or f == "xml":
        return XML
    if f == "json":
        return Format("json")
    if f == "jsonp" and callback and len(callback) <= MAX_CALLBACK \
            and _CALLBACK.fullmatch(callback):
        return Format("jsonp", callback)
    return None


# XML


def _xml(tree: Mapping[str, Any]) -> bytes:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>']
    parts += _element("subsonic-response", tree, namespace=NAMESPACE)
    return "".join(parts).encode("utf-8")


def _element(name: str, node: Mapping[str, Any], namespace: str | None = None
             ) -> Iterator[str]:
    attributes = [f" xmlns={quoteattr(namespace)}"] if namespace else []
    children: list[tuple[str, Any]] = []
    text = None
    for key, value in node.items():
        if value is None:
            continue
        if key == "value":
            text = _scalar(value)
        elif isinstance(value, Mapping | list):
            children.append((key, value))
        else:
            attributes.append(f" {key}={quoteattr(_clean(_scalar(value)))}")
    if not children and text is None:
        yield f"<{name}{''.join(attributes)}/>"
        return
    yield f"<{name}{''.join(attributes)}>"
    if text is not None:
        yield escape(_clean(text))
    for key, value in children:
        if isinstance(value, Mapping):
            yield from _element(key, value)
            continue
        for item in value:
            if isinstance(item, Mapping):
                yield from _element(key, item)
            elif item is not None:
                yield f"<{key}>{escape(_clean(_scalar(item)))}</{key}>"
    yield f"</{name}>"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


# JSON


def _json(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _json(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [_json(item) for item in node if item is not None]
    if isinstance(node, str):
        return node.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    return node
