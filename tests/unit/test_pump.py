"""The byte pump against a peer that keeps sending after its close_notify (loopback sockets).

RFC 8446 §6.1: data received after a closure alert MUST be ignored. A peer that streams bytes
after close_notify, while the backend keeps the other direction open, must not be able to grow
the TLS engine's input buffer (the memory of the whole proxy) — and the other direction must keep
flowing to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL

from atls_proxy.proxy.conn import Conn, open_conn
from atls_proxy.proxy.pump import pump
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import client_context, server_context
from atls_proxy.tls.engine import TLSEngine
from tests.support.pki import identity

IDENT = identity("p256")
JUNK = b"\x17\x03\x03\x40\x00" + b"A" * (1 << 20)  # looks like a record header, then 1 MiB


class CountingEngine(TLSEngine):
    """Counts the ciphertext bytes handed to OpenSSL after the peer's close_notify was read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.closed_by_peer = False
        self.fed_after_close = 0

    def feed(self, data: bytes) -> None:
        if self.closed_by_peer:
            self.fed_after_close += len(data)
        super().feed(data)

    def read(self, n: int = 16384) -> bytes | None:
        data = super().read(n)
        if data == b"":
            self.closed_by_peer = True
        return data


class _Servers:
    """A backend (``backend``: an asyncio streams handler) and the proxy side: a listener that
    runs ``handle(conn, backend_port)`` as a task per accepted ``Conn`` (``pumps``). ``close``
    cancels the tasks and closes both listeners."""

    def __init__(self) -> None:
        self.pumps: list[asyncio.Task[object]] = []
        self.port = 0
        self._listeners: list[asyncio.AbstractServer] = []

    @classmethod
    async def start(
        cls,
        backend: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]],
        handle: Callable[[Conn, int], Awaitable[None]],
    ) -> _Servers:
        loop = asyncio.get_running_loop()
        s = cls()
        bsrv = await asyncio.start_server(backend, "127.0.0.1", 0)
        bport = bsrv.sockets[0].getsockname()[1]
        srv = await loop.create_server(
            lambda: Conn(lambda c: s.pumps.append(loop.create_task(handle(c, bport)))),
            "127.0.0.1",
            0,
        )
        s.port, s._listeners = srv.sockets[0].getsockname()[1], [srv, bsrv]
        return s

    def close(self) -> None:
        for t in self.pumps:
            t.cancel()
        for listener in self._listeners:
            listener.close()


async def test_bytes_after_close_notify_are_ignored_not_buffered() -> None:
    loop = asyncio.get_running_loop()
    backend_writers: list[asyncio.StreamWriter] = []
    backend_eof = asyncio.Event()

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        backend_writers.append(w)  # keeps its direction open, like a streaming response
        while await r.read(65536):
            pass
        backend_eof.set()

    engines: list[CountingEngine] = []

    async def handle(conn: Conn, bport: int) -> None:
        engine = CountingEngine(server_context(IDENT), server_side=True)
        engines.append(engine)
        tls = TLSStream(conn, conn, engine)
        await tls.handshake()
        plain = await open_conn("127.0.0.1", bport)
        await pump(tls, plain, idle_timeout=30)

    servers = await _Servers.start(backend, handle)
    sock = socket.create_connection(("127.0.0.1", servers.port))
    sock.setblocking(False)
    try:
        client = await _handshake(sock, client_context(None, verify_pki=False))
        client.write(b"hello")
        client.close_notify()
        await loop.sock_sendall(sock, client.outgoing())
        await asyncio.wait_for(backend_eof.wait(), 5)  # close_notify became EOF to the backend

        # 8 MiB after close_notify: dropped, or not even read (the TLS side is paused).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_send(loop, sock, JUNK, 8), 2)
        await asyncio.sleep(0.2)
        (engine,) = engines
        assert engine.closed_by_peer
        assert engine.fed_after_close == 0

        # The other direction still flows to the peer, and the pump ends when it ends.
        backend_writers[0].write(b"still flowing")
        backend_writers[0].close()
        got = b""
        while b"still flowing" not in got:
            client.feed(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
            while (chunk := client.read()) is not None and chunk:
                got += chunk
        await asyncio.wait_for(servers.pumps[0], 5)
    finally:
        sock.close()
        servers.close()


async def _handshake(sock: socket.socket, ctx: SSL.Context) -> TLSEngine:
    """A client TLS engine over the non-blocking ``sock``, its handshake done (its Finished still
    queued: the caller sends it, with its first bytes)."""
    loop = asyncio.get_running_loop()
    client = TLSEngine(ctx, server_side=False, server_name="localhost")
    while not client.handshake():
        if out := client.outgoing():
            await loop.sock_sendall(sock, out)
        client.feed(await loop.sock_recv(sock, 65536))
    return client


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, n: int) -> None:
    for _ in range(n):
        await loop.sock_sendall(sock, data)


class _RecordWriter:
    """Client→server TLS 1.3 records under TLS_AES_128_GCM_SHA256, written by hand from the
    client's application traffic secret (RFC 8446 §7.1 HKDF-Expand-Label, §7.3 keys, §5.2 record
    protection, §7.2 "traffic upd"): OpenSSL offers no call that sends a KeyUpdate on demand."""

    def __init__(self, secret: bytes) -> None:
        self.updates = 0
        self._set(secret)

    @staticmethod
    def _label(secret: bytes, label: bytes, n: int) -> bytes:
        full = b"tls13 " + label
        info = n.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
        return HKDFExpand(hashes.SHA256(), n, info).derive(secret)

    def _set(self, secret: bytes) -> None:
        self.secret, self.seq = secret, 0
        self.key = AESGCM(self._label(secret, b"key", 16))
        self.iv = self._label(secret, b"iv", 12)

    def key_update(self) -> bytes:
        """KeyUpdate(update_requested): the server must answer with a KeyUpdate of its own."""
        inner = b"\x18\x00\x00\x01\x01" + b"\x16"  # handshake type 24, length 1, value 1
        header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big"), strict=True))
        record = header + self.key.encrypt(nonce, inner, header)
        self.updates += 1
        self._set(self._label(self.secret, b"traffic upd", 32))
        return record


@pytest.mark.parametrize("reader", ["pump", "stream", "pump-after-full"])
async def test_a_peer_that_floods_key_updates_and_never_reads_is_not_read(reader: str) -> None:
    # reader: the pump (after ACCEPT), or TLSStream.read (the Expat exchange, before it), or the
    # pump taking over a TLS write buffer already full (its pause_writing went to the Conn: a
    # serve-unattested sniff cancelled in drain), which it must start from.
    # Each KeyUpdate(update_requested) makes OpenSSL queue one of its own; a peer that never reads
    # would grow the proxy's TLS write buffer without bound if the pump kept reading it.
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    before = [0]  # the TLS write buffer when the pump took over

    async def handle(conn: Conn, bport: int) -> None:
        ctx = server_context(IDENT)
        ctx.set_tls13_ciphersuites(b"TLS_AES_128_GCM_SHA256")
        tls = TLSStream(conn, conn, TLSEngine(ctx, server_side=True))
        # Small kernel buffers, so that the test needs no megabytes to reach the user space one.
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )
        await tls.handshake()
        transports.append(conn.transport)
        if reader == "pump-after-full":
            tls.queue(b"x" * (1 << 20))  # the peer reads nothing: over the high-water mark
            tls._flush_nowait()
            assert conn.write_paused
            before[0] = conn.transport.get_write_buffer_size()
        if reader.startswith("pump"):
            await pump(tls, await open_conn("127.0.0.1", bport), idle_timeout=30)
        while await tls.read():  # the Expat exchange's reads: no plaintext ever comes
            pass

    servers = await _Servers.start(lambda r, w: r.read(), handle)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a peer that reads nothing
    sock.connect(("127.0.0.1", servers.port))
    sock.setblocking(False)
    secrets: list[bytes] = []
    cctx = client_context(None, verify_pki=False)
    cctx.set_keylog_callback(
        lambda _c, line: secrets.extend(
            bytes.fromhex(line.split()[2].decode())
            for _ in [0]
            if line.startswith(b"CLIENT_TRAFFIC_SECRET_0 ")
        )
    )
    try:
        client = await _handshake(sock, cctx)
        await loop.sock_sendall(sock, client.outgoing())  # our Finished
        writer = _RecordWriter(secrets[0])

        async def flood() -> None:
            for _ in range(200):  # bounded: 200 × 256 KeyUpdates (~1.4 MB)
                await loop.sock_sendall(sock, b"".join(writer.key_update() for _ in range(256)))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flood(), 4)
        await asyncio.sleep(0.2)
        (tr,) = transports
        # The TLS side stopped being read once its write buffer passed the high-water mark:
        # bounded by that mark plus the answers to one read (uvloop reads up to 256 KiB at once),
        # where it used to take every answer (~1.3 MB here).
        _low, high = tr.get_write_buffer_limits()
        # Sent (they wait in the kernel's buffers): all 51,200 as a rule; on a loaded machine the
        # kernel may hold fewer within the 4 s. Enough that their answers (26 bytes each) would
        # pass the bound below by far if the pump kept reading them.
        assert writer.updates >= 25_000, writer.updates
        limit = max(high, before[0]) + 262144
        assert tr.get_write_buffer_size() <= limit, (tr.get_write_buffer_size(), high, before)
        assert not servers.pumps[0].done()  # a flow-controlled connection, not an error
    finally:
        sock.close()
        servers.close()


async def test_full_duplex_a_peer_that_uploads_before_it_reads_is_still_read() -> None:
    # The two directions are independent: while the backend's answer waits in a full TLS buffer
    # (the peer is not reading yet), the peer's upload must keep flowing to the backend — the
    # KeyUpdate throttle above must not tie them together (it did: a stall until idle_timeout).
    import ssl
    import threading

    size = 8 << 20
    got_up = 0

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal got_up

        async def answer() -> None:
            for _ in range(size // 65536):
                w.write(b"d" * 65536)
                await w.drain()

        t = asyncio.create_task(answer())
        while data := await r.read(65536):
            got_up += len(data)
        await t
        w.close()

    async def handle(conn: Conn, bport: int) -> None:
        # A small kernel buffer: the answer fills the proxy's own TLS write buffer quickly.
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )
        tls = TLSStream(conn, conn, TLSEngine(server_context(IDENT), server_side=True))
        await tls.handshake()
        await pump(tls, await open_conn("127.0.0.1", bport), idle_timeout=30)

    servers = await _Servers.start(backend, handle)
    port = servers.port
    result: dict[str, object] = {}

    def client() -> None:  # writes everything, then reads: a legal full-duplex peer
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.settimeout(10)
                try:
                    s.sendall(b"u" * size)
                    n = 0
                    while n < size and (data := s.recv(65536)):
                        n += len(data)
                    result["received"] = n
                    # Both directions done while the connection is open (closing first could
                    # cut the upload's tail still in the proxy).
                    deadline = time.monotonic() + 10
                    while got_up < size and time.monotonic() < deadline:
                        time.sleep(0.01)
                except OSError as exc:
                    result["error"] = repr(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        async with asyncio.timeout(20):
            while thread.is_alive():
                await asyncio.sleep(0.05)
        assert result == {"received": size} and got_up == size, (result, got_up)
    finally:
        thread.join(20)
        servers.close()


@pytest.mark.parametrize("reader", ["steady", "stops"])
async def test_a_slow_but_steady_reader_is_not_idle(reader: str) -> None:
    """idle_timeout is no byte moving either way. A client that keeps taking a download, more
    slowly than the proxy's buffers swing between their marks in idle_timeout, is not idle: the
    pump counted only new bytes read (from the backend, when its buffer drained below the low
    mark), and cut such a download. One that stops reading is still cut, within 1.5 ×
    idle_timeout of its last read (what is unsent is looked at every half idle_timeout)."""
    from atls_proxy.proxy.pump import IdleTimeout

    loop = asyncio.get_running_loop()

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\n")
        with contextlib.suppress(Exception):
            for _ in range(128):  # 8 MiB, far more than the client reads
                w.write(b"x" * 65536)
                await w.drain()
        w.close()

    async def handle(conn: Conn, bport: int) -> None:
        tls = TLSStream(conn, conn, TLSEngine(server_context(IDENT), server_side=True))
        await tls.handshake()
        plain = await open_conn("127.0.0.1", bport)
        await pump(tls, plain, idle_timeout=1.0)

    servers = await _Servers.start(backend, handle)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # little kernel buffering
    sock.connect(("127.0.0.1", servers.port))
    sock.setblocking(False)
    try:
        client = await _handshake(sock, client_context(None, verify_pki=False))
        client.write(b"GET\n")
        await loop.sock_sendall(sock, client.outgoing())
        got, t0 = 0, time.monotonic()
        reading = 3.5 if reader == "steady" else 0.5
        while time.monotonic() - t0 < reading:  # ~80 KB/s: ~2.4 s per 192 KiB
            client.feed(await asyncio.wait_for(loop.sock_recv(sock, 8192), 5))
            while (chunk := client.read()) is not None and chunk:
                got += len(chunk)
            assert not servers.pumps[0].done(), servers.pumps[0]
            await asyncio.sleep(0.1)
        assert got > 10_000
        if reader == "stops":
            stopped = time.monotonic()
            with pytest.raises(IdleTimeout):
                await asyncio.wait_for(servers.pumps[0], 5)
            assert time.monotonic() - stopped < 1.5 + 1.0  # 1.5 × idle_timeout, and slack
    finally:
        sock.close()
        servers.close()
