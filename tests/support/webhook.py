"""A local HTTP webhook receiver for notification tests: records every POST, answers with a chosen status."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DRIP_BYTES = 60


@dataclass
class Receiver:
    """What a running receiver got; set ``status``, ``delay`` or ``drip`` to change how it answers.

    ``drip``: seconds between the bytes of an answer that ends, unfinished, after ``DRIP_BYTES``
    bytes (a receiver that keeps every socket read under its timeout); ``dripped`` counts the bytes sent.
    """

    url: str
    status: int = 200
    delay: float = 0.0
    drip: float = 0.0
    dripped: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)  # {"path", "content_type", "json"}


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.received.append(
                {"path": self.path, "content_type": self.headers.get("Content-Type"), "json": json.loads(body)}
            )
            time.sleep(receiver.delay)
            if receiver.drip:
                self._drip()
                return
            self.send_response(receiver.status)
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may have given up (timeout tests)
                self.wfile.write(b"ok")

        def _drip(self) -> None:
            with contextlib.suppress(OSError):  # or until the client hangs up
                for byte in itertools.islice(itertools.cycle(b"HTTP/1.1 200 OK\r\nX-Slow: "), DRIP_BYTES):
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    receiver.dripped += 1
                    time.sleep(receiver.drip)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a handler still sleeping (timeout tests) does not hold up the shutdown
    server.block_on_close = False
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
