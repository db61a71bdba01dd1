"""``atls-proxy connect``: a local plain listener; each local connection gets its own attested
connection to the server, appraised before a single byte of the local client is read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from atls_proxy.proxy.client import AttestationFailed, ClientSettings, open_attested
from atls_proxy.proxy.listener import Listener
from atls_proxy.proxy.pump import IdleTimeout, pump
from atls_proxy.tls.engine import TLSError

log = logging.getLogger("atls_proxy.client")


class ClientForwarder(Listener):
    limit_check = "client.max-connections"

    def __init__(
        self, settings: ClientSettings, listen_host: str, listen_port: int, max_connections: int
    ) -> None:
        super().__init__(max_connections)
        self.settings = settings
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.attested = 0
        self.failed = 0

    def counters(self) -> dict[str, int]:
        return {"active": self.active, "attested": self.attested, "failed": self.failed}

    async def start(self) -> list[tuple[str, int]]:
        return await self.listen(self.listen_host, self.listen_port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t0 = time.monotonic()
        target = f"{self.settings.host}:{self.settings.port}"
        try:
            try:
                conn = await open_attested(self.settings)
            except AttestationFailed as exc:
                self.failed += 1
                failure = exc.report.first_failure
                log.warning(
                    "attestation failed server=%s check=%s reason=%r duration_ms=%.1f",
                    target,
                    failure.name if failure else "unknown",
                    failure.detail if failure else str(exc),
                    (time.monotonic() - t0) * 1000,
                )
                return
            self.attested += 1
            log.info(
                "attested server=%s simulated=%s setup_ms=%.1f",
                target,
                conn.report.simulated,
                (time.monotonic() - t0) * 1000,
            )
            try:
                stats = await pump(conn.stream, reader, writer, self.settings.timeouts.idle)
                log.info(
                    "connection closed server=%s from_server=%d to_server=%d duration_ms=%.1f",
                    target,
                    stats.tls_to_plain,
                    stats.plain_to_tls,
                    (time.monotonic() - t0) * 1000,
                )
            except IdleTimeout:
                log.info("connection closed server=%s result=idle-timeout", target)
            except (TLSError, ConnectionError, OSError) as exc:
                log.warning("connection broken server=%s reason=%r", target, str(exc))
            finally:
                await conn.stream.close()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
