"""A loopback stand-in for the EC2 instance metadata service (IMDSv2), enough for spot notices:
PUT /latest/api/token hands out a token, GET /latest/meta-data/spot/instance-action answers 404
until `interrupt()` is called, then the notice JSON; a GET without the current token gets 401."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImdsStandIn:
    def __init__(self):
        self.notice: dict | None = None
        self.requests: list[tuple[str, str, int]] = []
        self.tokens: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def _send(self, code: int, body: bytes = b"") -> None:
                outer.requests.append((self.command, self.path, code))
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400)
                outer.tokens.append(f"token-{len(outer.tokens) + 1}")
                self._send(200, outer.tokens[-1].encode())

            def do_GET(self):
                if not outer.tokens or self.headers.get("X-aws-ec2-metadata-token") != outer.tokens[-1]:
                    return self._send(401)
                if self.path != "/latest/meta-data/spot/instance-action" or outer.notice is None:
                    return self._send(404)
                self._send(200, json.dumps(outer.notice).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def interrupt(self, action: str = "terminate", time: str = "2026-11-22T01:02:03Z") -> None:
        self.notice = {"action": action, "time": time}

    def revoke_tokens(self) -> None:
        """Make the current token stale (as after its TTL): the next GET gets 401."""
        self.tokens.append("rotated")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
