"""``twistd distpotify-proxy``: the proxy's command-line options and makeService.

Every option also reads ``DISTPOTIFY_<OPTION>`` from the environment; the command line wins.
"""
# test-case-name: tests.unit.test_proxy_tap

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from distpotify.httpchannel import TIMEOUT_OPTIONS
from distpotify.keys import KEYGEN, ClusterKeys, KeyFileError
from distpotify.options import EnvOptions, OptionList, env_parameters, parse_size, parse_switch
from proxy.config import ConfigError, ProxyConfig, parse_backends
from proxy.forwarded import parse_trusted_proxies
from proxy.listen import parse_listen


def load_keys(path: str) -> ClusterKeys:
    """The --cluster-key-file option: its keys, or the one line saying what is wrong."""
    try:
        return ClusterKeys.load(Path(path))
    except KeyFileError as e:
        raise ConfigError(str(e)) from None


# (option, default, help, converter to the ProxyConfig field)
OPTIONS: OptionList = [
    ("port", "8080", "port clients connect to (without --listen)", int),
    ("host", "127.0.0.1", "address the port binds to (without --listen)", str),
    ("listen", None, "where to listen instead of --host/--port: Twisted endpoint descriptions,"
     " comma-separated, such as tcp:8080 or ssl:8443:privateKey=key.pem:certKey=cert.pem",
     parse_listen),
    ("trusted-proxies", "", "addresses or CIDR networks of reverse proxies in front (Caddy,"
     " Traefik) whose X-Forwarded-For and X-Forwarded-Proto are believed", parse_trusted_proxies),
    ("max-connections-per-client", "64", "connections one client address may hold open; 0 for"
     " no cap (trusted proxies are not counted)", int),
    *TIMEOUT_OPTIONS,
    ("backends", None, "replica HTTP addresses, HOST:PORT,... (required; more are learned from"
     " their /status)", parse_backends),
    ("write-hold", "5", "seconds a write waits for a leader during an election", float),
    ("health-max-age", "0.5", "seconds a replica's /status answer counts as fresh", float),
    ("poll-interval", "0.25", "seconds between /status polls of every replica", float),
    ("check-timeout", "0.5", "seconds a /status poll or health check may take", float),
    ("connect-timeout", "2", "seconds to connect to a replica (a busy one's backlog drops SYNs"
     " for 1 s)", float),
    ("response-timeout", "2", "seconds a read waits for a replica's response headers", float),
    ("stall-timeout", "1", "seconds without body bytes (while the client reads) before the"
     " download resumes on another replica", float),
    ("write-timeout", "300", "seconds a write waits for the leader's answer", float),
    ("session-memory", "5", "seconds the proxy remembers a client's last write, so that"
     " client's reads wait for it (read your writes); 0 turns it off", float),
    ("max-upload", "512M", "largest request body the proxy accepts (K/M/G suffixes); larger"
     " ones get 413 before they are read. Keep it at the replicas' --max-upload", parse_size),
    ("splice", "on", "relay GET bodies with splice(2) between plain sockets (Linux) and send"
     " reads with the lean HTTP/1.1 client: on or off (off: the Agent for everything)",
     parse_switch),
    ("web-dir", None, "directory of the web player's static files [default: proxy/web]",
     Path),
    ("cluster-key-file", None, "the replicas' cluster key file: /status polls are signed with"
     f" it (required with --auth on, the default; `{KEYGEN} > cluster.key` makes one)",
     load_keys),
    ("auth", "on", "on, as on the replicas: /proxy/status and /metrics answer admins (and"
     " --metrics-token) only, other requests the replicas decide; off: open to anyone who"
     " reaches the proxy, for a trusted network only", parse_switch),
    ("metrics-token", None, "a bearer token that may read /metrics and /proxy/status"
     " (Prometheus)", str),
]


class Options(EnvOptions):
    synopsis = "--port 8080 --backends HOST:PORT,HOST:PORT,... [options]"
    longdesc = (
        "Run the Distpotify proxy: writes go to the leader, reads round-robin over the "
        "followers, and a download resumes on another replica if the one serving it fails. "
        "Every option can also be set with the environment variable DISTPOTIFY_<OPTION> "
        "(for example DISTPOTIFY_BACKENDS=127.0.0.1:8001,127.0.0.1:8002); the command line "
        "wins over the environment."
    )
    optParameters = env_parameters(OPTIONS)
    option_list = OPTIONS
    required = "backends"
    required_hint = ": HOST:PORT,..."

    def postOptions(self) -> None:
        values = self.converted()
        if "cluster_key_file" in values:
            values["cluster_keys"] = values.pop("cluster_key_file")
        try:
            self.config = ProxyConfig(**values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from distpotify.gcfreeze import freeze_startup_objects
    from proxy.service import ProxyService

    try:
        return ProxyService(options.config, reactor, freeze=freeze_startup_objects)
    except ConfigError as e:
        raise SystemExit(f"distpotify-proxy: {e}") from None
