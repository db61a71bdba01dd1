"""``atls-proxy demo``: the whole picture on loopback with zero configuration.

It writes throw-away development material into a temporary folder (deleted at exit), starts

    curl-like request → [connect: 127.0.0.1:A] ==attested TLS 1.3==> [serve: 127.0.0.1:B] → backend 127.0.0.1:C

in this one process, prints the attestation report the client side produced, sends one HTTP
request through the chain and prints the backend's response. The attester is the SIMULATED software
attester: the demo shows the protocol, not a hardware guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

from atls_proxy.app import build_client_settings, build_server
from atls_proxy.ops.config import Address, load_client_config, load_server_config
from atls_proxy.ops.devinit import dev_init
from atls_proxy.ops.logs import setup_logging
from atls_proxy.proxy.client import AttestationFailed, open_attested
from atls_proxy.proxy.forwarder import ClientForwarder
from atls_proxy.report import render_text

BODY = b"Hello from the backend, reached through an attested TLS 1.3 connection.\n"


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY
        )
        await writer.drain()
    writer.close()


async def run_demo(keep_running: bool = False) -> int:
    setup_logging("warning")
    with tempfile.TemporaryDirectory(prefix="atls-demo-") as tmp:
        d = Path(tmp)
        dev_init(d)
        backend = await asyncio.start_server(_backend, "127.0.0.1", 0)
        bport = backend.sockets[0].getsockname()[1]
        scfg = load_server_config(d / "serve.toml", backend=f"127.0.0.1:{bport}")
        scfg = replace(scfg, listen=Address("tcp", "127.0.0.1", 0))
        server = build_server(scfg)
        (shost, sport), *_ = await server.start()
        ccfg = load_client_config(d / "connect.toml", server=f"127.0.0.1:{sport}")
        settings = build_client_settings(ccfg)
        fwd = ClientForwarder(settings, "127.0.0.1", 0, 16)
        (fhost, fport), *_ = await fwd.start()
        serve_task = asyncio.ensure_future(server.serve_forever())
        fwd_task = asyncio.ensure_future(fwd.serve_forever())
        try:
            print(f"backend      127.0.0.1:{bport}")
            print(f"atls serve   {shost}:{sport}  (software attester: SIMULATED evidence)")
            print(
                f"atls connect {fhost}:{fport}  (trusts the demo CA and the simulated platform key)"
            )
            print()
            try:
                conn = await open_attested(settings, keep_open=False)
                print(render_text(conn.report))
            except AttestationFailed as exc:
                print(render_text(exc.report))
                return 1
            print()
            print(f"GET / through 127.0.0.1:{fport} ->")
            reader, writer = await asyncio.open_connection(fhost, fport)
            writer.write(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), 15)
            writer.close()
            print(response.decode("utf-8", "replace"))
            if not response.startswith(b"HTTP/1.1 200") or not response.endswith(BODY):
                print("demo: unexpected response")
                return 1
            if keep_running:
                print(f"Running; try: curl http://127.0.0.1:{fport}/   (Ctrl-C to stop)")
                await asyncio.Event().wait()
            return 0
        finally:
            serve_task.cancel()
            fwd_task.cancel()
            await fwd.close()
            await server.close()
            backend.close()
