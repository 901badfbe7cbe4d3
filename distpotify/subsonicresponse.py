"""The ``subsonic-response`` envelope: a handler's neutral tree (subsonic/call.py) rendered as
the spec's XML (the default), JSON (``f=json``) or JSONP (``f=jsonp&callback=name``), ok or
failed. Shared with the proxy, which answers a Subsonic client in it when no replica can.
"""
# test-case-name: tests.unit.test_subsonic_api, tests.unit.test_proxy_rest

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

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
    # allow_nan=False: NaN and Infinity are no JSON a client could parse (ValueError instead).
    text = json.dumps({"subsonic-response": _json(tree)}, ensure_ascii=False,
                      separators=(",", ":"), allow_nan=False)
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
    _element(parts, "subsonic-response", tree, f' xmlns="{NAMESPACE}"')
    # Markup is ASCII: what XML cannot carry can only be in the text, cleaned here at once.
    return _clean("".join(parts)).encode("utf-8")


def _element(parts: list[str], name: str, node: Mapping[str, Any], head: str = "") -> None:
    """Append element ``name`` holding ``node`` to ``parts`` (the hot path of a long list:
    a page of 500 songs is 15,000 attributes)."""
    attributes = [head]
    children: list[tuple[str, Any]] = []
    text = None
    for key, value in node.items():
        kind = type(value)
        if value is None:
            continue
        if key == "value":
            text = _scalar(value)
        elif kind is str:
            attributes.append(f' {key}="{_attribute(value)}"')
        elif kind is int:
            attributes.append(f' {key}="{value}"')
        elif kind is float:
            if not math.isfinite(value):  # "nan" is no xs:double; an error 0 instead
                raise ValueError(f"{key} is not a finite number")
            attributes.append(f' {key}="{value}"')
        elif kind is dict or kind is list or isinstance(value, Mapping):
            children.append((key, value))
        else:
            attributes.append(f' {key}="{_attribute(_scalar(value))}"')
    if not children and text is None:
        parts.append(f"<{name}{''.join(attributes)}/>")
        return
    parts.append(f"<{name}{''.join(attributes)}>")
    if text is not None:
        parts.append(escape(text))
    for key, value in children:
        if isinstance(value, Mapping):
            _element(parts, key, value)
            continue
        for item in value:
            if isinstance(item, Mapping):
                _element(parts, key, item)
            elif item is not None:
                parts.append(f"<{key}>{escape(_scalar(item))}</{key}>")
    parts.append(f"</{name}>")


# What an attribute value in double quotes must escape: &, <, >, the quote, and the white
# space an XML parser would otherwise normalise to spaces.
_SPECIAL = re.compile('[&<>"\n\r\t]')
_ATTRIBUTE = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _attribute(text: str) -> str:
    return escape(text, _ATTRIBUTE) if _SPECIAL.search(text) else text


def _scalar(value: Any) -> str:
    if value is True or value is False:
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
