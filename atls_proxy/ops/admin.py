"""The admin HTTP listener: health, readiness, Prometheus metrics and a JSON status page.

A deliberately small HTTP/1.1 server on asyncio streams (stdlib only), meant for a loopback or
cluster-internal address, never for the Internet:

    GET /healthz   200 "ok"                         the process runs its event loop
    GET /readyz    200 "ready" | 503 + reasons      ``ready()`` → (ready, reasons), one reason a line
    GET /metrics   the exposition                   ``metrics()`` → (body, content type)
    GET /status    200 JSON                         ``status()`` → a JSON-serialisable dict

``HEAD`` is answered like ``GET`` without the body; another method gets 405 with ``Allow``; an
unknown path 404. One request per connection (every answer carries ``Connection: close``). The
request head is capped (``max_head``, 8 KiB → 431) and must arrive within ``read_timeout`` (5 s
for the whole head, not per read → 408); anything that does not parse gets 400. A callable that
raises gets the client a 500 and the log a traceback; the server carries on. At most
``max_connections`` requests are handled at once. At that limit a new connection takes the place
of the oldest one still waiting for its request head (aborted): idle connections cannot keep the
kubelet's probes out (which would fail liveness and restart the process). Only when every slot
is answering a request is a new connection closed at once.

``sock=`` takes an already-listening socket (socket activation, or a socket inherited from a
supervisor); the server takes ownership and closes it in ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

from atls_proxy.errors import ConfigError
from atls_proxy.proxy.conn import Conn
from atls_proxy.proxy.listener import Listener, peer_name

__all__ = ["AdminServer"]

log = logging.getLogger("atls_proxy.admin")

MAX_HEAD: Final = 8 * 1024
READ_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 10.0
MAX_CONNECTIONS: Final = 64
LINGER_SECONDS: Final = 1.0
# At the connection limit, a connection whose answer has been leaving this long may be closed to
# serve a new one (make_room): a reader that keeps up has long finished.
ANSWER_GRACE: Final = 1.0
ALLOW: Final = "GET, HEAD"

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_TOKEN: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION: Final = re.compile(rb"^HTTP/(\d)\.(\d)$")
_ROUTES: Final = ("/healthz", "/readyz", "/metrics", "/status")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer(Listener):
    """The admin listener. ``start()`` binds (or adopts ``sock``); ``close()`` stops it.

    The accept loop, the connection limit and the cancelling shutdown are the proxy's own
    (``proxy.listener.Listener``); this class serves one HTTP request per connection."""

    limit_check = "admin.max-connections"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ready: Callable[[], tuple[bool, list[str]]],
        status: Callable[[], Mapping[str, object]],
        metrics: Callable[[], tuple[bytes, str]],
        sock: socket.socket | None = None,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_head: int = MAX_HEAD,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(max_connections)
        self.host = host
        self.port = port
        self._ready = ready
        self._status = status
        self._metrics = metrics
        self._sock = sock
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        self.evicted = 0
        # Connections still waiting for their request head, oldest first (dicts keep order).
        self._waiting: dict[Conn, None] = {}
        # Connections being answered, with when the answer started (make_room).
        self._answering: dict[Conn, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> list[tuple[str, int]]:
        """Listen; returns the bound (host, port) addresses. Raises ``ConfigError("admin.listen")``."""
        try:
            await self.listen(self.host, self.port, sock=self._sock)
        except OSError as exc:
            where = _address(self.host, self.port) if self._sock is None else "inherited socket"
            why = exc.strerror or str(exc) or type(exc).__name__
            raise ConfigError(
                "admin.listen", f"cannot listen on {where}: {why} (errno {exc.errno})"
            ) from exc
        assert self._server is not None
        addrs: list[tuple[str, int]] = []
        for s in self._server.sockets:
            name = s.getsockname()
            if isinstance(name, tuple):
                addrs.append((str(name[0]), int(name[1])))
        log.info("admin listening on %s", ", ".join(_address(h, p) for h, p in addrs) or "?")
        return addrs

    async def close(self) -> None:
        """Stop listening and cancel requests in progress."""
        await super().close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # -- one connection ----------------------------------------------------------------------

    async def handle(self, conn: Conn) -> None:
        try:
            await self._serve(conn)
        except Exception:  # never let one request take the listener down
            log.exception("admin request failed")
            conn.transport.abort()

    def make_room(self) -> bool:
        """At the limit, abort the oldest connection still waiting for its request head, or
        lingering after a refused one (neither has an answer pending); failing that, the oldest
        one whose answer has been leaving for ``ANSWER_GRACE`` seconds or more — a client that
        asked for a large /metrics and does not read would otherwise keep its slot for the whole
        write timeout, and enough of them would keep the probes out."""
        victim = next(iter(self._waiting), None)
        if victim is not None:
            del self._waiting[victim]
        else:
            now = time.monotonic()
            victim = next((c for c, t in self._answering.items() if now - t >= ANSWER_GRACE), None)
            if victim is None:
                return False
            del self._answering[victim]
        victim.transport.abort()
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 100 == 0:  # not one line per connection
            log.warning(
                "admin: %d connections open; closed the oldest one still waiting for its "
                "request or not reading its answer (from %s) to serve a new one (%d so far)",
                self.active,
                peer_name(victim),
                self.evicted,
            )
        return True

    async def _serve(self, conn: Conn) -> None:
        head_only = False
        linger = False
        try:
            self._waiting[conn] = None
            try:
                async with asyncio.timeout(self.read_timeout):
                    head = await self._read_head(conn)
            finally:
                self._waiting.pop(conn, None)
            method, path = _parse(head)
            head_only = method == b"HEAD"
            status, ctype, body, extra = self._route(method, path)
        except TimeoutError:
            status, ctype, body, extra = 408, _TEXT, b"request timeout\n", {}
        except _BadRequest as exc:
            status, ctype, body, extra = exc.status, _TEXT, f"{exc}\n".encode(), {}
            linger = True
        except ConnectionError:
            conn.transport.abort()
            return
        answer_started = time.monotonic()  # the grace counts from here, through the close
        self._answering[conn] = answer_started
        try:
            await self._respond(conn, status, ctype, body, extra, head_only)
        finally:
            self._answering.pop(conn, None)
        if linger and not conn.is_closing():
            with contextlib.suppress(Exception):
                conn.write_eof()  # tell the client we are done, then drain what it still sends
            # Evictable meanwhile: clients that send garbage at a high rate must not hold every
            # slot for LINGER_SECONDS each and keep the probes out.
            self._waiting[conn] = None
            try:
                await self._linger(conn)
            finally:
                self._waiting.pop(conn, None)
        self._answering[conn] = answer_started
        try:
            await self._close(conn)  # the answer may still be leaving
        finally:
            self._answering.pop(conn, None)

    async def _read_head(self, reader: Conn) -> bytes:
        buf = bytearray()
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                if not buf:
                    raise ConnectionResetError("client closed before sending a request")
                raise _BadRequest(400, "incomplete request head")
            start = max(0, len(buf) - 3)
            buf += chunk
            for sep in (b"\r\n\r\n", b"\n\n"):
                end = buf.find(sep, start)
                if end >= 0 and end + len(sep) <= self.max_head:
                    return bytes(buf[:end])
            if len(buf) > self.max_head:
                raise _BadRequest(431, "request head too large")

    def _route(self, method: bytes, path: str) -> tuple[int, str, bytes, dict[str, str]]:
        if path not in _ROUTES:
            return 404, _TEXT, b"not found\n", {}
        if method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"method not allowed\n", {"Allow": ALLOW}
        try:
            if path == "/healthz":
                return 200, _TEXT, b"ok\n", {}
            if path == "/readyz":
                ok, reasons = self._ready()
                if ok:
                    return 200, _TEXT, b"ready\n", {}
                lines = [" ".join(str(r).split()) for r in reasons] or ["not ready"]
                return 503, _TEXT, "".join(f"{r}\n" for r in lines).encode(), {}
            if path == "/metrics":
                body, ctype = self._metrics()
                return 200, ctype, body, {}
            doc = self._status()
            text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
            return 200, _JSON, text.encode(), {}
        except Exception:
            log.exception("admin %s handler failed", path)
            return 500, _TEXT, b"internal error\n", {}

    async def _respond(
        self,
        writer: Conn,
        status: int,
        ctype: str,
        body: bytes,
        extra: dict[str, str],
        head_only: bool,
    ) -> None:
        headers = {
            "Date": email.utils.formatdate(usegmt=True),
            "Content-Type": ctype,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close",
            **extra,
        }
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if writer.is_closing():
            return  # evicted or gone: nobody to answer (and uvloop raises on the write)
        try:
            writer.write(data if head_only else data + body)
            await asyncio.wait_for(writer.drain(), self.write_timeout)
        except (ConnectionError, TimeoutError, OSError, RuntimeError):
            writer.transport.abort()

    async def _linger(self, reader: Conn) -> None:
        """After refusing a request we did not read in full, discard what the client still sends
        for a moment: closing with unread data would reset the connection, and the client might
        lose the answer."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER_SECONDS):
                for _ in range(16):
                    if not await reader.read(65536):
                        break

    async def _close(self, writer: Conn) -> None:
        if writer.transport.is_closing():
            return
        try:
            writer.close(flush_before_exit=False)  # bounded here; not the service's traffic
            await asyncio.wait_for(writer.wait_closed(), self.write_timeout)
        except (ConnectionError, TimeoutError, OSError):
            writer.transport.abort()


def _parse(head: bytes) -> tuple[bytes, str]:
    """The method and the path (query removed) of a request head. Raises ``_BadRequest``."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise _BadRequest(400, "malformed method")
    v = _VERSION.match(version)
    if v is None:
        raise _BadRequest(400, "malformed HTTP version")
    if v.group(1) != b"1":
        raise _BadRequest(505, "only HTTP/1.x is supported")
    for line in lines[1:]:
        if b":" not in line or line[:1] in (b" ", b"\t") or not _TOKEN.match(line.split(b":")[0]):
            raise _BadRequest(400, "malformed header field")
    if target.startswith((b"http://", b"https://")):  # absolute form (RFC 9112 §3.2.2)
        slash = target.find(b"/", target.find(b"//") + 2)
        target = target[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/") or any(c < 0x21 or c > 0x7E for c in target):
        raise _BadRequest(400, "malformed request target")
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    return method, path.decode("ascii")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
