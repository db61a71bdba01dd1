"""The benchmark backend: a small, fast HTTP/1.1 keep-alive server (``python -m atls_proxy.bench.backend``).

It answers ``GET /small`` with a 13-byte body and ``GET /bulk`` with 1 MiB, from bytes prepared
once, keeps connections open unless the request says ``Connection: close`` (then it closes after
the response, which is how wrk and the attested generator make one connection per request), and
answers anything else with 404. It is an ``asyncio.Protocol`` on uvloop when available: no streams,
no per-request allocation beyond slicing the input buffer, so it costs far less per request than a
TLS proxy in front of it. Run as a child of ``atls-proxy bench``, pinned with the load generator
(never on the proxy's core); it prints ``PORT <n>`` on stdout once listening and exits on SIGTERM.

Requests are not pipelined by our generators or wrk, but several requests in one read are answered
in order anyway. Bodies of requests are not supported (GET only): a request carrying
``Content-Length`` or ``Transfer-Encoding`` gets 400 and the connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import cast

SMALL_BODY = b"hello, world\n"
BULK_SIZE = 1024 * 1024
# Longest request head accepted; a longer one gets 431 and the connection is closed.
MAX_HEAD = 16 * 1024


def _response(status: str, body: bytes, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("ascii") + b"\r\n" + body


_BULK_BODY = bytes(i % 251 for i in range(BULK_SIZE))
RESPONSES: dict[bytes, tuple[bytes, bytes]] = {
    path: (_response("200 OK", body), _response("200 OK", body, close=True))
    for path, body in ((b"/small", SMALL_BODY), (b"/bulk", _BULK_BODY))
}
NOT_FOUND = _response("404 Not Found", b"not found\n", close=True)
BAD_REQUEST = _response("400 Bad Request", b"bad request\n", close=True)
TOO_LARGE = _response("431 Request Header Fields Too Large", b"too large\n", close=True)


class HTTPBackend(asyncio.Protocol):
    """One connection: parse request heads, answer from the prepared responses."""

    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    t.write(TOO_LARGE)
                    t.close()
                    buf = b""
                self.buf = buf
                return
            head = buf[:end]
            buf = buf[end + 4 :]
            answer, close = self._answer(head)
            t.write(answer)
            if close:
                t.close()
                self.buf = b""
                return

    @staticmethod
    def _answer(head: bytes) -> tuple[bytes, bool]:
        line, _, fields = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
            return BAD_REQUEST, True
        lower = fields.lower()
        if b"content-length:" in lower or b"transfer-encoding:" in lower:
            return BAD_REQUEST, True
        close = b"connection: close" in lower or parts[2] == b"HTTP/1.0"
        pair = RESPONSES.get(parts[1])
        if pair is None:
            return NOT_FOUND, True
        return pair[1] if close else pair[0], close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTPBackend, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="atls-proxy benchmark backend (loopback only)")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(serve("127.0.0.1", args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
