"""The admin HTTP listener over real loopback sockets: routes, HEAD, errors, limits, timeouts."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from atls_proxy.errors import ConfigError
from atls_proxy.ops.admin import AdminServer
from atls_proxy.ops.metrics import Metrics


@dataclass
class State:
    ready: bool = True
    reasons: list[str] = field(default_factory=list)
    status: dict[str, object] = field(default_factory=lambda: {"active": 2, "tier": "cached"})
    metrics: Metrics = field(default_factory=Metrics)
    fail: set[str] = field(default_factory=set)

    def ready_cb(self) -> tuple[bool, list[str]]:
        if "ready" in self.fail:
            raise RuntimeError("ready exploded")
        return self.ready, self.reasons

    def status_cb(self) -> dict[str, object]:
        if "status" in self.fail:
            raise RuntimeError("status exploded")
        return self.status

    def metrics_cb(self) -> tuple[bytes, str]:
        if "metrics" in self.fail:
            raise RuntimeError("metrics exploded")
        return self.metrics.exposition()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Admin:
    server: AdminServer
    port: int
    state: State


def make(state: State, **kw: object) -> AdminServer:
    return AdminServer(
        "127.0.0.1",
        0,
        ready=state.ready_cb,
        status=state.status_cb,
        metrics=state.metrics_cb,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    state = State()
    server = make(state, read_timeout=0.5)
    addrs = await server.start()
    assert addrs and addrs[0][0] == "127.0.0.1"
    yield Admin(server, addrs[0][1], state)
    await server.close()


async def raw(port: int, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


def parse(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, code, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Response(int(code), headers, body)


async def get(port: int, path: str, method: str = "GET") -> Response:
    req = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()
    resp = parse(await raw(port, req))
    assert resp.headers["connection"] == "close"
    if method != "HEAD":
        assert int(resp.headers["content-length"]) == len(resp.body)
    return resp


# -- routes ----------------------------------------------------------------------------------------


async def test_healthz(admin: Admin) -> None:
    r = await get(admin.port, "/healthz")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["cache-control"] == "no-store"


async def test_readyz(admin: Admin) -> None:
    r = await get(admin.port, "/readyz")
    assert (r.status, r.body) == (200, b"ready\n")
    admin.state.ready = False
    admin.state.reasons = ["draining", "attester: epoch\nmissing"]
    r = await get(admin.port, "/readyz")
    assert r.status == 503
    assert r.body == b"draining\nattester: epoch missing\n"  # one reason per line
    admin.state.reasons = []
    r = await get(admin.port, "/readyz")
    assert (r.status, r.body) == (503, b"not ready\n")


async def test_metrics(admin: Admin) -> None:
    admin.state.metrics.conn_accepted()
    r = await get(admin.port, "/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"atls_proxy_connections_accepted_total 1.0" in r.body
    r2 = await get(admin.port, "/metrics?debug=1")  # the query is ignored
    assert r2.status == 200 and b"atls_proxy_build_info" in r2.body


async def test_status(admin: Admin) -> None:
    admin.state.status = {"active": 3, "since": time, "nested": {"b": [1, 2]}}
    r = await get(admin.port, "/status")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    doc = json.loads(r.body)
    assert doc["active"] == 3 and doc["nested"] == {"b": [1, 2]}
    assert isinstance(doc["since"], str)  # not JSON-serialisable: rendered with str()


async def test_head(admin: Admin) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        full = await get(admin.port, path)
        head = await get(admin.port, path, "HEAD")
        assert head.status == full.status == 200
        assert head.body == b""
        if path != "/metrics":  # the exposition's HELP text is stable but values may move
            assert head.headers["content-length"] == full.headers["content-length"]
        assert head.headers["content-type"] == full.headers["content-type"]


async def test_unknown_path_404(admin: Admin) -> None:
    for path in ("/", "/healthz/", "/metricsx", "/../metrics", "/HEALTHZ"):
        assert (await get(admin.port, path)).status == 404, path
    assert (await get(admin.port, "/nope", "POST")).status == 404


async def test_other_methods_405(admin: Admin) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"):
        r = await get(admin.port, "/metrics", method)
        assert r.status == 405, method
        assert r.headers["allow"] == "GET, HEAD"


async def test_lenient_forms(admin: Admin) -> None:
    # HTTP/1.0, bare LF line ends, absolute-form target
    r = parse(await raw(admin.port, b"GET /healthz HTTP/1.0\n\n"))
    assert (r.status, r.body) == (200, b"ok\n")
    r = parse(await raw(admin.port, b"GET http://localhost:9/healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert r.status == 200


# -- garbage, limits, timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello
        b"GET\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/1.1 extra\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"G@T /healthz HTTP/1.1\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /health\xffz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/x.y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n folded: header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nbad name: x\r\n\r\n",
        bytes(range(256)) + b"\r\n\r\n",
    ],
)
async def test_garbage_is_400(admin: Admin, data: bytes) -> None:
    r = parse(await raw(admin.port, data))
    assert r.status == 400
    assert (await get(admin.port, "/healthz")).status == 200  # still serving


async def test_http2_version_is_505(admin: Admin) -> None:
    r = parse(await raw(admin.port, b"GET /healthz HTTP/2.0\r\n\r\n"))
    assert r.status == 505


async def test_incomplete_head_then_eof_is_400(admin: Admin) -> None:
    r = parse(await raw(admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", eof=True))
    assert r.status == 400


async def test_client_that_closes_at_once(admin: Admin) -> None:
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.transport.abort()
    assert (await get(admin.port, "/healthz")).status == 200


@pytest.mark.parametrize("size", [9 * 1024, 64 * 1024, 1024 * 1024])
async def test_oversize_head_431(admin: Admin, size: int) -> None:
    data = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    r = parse(await raw(admin.port, data))
    assert r.status in (431, 400)
    assert r.status == 431
    assert (await get(admin.port, "/healthz")).status == 200


async def test_long_request_line_431(admin: Admin) -> None:
    r = parse(await raw(admin.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"))
    assert r.status == 431


async def test_head_just_under_the_cap_is_served(admin: Admin) -> None:
    prefix = b"GET /healthz HTTP/1.1\r\nX-Pad: "
    pad = 8 * 1024 - len(prefix) - 4
    r = parse(await raw(admin.port, prefix + b"p" * pad + b"\r\n\r\n"))
    assert r.status == 200


async def test_slow_client_times_out(admin: Admin) -> None:
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    assert parse(data).status == 408
    assert 0.4 < time.monotonic() - t0 < 3.0  # read_timeout=0.5


async def test_trickling_client_times_out_on_the_whole_head(admin: Admin) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    t0 = time.monotonic()

    async def trickle() -> None:
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"s" * 100:
            writer.write(bytes([b]))
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        task.cancel()
        writer.close()
    assert parse(data).status == 408
    assert time.monotonic() - t0 < 2.0


async def test_silent_client_times_out(admin: Admin) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    assert parse(data).status == 408


# -- failing callables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "path"), [("ready", "/readyz"), ("status", "/status"), ("metrics", "/metrics")]
)
async def test_raising_callable_500_then_fine(
    admin: Admin, caplog: pytest.LogCaptureFixture, which: str, path: str
) -> None:
    admin.state.fail.add(which)
    with caplog.at_level("ERROR", logger="atls_proxy.admin"):
        r = await get(admin.port, path)
    assert (r.status, r.body) == (500, b"internal error\n")
    assert f"{which} exploded" in caplog.text
    assert "exploded" not in r.body.decode()  # no internals to the client
    admin.state.fail.clear()
    assert (await get(admin.port, path)).status == 200
    assert (await get(admin.port, "/healthz")).status == 200


async def test_bad_callable_result_is_500(admin: Admin) -> None:
    admin.server._ready = lambda: None  # type: ignore[assignment,return-value]
    assert (await get(admin.port, "/readyz")).status == 500
    assert (await get(admin.port, "/healthz")).status == 200


# -- concurrency and lifecycle ---------------------------------------------------------------------


async def test_concurrent_requests(admin: Admin) -> None:
    results = await asyncio.gather(*(get(admin.port, "/metrics") for _ in range(20)))
    assert all(r.status == 200 for r in results)


async def test_clients_that_do_not_read_a_large_answer_do_not_keep_probes_out() -> None:
    # Every slot asked for a large /metrics and never reads it: the answers sit in the write
    # buffers (up to write_timeout each). A probe takes the place of the oldest answer that has
    # been leaving for ANSWER_GRACE seconds instead of being refused for the whole timeout.
    import socket

    from atls_proxy.ops import admin as admin_module

    state = State()
    big = b"#" * (8 << 20)  # more than the kernel buffers take

    def metrics_cb() -> tuple[bytes, str]:
        return big, "text/plain"

    server = AdminServer(
        "127.0.0.1",
        0,
        ready=state.ready_cb,
        status=state.status_cb,
        metrics=metrics_cb,
        max_connections=4,
        write_timeout=30.0,
    )
    port = (await server.start())[0][1]
    stuck: list[socket.socket] = []
    try:
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(c)  # never read
        await asyncio.sleep(admin_module.ANSWER_GRACE + 0.3)
        assert server.active == 4
        t0 = time.monotonic()
        assert (await asyncio.wait_for(get(port, "/healthz"), 5.0)).status == 200
        assert time.monotonic() - t0 < 2.0 and server.evicted >= 1
    finally:
        for c in stuck:
            c.close()
        await server.close()


async def test_idle_connections_at_the_limit_do_not_keep_probes_out() -> None:
    # Whoever can reach the port could hold every slot with idle connections (re-opened every
    # read_timeout) and fail the kubelet's liveness probe; a new request takes the place of the
    # oldest connection still waiting for its request head instead.
    state = State()
    server = make(state, read_timeout=5.0, max_connections=2)
    port = (await server.start())[0][1]
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        for _ in range(3):  # probe after probe, while the idle ones keep coming back
            assert (await asyncio.wait_for(get(port, "/healthz"), 2.0)).status == 200
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.05)
        # The oldest idle connections were closed to make room, and the limit still holds.
        assert await asyncio.wait_for(idle[0][0].read(), 2.0) == b""
        assert await asyncio.wait_for(idle[1][0].read(), 2.0) == b""
        assert server.evicted >= 3 and server.active <= 2
        for _, w in idle:
            w.close()
    finally:
        await server.close()


async def test_close_stops_listening_and_cancels_requests() -> None:
    state = State()
    server = make(state, read_timeout=30.0)
    port = (await server.start())[0][1]
    _, hanging = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await server.close()
    assert time.monotonic() - t0 < 2.0
    hanging.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_port_in_use_names_the_address() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        server = AdminServer(
            "127.0.0.1",
            port,
            ready=lambda: (True, []),
            status=dict,
            metrics=lambda: (b"", "text/plain"),
        )
        with pytest.raises(ConfigError) as info:
            await server.start()
        assert info.value.key == "admin.listen"
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "in use" in str(info.value).lower()
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EADDRINUSE
        await server.close()  # harmless after a failed start
    finally:
        taken.close()


async def test_unresolvable_host_is_config_error() -> None:
    server = AdminServer(
        "no-such-host.invalid",
        0,
        ready=lambda: (True, []),
        status=dict,
        metrics=lambda: (b"", "text/plain"),
    )
    with pytest.raises(
        ConfigError, match=r"admin\.listen: cannot listen on no-such-host\.invalid:0"
    ):
        await server.start()


async def test_inherited_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    state = State()
    server = AdminServer(
        "ignored",
        1,
        ready=state.ready_cb,
        status=state.status_cb,
        metrics=state.metrics_cb,
        sock=sock,
    )
    addrs = await server.start()
    assert addrs == [("127.0.0.1", port)]
    try:
        r = await get(port, "/healthz")
        assert (r.status, r.body) == (200, b"ok\n")
    finally:
        await server.close()
    assert sock.fileno() == -1  # the server owned it


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    state = State()
    server = AdminServer(
        "::1", 0, ready=state.ready_cb, status=state.status_cb, metrics=state.metrics_cb
    )
    try:
        addrs = await server.start()
    except ConfigError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        reader, writer = await asyncio.open_connection("::1", addrs[0][1])
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert parse(data).status == 200
    finally:
        await server.close()


async def test_clients_lingering_after_garbage_do_not_keep_probes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # After a 400 the server lingers a moment to drain what the client still sends; connections
    # doing that are evictable too, or a client sending garbage fast enough holds every slot.
    # And an evicted connection is not answered: no write to a closed transport, no traceback.
    state = State()
    server = make(state, read_timeout=5.0, max_connections=4)
    port = (await server.start())[0][1]
    held = []
    try:
        for _ in range(4):  # every slot: a 400 each, then the linger (the peer never closes)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"\x00garbage\r\n\r\n")
            await w.drain()
            assert (await asyncio.wait_for(r.readuntil(b"\r\n"), 2.0)).startswith(b"HTTP/1.1 400")
            held.append(w)
        for _ in range(3):  # half a request head each: waiting, then evicted
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /heal")
            held.append(w)
        with caplog.at_level("ERROR", logger="atls_proxy.admin"):
            for _ in range(3):
                assert (await asyncio.wait_for(get(port, "/healthz"), 2.0)).status == 200
                await asyncio.sleep(0.05)
        assert server.evicted >= 3
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    finally:
        for w in held:
            w.close()
        await server.close()
