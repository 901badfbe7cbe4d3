"""``distpotify-cluster`` (what ``make run`` runs): three replicas and the proxy on this machine.

Replicas 1-3 on 127.0.0.1 (HTTP 8001-8003, AMP 9001-9003, heartbeats on interface 127.0.0.1
with TTL 0, so nothing leaves the machine), data and logs under ./data/, the proxy on 8080.
The replicas share the cluster key ./data/cluster.key, made (owner-only) on first use. The
first start also makes the first admin: a random password, saved owner-only in
./data/admin.password, handed to the replicas as DISTPOTIFY_ADMIN_PASSWORD. It prints where
to go and how to log in, offers demo tracks (made here, never downloaded) while the library
is empty, and stops every process it started on Ctrl-C.
"""
# test-case-name: tests.unit.test_cli_cluster, tests.integration.test_cli_cluster

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from distpotify.cli.demo import DEMOS, demo_file
from distpotify.cli.keygen import key_file_text
from distpotify.cli.processes import (
    Child,
    ChildError,
    ProxyCommand,
    ReplicaCommand,
    Supervisor,
)

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
ADMIN = "admin"  # the first admin's name (distpotify/accounts.py FIRST_ADMIN)
ADMIN_PASSWORD = "DISTPOTIFY_ADMIN_PASSWORD"
METRICS_TOKEN = "DISTPOTIFY_METRICS_TOKEN"
LOGIN_TIMEOUT = 30.0
WATCH_INTERVAL = 0.5  # how often the running launcher looks at its children (and the terminal)


@attrs.frozen
class Layout:
    """Where everything listens and lives; the defaults: docs/architecture.md section 1."""

    data: Path = Path("data")
    http_ports: tuple[int, ...] = (8001, 8002, 8003)
    amp_ports: tuple[int, ...] = (9001, 9002, 9003)
    proxy_port: int = 8080
    cluster: str = "distpotify"
    multicast_port: int = 7946
    auth: bool = True  # --auth on every process

    @property
    def key_file(self) -> Path:
        return self.data / "cluster.key"

    @property
    def password_file(self) -> Path:
        return self.data / "admin.password"

    @property
    def auth_flag(self) -> tuple[str, str]:
        return ("--auth", "on" if self.auth else "off")

    def replica_log(self, index: int) -> Path:
        return self.data / f"node{index + 1}.log"

    def replica_command(self, index: int) -> list[str]:
        node_id = index + 1
        return ReplicaCommand(
            node_id=node_id, data_dir=self.data / f"node{node_id}", host=HOST,
            advertise_host=HOST, http_port=self.http_ports[index],
            amp_port=self.amp_ports[index], cluster=self.cluster,
            cluster_size=len(self.http_ports), multicast_port=self.multicast_port,
            multicast_interface=HOST, multicast_ttl=0,
            cluster_key_file=self.key_file, extra=self.auth_flag,
        ).argv(logfile=self.replica_log(index))

    def proxy_log(self) -> Path:
        return self.data / "proxy.log"

    def proxy_command(self) -> list[str]:
        backends = [f"{HOST}:{port}" for port in self.http_ports]
        return ProxyCommand(backends=backends, host=HOST, port=self.proxy_port,
                            extra=("--cluster-key-file", str(self.key_file), *self.auth_flag)
                            ).argv(logfile=self.proxy_log())


def ensure_key_file(path: Path) -> bool:
    """Make a new cluster key file at PATH, readable by its owner only, unless there is one;
    whether it was made."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(key_file_text())
    return True


def make_admin_password(path: Path) -> str:
    """A new random password for the first admin, saved at PATH readable by its owner only."""
    password = secrets.token_urlsafe(15)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an earlier try keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def read_admin_password(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def log_in(port: int, password: str, timeout: float = LOGIN_TIMEOUT) -> str | None:
    """A session token of the first admin, once the leader has made it; None if the password
    is refused for ``timeout`` seconds (changed since, or never made)."""
    body = json.dumps({"username": ADMIN, "password": password}).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, answer = _http(port, "POST", "/auth/login", body,
                                   {"Content-Type": "application/json"}, timeout=5)
        except (OSError, http.client.HTTPException):
            status, answer = 0, b""
        if status == 200:
            token: str = json.loads(answer)["token"]
            return token
        # 401 before the leader has made the account; 429 once the proxy counts too many
        if status == 429 or time.monotonic() >= deadline:
            return None
        time.sleep(1.0)


def add_demos(port: int, say: Any = print, token: str | None = None) -> int:
    """Make and upload the demo tracks through the proxy; how many were stored."""
    stored = 0
    with tempfile.TemporaryDirectory(prefix="distpotify-demo-") as tmp:
        for demo in DEMOS:
            path, content_type = demo_file(demo, Path(tmp))
            query = "&".join(f"{k}={v.replace(' ', '%20')}" for k, v in
                             (("title", demo.title), ("artist", demo.artist),
                              ("album", demo.album)))
            status, body = _http(port, "POST", f"/songs?{query}", path.read_bytes(),
                                 {"Content-Type": content_type, **_bearer(token)},
                                 timeout=120)
            if status in (200, 201):
                stored += 1
                say(f"  added {demo.title!r} ({content_type}, {path.stat().st_size} bytes)")
            else:
                say(f"  could not add {demo.title!r}: {status} {body[:200]!r}")
    return stored


# ---------------------------------------------------------------- the running cluster


def _http(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def busy_ports(layout: Layout) -> list[int]:
    busy = []
    for port in (*layout.http_ports, *layout.amp_ports, layout.proxy_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                busy.append(port)
    return busy


def cluster_view(layout: Layout, token: str | None = None) -> dict[str, Any] | None:
    """The proxy's /proxy/status once it knows a leader and every replica, else None;
    ``token``: the --metrics-token this tool gave the proxy (--auth on)."""
    try:
        status, body = _http(layout.proxy_port, "GET", "/proxy/status", headers=_bearer(token))
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    view: dict[str, Any] = json.loads(body)
    healthy = [b for b in view["backends"] if b["healthy"]]
    ready = view["leader"] is not None and len(healthy) >= len(layout.http_ports)
    return view if ready else None


def library_size(layout: Layout, token: str | None = None) -> int | None:
    try:
        status, body = _http(layout.proxy_port, "GET", "/songs?limit=1", headers=_bearer(token))
    except (OSError, http.client.HTTPException):
        return None
    return int(json.loads(body)["total"]) if status == 200 else None


def banner(layout: Layout, view: dict[str, Any], new_password: str | None = None) -> str:
    """What to open, and how to log in: ``new_password`` is the first admin's, made by this
    start (printed once); on later starts the banner names its file."""
    proxy = f"http://{HOST}:{layout.proxy_port}"
    roles = {b["http"]: (b["node_id"], b["role"]) for b in view["backends"]}
    if new_password is not None:
        login = (f"user {ADMIN}, password {new_password} at {proxy}/ (saved in"
                 f" {layout.password_file})")
    else:
        login = f"user {ADMIN}, the password in {layout.password_file} (made on the first start)"
    lines = [
        "",
        f"Distpotify is running: {len(layout.http_ports)} replicas and the proxy.",
        f"  web player     {proxy}/",
        f"  log in         {login}",
        f"  cluster view   {proxy}/proxy/status" + (" (admins)" if layout.auth else ""),
    ]
    # With accounts, scripts log in first and send the admin's token with every request.
    bearer = ""
    if layout.auth:
        body = (f'{{\\"username\\": \\"{ADMIN}\\",'
                f' \\"password\\": \\"$(cat {layout.password_file})\\"}}')
        lines.append(
            f"  token          TOKEN=$(curl -s -H 'Content-Type: application/json' -d \"{body}\""
            f" {proxy}/auth/login"
            " | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"token\"])')")
        bearer = '"Authorization: Bearer $TOKEN"'
    lines += [
        "  upload         curl -X POST" + (f" -H {bearer}" if bearer else "")
        + f" -H 'Content-Type: audio/mpeg' --data-binary @song.mp3 {proxy}/songs",
        "  play           ffplay" + (f" -headers {bearer}" if bearer else "")
        + f" {proxy}/songs/<id>/stream",
        "  import folder  "
        + (f'DISTPOTIFY_PASSWORD="$(cat {layout.password_file})" ' if layout.auth else "")
        + f"{script('distpotify-import')} ~/Music --server {proxy}"
        + (f" --user {ADMIN}" if layout.auth else ""),
    ]
    for port in layout.http_ports:
        node_id, role = roles.get(f"http://{HOST}:{port}", ("?", "?"))
        lines.append(f"  replica {node_id}      http://{HOST}:{port}/status ({role})")
    lines += [
        "  accounts       "
        + ("--auth on: the library needs a login" if layout.auth else
           "--auth off: the library is open to anyone who reaches this machine's ports"),
        f"  logs           {layout.data}/node<N>.log, {layout.data}/proxy.log",
        "Kill any replica while a song plays: the proxy carries on. Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def script(name: str) -> str:
    """How to run one of this package's commands from here: its name when the shell finds
    it, else its path beside this Python (``.venv/bin/...`` under ``make run``)."""
    if shutil.which(name):
        return name
    path = Path(sys.executable).with_name(name)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def want_demos(choice: bool | None) -> bool:
    if choice is not None:
        return choice
    if not sys.stdin.isatty():
        print("The library is empty; `distpotify-cluster --demo` adds a few demo tracks.")
        return False
    try:
        answer = input("The library is empty. Add 3 demo tracks made on this machine? [Y/n] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("", "y", "yes")


def run(layout: Layout, demo: bool | None) -> int:
    busy = busy_ports(layout)
    if busy:
        print(f"distpotify-cluster: port(s) {', '.join(map(str, busy))} on {HOST} already in"
              " use (another cluster running?)", file=sys.stderr)
        return 1
    first = not layout.data.exists()
    layout.data.mkdir(parents=True, exist_ok=True)
    if ensure_key_file(layout.key_file):
        print(f"made the cluster key {layout.key_file} (every replica of this cluster uses it)")
    # Only a new cluster gets the password: later starts find the admin in the replicas' data.
    new_password = make_admin_password(layout.password_file) if first else None
    # This run's own key to the cluster views it waits on, whatever --auth says; in the
    # environment, not on command lines every user of the machine can read.
    metrics_token = secrets.token_urlsafe(24)
    env = {METRICS_TOKEN: metrics_token}
    replica_env = {**env, ADMIN_PASSWORD: new_password} if new_password else env
    supervisor = Supervisor()

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(len(layout.http_ports)):
            supervisor.start(f"replica {index + 1}", layout.replica_command(index),
                             layout.replica_log(index), env=replica_env)
        supervisor.start("proxy", layout.proxy_command(), layout.proxy_log(), env=env)
        print(f"starting {len(layout.http_ports)} replicas and the proxy"
              f" (logs in {layout.data}/) ...")
        try:
            view = supervisor.wait_ready(lambda: cluster_view(layout, metrics_token),
                                         timeout=READY_TIMEOUT,
                                         what="the cluster (a leader, every replica)",
                                         interval=0.2)
        except ChildError as e:
            print(f"distpotify-cluster: {e}\nsee the logs in {layout.data}/", file=sys.stderr)
            return 1
        print(banner(layout, view, new_password), flush=True)
        token = None
        if layout.auth:  # the library needs a session: the first admin's, if it still logs in
            password = read_admin_password(layout.password_file)
            token = log_in(layout.proxy_port, password) if password else None
        if library_size(layout, token) == 0 and want_demos(demo):
            print(f"added {add_demos(layout.proxy_port, token=token)} demo tracks")
        print("running; Ctrl-C stops everything", flush=True)
        interactive = sys.stdin is not None and sys.stdin.isatty()
        down: list[Child] = []
        while True:
            for child in supervisor.exited():
                down.append(child)
                print(child.exit_message(restartable=interactive), flush=True)
            if not (down and interactive):
                time.sleep(WATCH_INTERVAL)
                continue
            line = typed(sys.stdin, WATCH_INTERVAL)
            if line is None:  # the terminal is gone: say how to start them by hand
                interactive = False
                for child in down:
                    print(child.exit_message(), flush=True)
            elif line:
                for child in down:
                    supervisor.restart(child)
                    print(f"starting {child.name} again (log {child.log})", flush=True)
                down.clear()
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping ...", flush=True)
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped", flush=True)


def typed(stream: IO[str], timeout: float) -> str | None:
    """The line typed on STREAM within TIMEOUT seconds ("" if none was); None once STREAM has
    ended."""
    if not select.select([stream], [], [], timeout)[0]:
        return ""
    return stream.readline() or None


def _ports(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    default = Layout()
    parser = argparse.ArgumentParser(
        prog="distpotify-cluster",
        description="Run three Distpotify replicas and the proxy on this machine.")
    parser.add_argument("--data", type=Path, default=default.data,
                        help="directory for replica data and logs [default: data]")
    parser.add_argument("--http-ports", type=_ports, default=default.http_ports,
                        help="replica HTTP ports [default: 8001,8002,8003]")
    parser.add_argument("--amp-ports", type=_ports, default=default.amp_ports,
                        help="replica AMP (election) ports [default: 9001,9002,9003]")
    parser.add_argument("--proxy-port", type=int, default=default.proxy_port,
                        help="the proxy's port [default: 8080]")
    parser.add_argument("--cluster", default=default.cluster, help="cluster name")
    parser.add_argument("--multicast-port", type=int, default=default.multicast_port,
                        help="heartbeat UDP port [default: 7946]")
    parser.add_argument("--auth", choices=("on", "off"), default="on",
                        help="passed to every replica and the proxy: on, the library and the"
                             " cluster views need a login; off opens them to anyone who"
                             " reaches this machine's ports, for a trusted machine only"
                             " [default: on]")
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument("--demo", action="store_true", default=None,
                      help="add demo tracks to an empty library without asking")
    demo.add_argument("--no-demo", dest="demo", action="store_false",
                      help="never add demo tracks")
    args = parser.parse_args(argv)
    if len(args.http_ports) != len(args.amp_ports) or not args.http_ports:
        parser.error("--http-ports and --amp-ports need the same number of ports")
    layout = Layout(args.data, args.http_ports, args.amp_ports, args.proxy_port, args.cluster,
                    args.multicast_port, auth=args.auth == "on")
    return run(layout, args.demo)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
