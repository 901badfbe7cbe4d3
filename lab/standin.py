"""A stand-in replica for exercising the lab itself where ``twistd distpotify`` is missing.

It accepts the replica's command line, answers ``GET /status`` as a lone replica that is no
leader, and refuses everything else with 501, so no scenario can pass on it by accident.
"""
# test-case-name: tests.lab.test_lab

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _handler(node_id: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Served-By", str(node_id))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/status":
                self._answer(200, {
                    "node_id": node_id, "role": "standin", "state": "ACTIVE", "epoch": 0,
                    "leader_id": None, "head": None, "peers": [],
                })
            else:
                self._refuse()

        def _refuse(self) -> None:
            self._answer(501, {"error": "not_implemented",
                               "message": "stand-in replica: only GET /status"})

        do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    args, _replica_only = parser.parse_known_args(argv)
    server = ThreadingHTTPServer((args.host, args.http_port), _handler(args.node_id))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
