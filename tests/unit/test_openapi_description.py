"""docs/openapi.yaml: a valid OpenAPI 3.1 description that describes every route of the
replica's public API and of its account API (a new route must be described), and that the
proxy serves as written.

tests/integration/test_openapi.py checks it against a real cluster behind the proxy.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31

from distpotify.api.auth import AuthAPI
from distpotify.api.covers import CoversAPI
from distpotify.api.parsing import IdConverter, IndexConverter
from distpotify.api.public import PublicAPI
from distpotify.model import MAX_INDEX
from proxy.openapi import OPENAPI_YAML, description_json, load_description

ROOT = Path(__file__).resolve().parents[2]
DOCS_YAML = ROOT / "docs" / "openapi.yaml"

# What the proxy answers itself (proxy/site.py), not a replica's route.
PROXY_PATHS = {("/proxy/status", "get"), ("/openapi.json", "get")}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def description() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCS_YAML.read_text())
    return loaded


def operations(description: dict[str, Any], tag: str | None = None) -> set[tuple[str, str]]:
    """(path, method) of each operation; ``tag``: only those with that tag."""
    return {
        (path, method)
        for path, item in description["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and (tag is None or tag in operation.get("tags", ()))
    }


def klein_routes(*apps: Any) -> set[tuple[str, str]]:
    """(path, method) of every route of the Klein classes ``apps`` (PublicAPI and AuthAPI by
    and CoversAPI by default), the path written as OpenAPI writes it."""
    routes = set()
    rules = [rule for api in (apps or (PublicAPI, AuthAPI, CoversAPI))
             for rule in api.app.url_map.iter_rules()]
    for rule in rules:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods or ()
                   if method not in ("HEAD", "OPTIONS")}
    return routes


def test_docs_openapi_yaml_is_the_file_the_proxy_serves() -> None:
    assert DOCS_YAML.resolve() == OPENAPI_YAML
    assert json.loads(description_json()) == load_description(DOCS_YAML)


def test_it_is_valid_openapi_3_1(description: dict[str, Any]) -> None:
    assert description["openapi"].startswith("3.1.")
    errors = [f"{e.json_path}: {e.message}"
              for e in Draft202012Validator(OPENAPI_31).iter_errors(description)]
    assert errors == []
    schemathesis.openapi.from_dict(description).validate()  # its own checks too


def test_the_validation_would_catch_a_broken_description(description: dict[str, Any]) -> None:
    broken = copy.deepcopy(description)
    broken["paths"]["/songs"]["get"]["responses"]["200"]["headers"] = {"$ref": "#/x"}

    assert list(Draft202012Validator(OPENAPI_31).iter_errors(broken))


def test_every_route_of_the_public_and_account_apis_is_described(
        description: dict[str, Any]) -> None:
    assert klein_routes() - operations(description) == set(), \
        "describe the new route in docs/openapi.yaml"


def test_nothing_is_described_that_nothing_answers(description: dict[str, Any]) -> None:
    assert operations(description) - klein_routes() == PROXY_PATHS


def test_the_account_routes_are_the_account_apps_and_tagged_accounts(
        description: dict[str, Any]) -> None:
    accounts = operations(description, tag="accounts")

    assert accounts == klein_routes(AuthAPI)
    assert {("/auth/login", "post"), ("/users/{user_id}", "delete")} <= accounts
    assert all(description["paths"][path][method]["tags"] == ["accounts"]
               for path, method in accounts)
    assert not any("x-distpotify-planned" in operation
                   for item in description["paths"].values() for operation in item.values()
                   if isinstance(operation, dict))
    schemes = description["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer",
                                 "bearerFormat": "JWT"}
    assert schemes["session"] == {**schemes["session"], "type": "apiKey", "in": "cookie",
                                  "name": "distpotify_session"}


def test_the_open_account_routes_need_no_session(description: dict[str, Any]) -> None:
    open_routes = {(path, method) for path, method in operations(description, tag="accounts")
                   if description["paths"][path][method].get("security") == [{}]}

    assert open_routes == {("/auth/setup", "post"), ("/auth/login", "post"),
                           ("/auth/logout", "post")}


def test_path_parameters_follow_the_routes_converters(description: dict[str, Any]) -> None:
    ids = description["components"]["schemas"]["Id"]["pattern"]
    assert ids == f"^{IdConverter.regex}$"
    index = description["paths"]["/songs/{song_id}/chunks/{index}"]["parameters"][1]
    assert index["schema"]["maximum"] == MAX_INDEX - 1
    assert re.fullmatch(IndexConverter.regex, str(index["schema"]["maximum"]))
