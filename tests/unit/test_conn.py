"""proxy/conn.py's Conn: the StreamReader/StreamWriter behaviour TLSStream relies on — buffering
with a bound (reading paused above 2 × limit, resumed once drained), EOF, errors, backpressure
on drain — against a fake transport, plus a real loopback round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
