"""The import graph of the whole tree, read with ``ast``: no circle anywhere, the replica's
layers, the proxy's one shared layer, and runtime packages that never import test code.

Every import counts, also those inside functions or under ``if``: an import moved into a
function to dodge a circle still makes one. The rules are the tables just below; adjust them
there when a module moves, and give every exception its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pytest

# Shared with the proxy (the layer at the bottom of the replica's), so it imports nothing else
# of distpotify.
# zerocopy: the replica's sendfile sender and the proxy's splice relay both write to a
# twisted.web connection's socket directly, and need the same plain-socket test and drain wake.
SHARED = [
    "distpotify.wire", "distpotify.options", "distpotify.bodylimit", "distpotify.periodic",
    "distpotify.httpchannel",
    # a full disk, as a write meets it: the replica's store and both spools of request bodies
    "distpotify.diskfull",
    # the cluster key and the keys derived from it: the proxy checks user tokens (issue 17)
    "distpotify.keys",
    # the Idempotency-Keys the proxy makes (UUIDv7), whose time the replica stores them by
    "distpotify.keytime",
    # a failure under an HTTP request in words: the peer client's, the proxy's /status polls
    "distpotify.httpfailures",
    # accounts: password hashes, session tokens, the login limit and the user directory, for
    # the proxy as for the replica (issue 17)
    "distpotify.auth.*",
    # signed requests: replicas sign to each other, the proxy signs its /status polls (issue 17)
    "distpotify.signing",
    "distpotify.zerocopy",
    # the lean HTTP/1.1 client: the proxy's reads, the leader's pushes to its followers
    "distpotify.leanclient",
    # the Subsonic methods that write: the proxy sends them to the leader (issue 18)
    "distpotify.subsonicmethods",
    # the subsonic-response envelope: the proxy answers a Subsonic client in it when no
    # replica can; and the package itself, whose version the envelope names (serverVersion)
    "distpotify.subsonicresponse", "distpotify",
    # start-up objects frozen out of full garbage collections, by both twistd plugins
    "distpotify.gcfreeze",
]

# The replica's layers, top to bottom: a module may import its own layer and the layers below,
# never one above. "pkg.*" names a package and everything in it; a plain name, one module.
LAYERS: list[tuple[str, list[str]]] = [
    # Command-line tools users run (distpotify-cluster, ...).
    ("tools", ["distpotify.cli.*"]),
    ("tap", ["distpotify.tap"]),
    ("service", ["distpotify.service"]),
    # The replica's HTTP APIs: its own, and the Subsonic API at /rest (issue 18).
    ("api", ["distpotify.api.*", "distpotify.subsonic.*"]),
    # What a replica does: the election, replication, the library (with its upload path) and
    # the accounts (issue 17).
    ("domain", [
        "distpotify.cluster.*", "distpotify.replication.*", "distpotify.library",
        "distpotify.upload", "distpotify.accounts", "distpotify.userstate",
        # cover art: which picture, its bytes resized, the covers users set (issue 18)
        "distpotify.covers",
    ]),
    # The store, and the catalog's derived artist and album ids (stored beside each song).
    ("store", ["distpotify.store.*", "distpotify.catalog"]),
    # Records and small leaves that import no other layer: the data model and errors, the
    # frozen configuration, the Protocol a library's leader check satisfies, audio probing,
    # /metrics rendering, the detach helper, the test-only failpoints (part of the
    # configuration, hit from every layer above), signed replica-to-replica requests (made by
    # replication's client, checked by the api), and idempotency keys and outcomes (records
    # the store keeps and the API answers).
    ("model", [
        "distpotify.model", "distpotify.errors", "distpotify.config", "distpotify.leadership",
        "distpotify.media", "distpotify.metrics", "distpotify.detach", "distpotify.failpoints",
        "distpotify.idempotency",
        # Pillow: is it a picture we keep, and a resized copy (media.py at upload, covers.py)
        "distpotify.images",
    ]),
    ("shared", SHARED),
]

# The proxy: of distpotify, it imports the shared layer only. The replica (tools aside) never
# imports the proxy.
PROXY = "proxy.*"
PROXY_MAY_IMPORT = SHARED
MAY_IMPORT_PROXY = {"tools"}

# What a deployment runs, and what it must never import.
RUNTIME = ["distpotify.*", "proxy.*", "twisted.plugins.*"]
NOT_RUNTIME = ["tests.*", "bench.*", "lab.*"]

# Where the tree's Python lives.
SOURCES = ["distpotify", "proxy", "lab", "tests", "bench", "twisted/plugins"]

# Known exceptions, each in a place another change is reshaping, with the reason: imports
# (importer, imported) that close a circle, and imports that break a rule below.
KNOWN_CIRCLES: dict[tuple[str, str], str] = {}
KNOWN_IMPORTS: dict[tuple[str, str], str] = {}

ROOT = Path(__file__).resolve().parents[2]


@attrs.frozen
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def matches(module: str, patterns: Iterable[str]) -> bool:
    return any(
        module == pattern.removesuffix(".*")
        or (pattern.endswith(".*") and module.startswith(pattern[:-1]))
        for pattern in patterns
    )


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS (0 is the top), or None if it has none."""
    for index, (_, patterns) in enumerate(LAYERS):
        if matches(module, patterns):
            return index
    return None


def module_files(root: Path, sources: Iterable[str]) -> dict[str, Path]:
    found = {}
    for source in sources:
        for path in sorted((root / source).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of the tree that importing ``name`` runs last: ``name`` or its parent."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import in ``path`` (at any depth) of a module of the tree."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    scripts = not (path.parent / "__init__.py").exists()  # bench/: siblings by bare name
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import name" imports the submodule pkg.name if there is one.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name, modules)
            if target is None and scripts:
                target = resolve(f"{package}.{name}", modules)
            if target is not None and target != module:
                yield Import(module, target, node.lineno)


def import_graph(root: Path = ROOT, sources: Iterable[str] = SOURCES) -> list[Import]:
    modules = module_files(root, sources)
    return [edge for module, path in modules.items() for edge in imports_of(module, path, modules)]


def circles(edges: Iterable[Import]) -> list[list[Import]]:
    """One circle of imports through each strongly connected group of modules (Tarjan)."""
    out: dict[str, list[Import]] = {}
    for edge in edges:
        out.setdefault(edge.importer, []).append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for edge in out.get(module, []):
            if edge.imported not in index:
                visit(edge.imported)
                low[module] = min(low[module], low[edge.imported])
            elif edge.imported in stack:
                low[module] = min(low[module], index[edge.imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(out):
        if module not in index:
            visit(module)
    return [_circle_in(min(group), group, out) for group in groups]


def _circle_in(start: str, group: set[str], out: dict[str, list[Import]]) -> list[Import]:
    """The shortest chain of imports from ``start`` back to itself inside ``group``."""
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for edge in out.get(module, []):
                if edge.imported == start:
                    return [*paths[module], edge]
                if edge.imported in group and edge.imported not in paths:
                    paths[edge.imported] = [*paths[module], edge]
                    following.append(edge.imported)
        frontier = following
    raise AssertionError(f"no circle through {start}")


def reaches(edges: Iterable[Import], start: str, goal: str) -> bool:
    out: dict[str, list[str]] = {}
    for edge in edges:
        out.setdefault(edge.importer, []).append(edge.imported)
    seen, frontier = {start}, [start]
    while frontier:
        module = frontier.pop()
        if module == goal:
            return True
        for imported in out.get(module, []):
            if imported not in seen:
                seen.add(imported)
                frontier.append(imported)
    return False


def describe(circle: list[Import]) -> str:
    return " -> ".join([f"{edge.importer} (line {edge.line})" for edge in circle]
                       + [circle[0].importer])


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return import_graph()


def unexcused(edges: Iterable[Import]) -> list[str]:
    return [str(edge) for edge in edges if (edge.importer, edge.imported) not in KNOWN_IMPORTS]


# the tree


def test_no_module_is_imported_in_a_circle(graph: list[Import]) -> None:
    found = circles(e for e in graph if (e.importer, e.imported) not in KNOWN_CIRCLES)

    assert not found, "import circles:\n" + "\n".join(describe(c) for c in found)


def test_every_module_of_the_replica_has_a_layer() -> None:
    modules = module_files(ROOT, ["distpotify"])

    assert [m for m in modules if layer_of(m) is None] == [], "place these in LAYERS"


def test_the_replica_imports_only_its_own_layer_and_those_below(graph: list[Import]) -> None:
    upward = [
        edge for edge in graph
        if matches(edge.importer, ["distpotify.*"]) and matches(edge.imported, ["distpotify.*"])
        and (layer_of(edge.imported) or 0) < (layer_of(edge.importer) or 0)
    ]

    assert unexcused(upward) == [], "these import a layer above their own (see LAYERS)"


def test_the_shared_layer_imports_nothing_else_of_distpotify(graph: list[Import]) -> None:
    outside = [edge for edge in graph if matches(edge.importer, SHARED)
               and matches(edge.imported, ["distpotify.*"]) and not matches(edge.imported, SHARED)]

    assert unexcused(outside) == [], "the proxy would get these through the shared layer"


def test_the_proxy_imports_only_the_shared_layer_of_distpotify(graph: list[Import]) -> None:
    replica = [edge for edge in graph if matches(edge.importer, [PROXY])
               and matches(edge.imported, ["distpotify.*"])
               and not matches(edge.imported, PROXY_MAY_IMPORT)]

    assert unexcused(replica) == [], "the proxy may import only SHARED of distpotify"


def test_the_replica_never_imports_the_proxy(graph: list[Import]) -> None:
    proxy = [edge for edge in graph if matches(edge.importer, ["distpotify.*"])
             and matches(edge.imported, [PROXY])
             and LAYERS[layer_of(edge.importer) or 0][0] not in MAY_IMPORT_PROXY]

    assert unexcused(proxy) == [], "the replica runs without the proxy's code"


def test_runtime_packages_import_nothing_from_tests_bench_or_lab(graph: list[Import]) -> None:
    test_code = [edge for edge in graph
                 if matches(edge.importer, RUNTIME) and matches(edge.imported, NOT_RUNTIME)]

    assert unexcused(test_code) == [], "a deployment does not ship these"


def test_every_known_exception_still_happens(graph: list[Import]) -> None:
    """An exception that no longer happens is removed from the table, so it stays true."""
    seen = {(edge.importer, edge.imported) for edge in graph}

    assert [(a, b) for a, b in KNOWN_CIRCLES if (a, b) not in seen or not reaches(graph, b, a)] \
        == [], "these no longer close a circle"
    assert [pair for pair in KNOWN_IMPORTS if pair not in seen] == []


# the reader itself, on a small tree


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_closed_inside_a_function_is_found(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "thing = 1\n\ndef later():\n    from pkg import c\n",
        "pkg/c.py": "import pkg.a\n",
    })

    found = circles(import_graph(tmp_path, ["pkg"]))

    assert [describe(c) for c in found] == [
        "pkg.a (line 1) -> pkg.b (line 4) -> pkg.c (line 1) -> pkg.a"]


def test_relative_imports_and_script_siblings_are_resolved(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "from . import sub\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/x.py": "from ..y import z\nfrom . import w\n",
        "pkg/sub/w.py": "",
        "pkg/y.py": "z = 1\n",
        "scripts/run.py": "from common import helper\nimport os\n",
        "scripts/common.py": "",
    })

    edges = {(e.importer, e.imported) for e in import_graph(tmp_path, ["pkg", "scripts"])}

    assert edges == {("pkg", "pkg.sub"), ("pkg.sub.x", "pkg.y"), ("pkg.sub.x", "pkg.sub.w"),
                     ("scripts.run", "scripts.common")}
