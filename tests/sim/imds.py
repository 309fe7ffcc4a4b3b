"""A stand-in for the instance metadata service (IMDSv2 only), one path prefix per simulated node."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandInImds:
    """`http://<host>:<port>/<node>/latest/...`: a token on PUT, the instance-action notice on GET."""

    def __init__(self, host: str):
        self.notices: dict[str, str] = {}
        self.tokens: set[str] = set()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_PUT(self):  # noqa: N802 (http.server's name)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if not self.path.endswith("/latest/api/token") or not ttl:
                    self.send_error(400)
                    return
                token = secrets.token_hex(8)
                imds.tokens.add(token)
                self._reply(200, token.encode())

            def do_GET(self):  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    self.send_error(401)  # IMDSv1 (no token) is refused, as on the stack's instances
                    return
                node = self.path.strip("/").split("/")[0]
                if self.path.endswith("/spot/instance-action") and node in imds.notices:
                    self._reply(200, imds.notices[node].encode())
                else:
                    self.send_error(404)

            def _reply(self, code: int, body: bytes):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def notify(self, node: str) -> None:
        self.notices[node] = json.dumps({"action": "terminate", "time": "2026-01-01T00:02:00Z"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
