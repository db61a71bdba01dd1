"""Soak: a bounded run of mixed attested, forwarded and refused connections, then a check that the
server's and the client's descriptors, tasks and memory came back to their baseline."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from pathlib import Path

import pytest

from atls_proxy.app import build_client_settings
from atls_proxy.ops.config import load_client_config
from atls_proxy.proxy.client import open_attested
from tests.integration.conftest import Stack
from tests.support.procs import Proc, status_counters

pytestmark = pytest.mark.integration

DURATION_S = float(os.environ.get("ATLS_SOAK_SECONDS", "60"))
MAX_ROUNDS = 8000  # count cap, whatever the machine's speed
CONCURRENCY = 8
RSS_GROWTH_BOUND_KIB = 16 * 1024  # stated bound: 16 MiB of growth after the warm-up


def status(proc: Proc) -> dict[str, int]:
    before = len(status_counters(proc.output()))
    os.kill(proc.popen.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = status_counters(proc.output())
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"{proc.name}: no status line")


async def _round(i: int, stack: Stack, settings: object, tls_ctx: ssl.SSLContext) -> str:
    kind = i % 3
    if kind == 0:  # attested, in-process client, one request through the stream
        conn = await open_attested(settings)  # type: ignore[arg-type]
        await conn.stream.write(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await conn.stream.read():
            data += chunk
        await conn.stream.close()
        assert data.endswith(b"hello through atls-proxy\n")
        return "attested"
    if kind == 1:  # through the real `connect` process
        r, w = await asyncio.open_connection("127.0.0.1", stack.client_port)
        w.write(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 15)
        w.close()
        assert data.endswith(b"hello through atls-proxy\n")
        return "forwarded"
    # a plain TLS client: refused, no bytes
    r, w = await asyncio.open_connection(
        "127.0.0.1", stack.server_port, ssl=tls_ctx, server_hostname="localhost"
    )
    w.write(b"GET /hello.txt HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 15)
    w.close()
    assert data == b""
    return "refused"


async def test_soak_returns_to_baseline(stack: Stack, tmp_path: Path) -> None:
    settings = build_client_settings(
        load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{stack.server_port}")
    )
    tls_ctx = ssl.create_default_context(cafile=str(stack.dev / "ca.pem"))
    for i in range(30):  # warm-up: caches, allocator arenas, lazy imports
        await _round(i, stack, settings, tls_ctx)
    await asyncio.sleep(0.5)
    base_s, base_c = status(stack.server), status(stack.client)

    counts: dict[str, int] = {}
    deadline = time.monotonic() + DURATION_S
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while time.monotonic() < deadline and nxt < MAX_ROUNDS:
            i, nxt = nxt, nxt + 1
            kind = await asyncio.wait_for(_round(i, stack, settings, tls_ctx), 30)
            counts[kind] = counts.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await asyncio.sleep(1.0)
    after_s, after_c = status(stack.server), status(stack.client)
    print(
        f"soak: {counts} in {DURATION_S:.0f}s; server {base_s} -> {after_s}; client {base_c} -> {after_c}"
    )

    assert sum(counts.values()) > 100 and set(counts) == {"attested", "forwarded", "refused"}
    for before, after in ((base_s, after_s), (base_c, after_c)):
        assert after["active"] == 0
        assert after["fds"] == before["fds"], (before, after)
        assert after["tasks"] == before["tasks"], (before, after)
        assert after["rss_kib"] - before["rss_kib"] < RSS_GROWTH_BOUND_KIB, (before, after)
    assert after_s["attested"] - base_s["attested"] == counts["attested"] + counts["forwarded"]
    for proc in (stack.server, stack.client):
        assert "Traceback" not in proc.output()
