"""A fault-injecting HTTP proxy for an S3 endpoint (moto's server in `make chaos`): it forwards each request and,
at a set rate, drops the connection without an answer, answers 503 SlowDown or 500 InternalError, or answers late.

    proxy = FaultProxy("http://127.0.0.1:PORT", rate=0.05, seed=0).start()
    ... point storage.endpoint_url at proxy.url ...
    proxy.stop(); proxy.counts  # {"requests": ..., "drop": ..., "503": ..., "500": ..., "slow": ...}

A dropped or 5xx request is never forwarded, so the store never half-applies it; a slow one is forwarded after
`delay_s` (shorter than any client's read timeout: it tests patience, not timeouts). It binds 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULTS = ("drop", "503", "500", "slow")
ERRORS = {"503": (503, "SlowDown", "Please reduce your request rate."),
          "500": (500, "InternalError", "We encountered an internal error. Please try again.")}
# Hop-by-hop headers are the proxy's own business; Expect is answered here (the body is read before forwarding).
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "expect"}


class FaultProxy:
    """A threaded proxy in front of `upstream`; each request draws one fault with probability `rate` (the four
    kinds equally likely unless `faults` names fewer). `counts` holds requests seen and faults injected."""

    def __init__(self, upstream: str, *, rate: float, seed: int = 0, delay_s: float = 1.0,
                 faults: tuple[str, ...] = FAULTS) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown or not 0 <= rate <= 1:
            raise ValueError(f"faults must be among {FAULTS} (not {sorted(unknown)}) and 0 <= rate <= 1")
        target = urlparse(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.rate, self.delay_s, self.faults = rate, delay_s, faults
        self.counts: collections.Counter = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self) -> str | None:
        """The fault for the next request (None: forward it as it is), counted."""
        with self._lock:
            self.counts["requests"] += 1
            fault = self._rng.choice(self.faults) if self._rng.random() < self.rate else None
            if fault:
                self.counts[fault] += 1
        return fault

    def injected(self) -> int:
        return sum(self.counts[f] for f in FAULTS)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect; every answer carries its length

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):  # the client gave up on this connection: nothing to answer
                self.close_connection = True

        def _relay(self) -> None:
            body = self._read_body()
            fault = proxy.draw()
            if fault == "drop":
                self.close_connection = True  # closed with no status line: the client sees the server hang up
                return
            if fault in ERRORS:
                self._error(*ERRORS[fault])
                return
            if fault == "slow":
                threading.Event().wait(proxy.delay_s)
            self._forward(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> None:
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                # The Host header goes through unchanged: the client signed it.
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                        upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                response = upstream.getresponse()
                payload = response.read()
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_HEADERS and (name.lower() != "content-length"
                                                            or self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD":  # a HEAD answer states the object's length, and carries no body
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                upstream.close()

        def _error(self, status: int, code: str, message: str) -> None:
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                       f"</Message><RequestId>tessera-chaos</RequestId></Error>").encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
