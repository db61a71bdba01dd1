"""proxy/conn.py's Conn: the StreamReader/StreamWriter behaviour TLSStream relies on — buffering
with a bound (reading paused above 2 × limit, resumed once drained), EOF, errors, backpressure
on drain — against a fake transport, plus a real loopback round trip."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from atls_proxy.proxy import conn as conn_module
from atls_proxy.proxy.conn import Conn, open_conn


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default


def _conn(limit: int = 16) -> tuple[Conn, FakeTransport]:
    made: list[Conn] = []
    c = Conn(made.append, limit)
    t = FakeTransport()
    c.connection_made(t)  # type: ignore[arg-type]
    assert made == [c]
    return c, t


async def test_read_waits_for_data_and_returns_what_arrived() -> None:
    c, _ = _conn()
    task = asyncio.ensure_future(c.read(100))
    await asyncio.sleep(0)
    assert not task.done()
    c.data_received(b"abc")
    assert await task == b"abc"
    c.data_received(b"0123456789")
    assert await c.read(4) == b"0123"
    assert await c.read() == b"456789"
    assert await c.read(0) == b""


async def test_buffer_is_bounded_reading_paused_then_resumed() -> None:
    c, t = _conn(limit=16)
    reading: list[bool] = []
    c.data_received(b"x" * 20)
    reading.append(t.reading)
    c.data_received(b"x" * 20)  # 40 > 2 × 16: stop reading from the socket
    reading.append(t.reading)
    assert await c.read(10) == b"x" * 10  # 30 left: still above the limit
    reading.append(t.reading)
    assert await c.read(20) == b"x" * 20  # 10 left: resume
    reading.append(t.reading)
    assert reading == [True, False, False, True]


async def test_read_nowait_empties_the_buffer_and_resumes_reading() -> None:
    c, t = _conn(limit=16)
    assert c.read_nowait() == b""  # nothing yet: no wait
    c.data_received(b"x" * 40)  # above 2 × 16: reading paused
    assert not t.reading
    assert c.read_nowait() == b"x" * 40
    assert t.reading  # or a later read() would wait on a paused socket forever
    c.data_received(b"y")
    assert await c.read() == b"y"


async def test_eof_and_take_buffer() -> None:
    c, _ = _conn()
    c.data_received(b"tail")
    assert c.eof_received() is True  # half-close: the transport keeps our direction open
    assert c.take_buffer() == (b"tail", True)
    assert await c.read() == b""


async def test_eof_wakes_a_waiting_reader() -> None:
    c, _ = _conn()
    task = asyncio.ensure_future(c.read(10))
    await asyncio.sleep(0)
    c.connection_lost(None)
    assert await task == b""


async def test_connection_lost_with_error_raises_from_read_and_drain() -> None:
    c, t = _conn()
    c.data_received(b"kept")
    c.connection_lost(ConnectionResetError("reset by peer"))
    assert await c.read() == b"kept"  # what arrived before the error is still delivered
    with pytest.raises(ConnectionResetError, match="reset by peer"):
        await c.read()
    t.closing = True
    with pytest.raises(ConnectionResetError):
        await c.drain()


async def test_drain_waits_while_paused_and_fails_when_lost() -> None:
    c, _ = _conn()
    await c.drain()  # not paused: returns at once
    c.pause_writing()
    task = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0)
    assert not task.done()
    c.resume_writing()
    await task
    c.pause_writing()
    task = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0)
    c.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await task


async def test_one_reader_at_a_time() -> None:
    c, _ = _conn()
    first = asyncio.ensure_future(c.read(1))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await c.read(1)
    c.data_received(b"z")
    assert await first == b"z"


async def test_writer_side_and_extra_info() -> None:
    c, t = _conn()
    c.write(b"out")
    assert t.written == [b"out"]
    assert c.get_extra_info("peername") == ("127.0.0.1", 4242)
    assert not c.is_closing()
    c.close()
    assert c.is_closing()


async def test_loopback_round_trip() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = await open_conn("127.0.0.1", port)
        payload = bytes(range(256)) * 1024  # 256 KiB: several reads, the bound applies
        c.write(payload)
        await c.drain()
        got = b""
        while len(got) < len(payload):
            chunk = await c.read(65536)
            assert chunk
            got += chunk
        assert got == payload
        c.close()
    finally:
        server.close()
        await server.wait_closed()


def _closing_to_a_peer_that_stops_reading(loop_kind: str, reading: bool) -> tuple[float, int]:
    """Seconds until a closed Conn with unsent bytes is really gone, its peer reading or not, and
    how many bytes the peer received."""
    import socket
    import time

    async def main() -> tuple[float, int]:
        received = 0
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Conn] = loop.create_future()
        server = await loop.create_server(lambda: Conn(accepted.set_result), "127.0.0.1", 0)
        peer = socket.socket()
        if not reading:  # small buffers fill at once: the transport keeps most of the bytes
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(server.sockets[0].getsockname()[:2])
        peer.setblocking(False)
        try:
            c = await accepted
            c.write(b"x" * (8 << 20))  # far more than the socket buffers hold
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            c.close()  # the transport still holds most of it
            while True:
                if reading:
                    try:
                        while chunk := peer.recv(1 << 20):
                            received += len(chunk)
                    except BlockingIOError:
                        pass
                try:
                    await asyncio.wait_for(c.wait_closed(), 0.05)
                    if reading:  # what was sent before the close is still readable
                        peer.setblocking(True)
                        peer.settimeout(5)
                        while chunk := peer.recv(1 << 20):
                            received += len(chunk)
                    return time.monotonic() - t0, received
                except TimeoutError:
                    if time.monotonic() - t0 > 10:
                        return float("inf"), received
        finally:
            peer.close()
            server.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        result: tuple[float, int] = uvloop.run(main())
        return result
    return asyncio.run(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_closed_connection_to_a_peer_that_stops_reading_is_aborted(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the linger, the transport waits for the peer's zero window forever, holding the
    # socket and its buffer after the handler is gone.
    monkeypatch.setattr(conn_module, "CLOSE_LINGER", 0.3)
    seconds, _ = _closing_to_a_peer_that_stops_reading(loop_kind, reading=False)
    assert seconds < 3
    # A peer that keeps reading gets everything: the linger restarts while the buffer shrinks.
    seconds, received = _closing_to_a_peer_that_stops_reading(loop_kind, reading=True)
    assert seconds < 10 and received == 8 << 20


async def test_a_cancelled_drain_leaves_no_unretrieved_exception() -> None:
    # A drain cancelled by a timeout, then the connection lost: the waiter must not end with an
    # exception nobody retrieves ("Future exception was never retrieved", once per connection);
    # a drain after the loss still raises.
    c, _t = _conn()
    c.pause_writing()
    task = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waiter = c._drain_waiter
    assert waiter is not None
    c.connection_lost(ConnectionResetError("peer reset"))
    assert waiter.done() and waiter.exception() is None
    with pytest.raises(ConnectionError):
        await c.drain()
    # (A drain still waiting when the connection is lost raises: the backpressure test above.)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_closed_connection_given_up_on_ends_in_a_reset_not_an_eof(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes a peer never took are dropped when the linger gives up: it must read that as a
    cut stream (RST), never as a complete one (FIN), whatever it reads later."""
    import socket

    monkeypatch.setattr(conn_module, "CLOSE_LINGER", 0.3)

    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Conn] = loop.create_future()
        server = await loop.create_server(lambda: Conn(accepted.set_result), "127.0.0.1", 0)
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(server.sockets[0].getsockname()[:2])
        try:
            c = await accepted
            c.write(b"r" * (8 << 20))
            c.close()
            await asyncio.wait_for(c.wait_closed(), 5)  # given up on after the linger
            peer.settimeout(5)
            got = 0
            try:
                while chunk := peer.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                return got, "reset"
            return got, "eof"
        finally:
            peer.close()
            server.close()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        got, end = uvloop.run(main())
    else:
        got, end = asyncio.run(main())
    assert got < 8 << 20 and end == "reset", (got, end)


async def test_unless_returns_the_work_or_abandons_it_cleanly() -> None:
    from atls_proxy.proxy.conn import Abandoned, unless

    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def never() -> None:
        await asyncio.sleep(3600)

    assert await unless(value(), never()) == 7

    cleaned: list[str] = []

    async def long_work() -> int:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("work")  # its clean-up runs, in the background
        return 0

    ended = asyncio.Event()

    async def end() -> None:
        await ended.wait()

    waiter = asyncio.ensure_future(unless(long_work(), end()))
    await asyncio.sleep(0.01)
    ended.set()
    with pytest.raises(Abandoned):
        await waiter
    await asyncio.sleep(0)
    assert cleaned == ["work"]

    # The caller cancelled: the work is cancelled too, and the caller sees CancelledError.
    cleaned.clear()
    outer = asyncio.ensure_future(unless(long_work(), never()))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.sleep(0)
    assert cleaned == ["work"]

    async def failing() -> int:
        raise ValueError("the work's own error")

    with pytest.raises(ValueError, match="own error"):
        await unless(failing(), never())


async def test_unless_never_swallows_the_callers_cancellation() -> None:
    # `ending` fired while the work's clean-up takes time; a caller cancelled while it has not
    # returned sees CancelledError, never Abandoned (a handler being drained must end as drained,
    # not as an attestation failure). Once it has returned Abandoned, there is nothing to cancel.
    from atls_proxy.proxy.conn import Abandoned, unless

    async def slow_to_clean_up() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.2)

    async def at_once() -> None:
        return None

    for delay in (0.0, 0.01, 0.05):
        outer = asyncio.ensure_future(unless(slow_to_clean_up(), at_once()))
        await asyncio.sleep(delay)
        if outer.done():
            assert isinstance(outer.exception(), Abandoned)
            continue
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer


async def test_unless_collects_what_the_caller_did_not_take() -> None:
    # The caller is cancelled just as the work completes: a result goes to `dispose` (a connection
    # nobody will use is closed, not leaked) and an exception is retrieved (no "never retrieved").
    from atls_proxy.proxy.conn import unless

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    disposed: list[str] = []

    async def never() -> None:
        await asyncio.sleep(3600)

    for outcome in ("result", "error"):
        done = asyncio.Event()

        async def work(outcome: str = outcome, done: asyncio.Event = done) -> str:
            await done.wait()
            if outcome == "error":
                raise ValueError("nobody asked")
            return "connection"

        outer = asyncio.ensure_future(unless(work(), never(), disposed.append))
        await asyncio.sleep(0.01)
        done.set()
        outer.cancel()  # before it resumes from its wait, the work finishing meanwhile
        with pytest.raises(asyncio.CancelledError):
            await outer
        for _ in range(3):
            await asyncio.sleep(0)
    import gc

    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert disposed == ["connection"]
    assert reported == []


async def test_wait_ended_sees_eof_and_loss_without_reading() -> None:
    server_conns: list[Conn] = []
    srv = await asyncio.get_running_loop().create_server(
        lambda: _kept(server_conns), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    try:
        # EOF (a half-close): what came before it stays buffered for read().
        c = await open_conn("127.0.0.1", port)
        while not server_conns:
            await asyncio.sleep(0.01)
        s = server_conns[0]
        assert not s.ended
        c.write(b"before the end")
        c.write_eof()
        await asyncio.wait_for(s.wait_ended(), 5)
        assert s.ended and await s.read() == b"before the end"
        await s.wait_ended()  # already ended: returns at once
        c.close()
        # A reset, no FIN: the loss ends it too.
        c2 = await open_conn("127.0.0.1", port)
        while len(server_conns) < 2:
            await asyncio.sleep(0.01)
        s2 = server_conns[1]
        waiting = asyncio.ensure_future(s2.wait_ended())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        c2.reset()
        await asyncio.wait_for(waiting, 5)
        assert s2.broken is not None
    finally:
        srv.close()


def _kept(into: list[Conn]) -> Conn:
    conn = Conn()
    into.append(conn)
    return conn


async def test_exit_waits_for_closed_connections_to_flush_and_resets_the_rest() -> None:
    # A connection closed with bytes still in its transport's buffer (a slow reader): before the
    # process exits, wait_flushed waits for them; what still holds bytes at the deadline is
    # reset, so its peer reads an error — not a FIN after a truncated stream.
    import socket

    from atls_proxy.proxy import conn as conn_module

    server_conns: list[Conn] = []
    srv = await asyncio.get_running_loop().create_server(
        lambda: _kept(server_conns), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        for reader_reads in (True, False):
            peer = socket.create_connection(("127.0.0.1", port))
            peer.setblocking(False)
            while len(server_conns) < (1 if reader_reads else 3):
                await asyncio.sleep(0.01)
            s = server_conns[0] if reader_reads else server_conns[-1]
            s.write(b"x" * (8 << 20))  # far more than the kernel buffers take
            s.close()
            assert s.transport.get_write_buffer_size() > 0
            if reader_reads:
                # Closed the admin endpoint's way: not the service's traffic, not waited for.
                extra = socket.create_connection(("127.0.0.1", port))
                while len(server_conns) < 2:
                    await asyncio.sleep(0.01)
                admin_like = server_conns[1]
                admin_like.write(b"y" * (8 << 20))
                admin_like.close(flush_before_exit=False)
                assert admin_like.transport.get_write_buffer_size() > 0

                async def drain_peer(sock: socket.socket = peer) -> int:
                    n = 0
                    while True:
                        chunk = await loop.sock_recv(sock, 1 << 20)
                        if not chunk:
                            return n
                        n += len(chunk)

                reading = asyncio.ensure_future(drain_peer())
                assert await conn_module.wait_flushed(20)
                got = await asyncio.wait_for(reading, 20)
                assert got == 8 << 20  # everything, then the FIN
                assert conn_module.reset_closing() == 0  # the admin-like one was never counted
                extra.close()
            else:
                # The drain's wait: every handler finished, yet one connection still holds bytes.
                from atls_proxy.ops.runtime import Runtime

                class Idle:
                    async def wait_idle(self, timeout: float) -> bool:
                        return True

                done = await Runtime._until_idle_and_flushed(
                    Idle(),  # type: ignore[arg-type]
                    time.monotonic() + 0.3,
                )
                assert not done  # not a clean drain
                assert conn_module.reset_closing() == 1
                with pytest.raises(ConnectionResetError):
                    while await loop.sock_recv(peer, 1 << 20):
                        pass
            peer.close()
    finally:
        srv.close()
