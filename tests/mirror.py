"""A tiny HTTP mirror on 127.0.0.1 for download tests: serves chosen bytes, counts requests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Mirror:
    """Files served under ``/<prefix>/<name>``; a prefix can be made to fail with a status."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.failing: dict[str, int] = {}
        self.truncate: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.port = 0

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}/"


@contextmanager
def serve(mirror: Mirror) -> Iterator[Mirror]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            _, prefix, name = self.path.split("/", 2)
            mirror.requests[self.path] += 1
            if prefix in mirror.failing:
                self.send_error(mirror.failing[prefix])
                return
            if name not in mirror.files:
                self.send_error(404)
                return
            body = mirror.files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # A truncated transfer announces the full length but stops halfway.
            self.wfile.write(body[: len(body) // 2] if name in mirror.truncate else body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    mirror.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
