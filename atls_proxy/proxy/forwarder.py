"""``atls-proxy connect``: a local plain listener; each local connection gets its own attested
connection to the server, appraised before a single byte of the local client is read."""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

from atls_proxy.proxy.client import (
    AttestationFailed,
    AttestedConnection,
    ClientSettings,
    open_attested,
)
from atls_proxy.proxy.conn import Abandoned, Conn, unless
from atls_proxy.proxy.listener import Listener, Outcome, forward, log_event, monotonic_ms

if TYPE_CHECKING:
    from atls_proxy.ops.metrics import Metrics

log = logging.getLogger("atls_proxy.client")

# Checks that fail before any attestation was asked for: counted as connection failures.
# Failures before the appraisal began: not counted as attestation requests or failures
# (docs/METRICS.md), closed with the reason that fits. The PKI identity checks after the handshake
# (tls.certificate, tls.hostname) are part of the appraisal and counted there: a diversion to a
# server with another name's certificate shows in attestation_failures_total{check="tls.hostname"}.
_PRE_ATTESTATION = {"tcp.connect": "backend_unavailable", "tls.handshake": "handshake_failed"}


def _close_unused(conn: AttestedConnection) -> None:
    conn.stream.close_nowait()


class ClientForwarder(Listener):
    limit_check = "client.max-connections"

    def __init__(
        self,
        settings: ClientSettings,
        listen_host: str,
        listen_port: int,
        max_connections: int,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(max_connections, metrics)
        self.settings = settings
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.attested = 0
        self.failed = 0

    def counters(self) -> dict[str, int]:
        return {"active": self.active, "attested": self.attested, "failed": self.failed}

    async def start(
        self, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        return await self.listen(
            self.listen_host, self.listen_port, sock=sock, reuse_port=reuse_port
        )

    async def handle(self, local: Conn) -> Outcome | None:
        t0 = time.monotonic()
        settings = self.settings  # captured: a reload swaps it for later connections only
        target = f"{settings.host}:{settings.port}"
        m = self.metrics
        try:
            try:
                # Abandoned if the local connection is lost first — lost, not half-closed: a
                # local client may send its request, shut its side down (EOF) and still wait
                # for the answer. Attestation can take the TEE's time (strict: a queued quote);
                # a client that gave up (a reset) should not keep a place in that queue, and
                # its attested connection is closed at once (open_attested cleans up when
                # cancelled; one that completed meanwhile is closed by the dispose hook) instead
                # of being completed and forwarded into a dead socket.
                conn = await unless(open_attested(settings), local.wait_closed(), _close_unused)
            except Abandoned:
                log_event(
                    log,
                    logging.INFO,
                    "connection",
                    "local client went away during attestation",
                    server=target,
                    result="abandoned",
                    duration_ms=monotonic_ms(t0),
                )
                return Outcome("peer_reset")
            except AttestationFailed as exc:
                self.failed += 1
                failure = exc.report.first_failure
                check = failure.name if failure else "unknown"
                reason = failure.detail if failure else str(exc)
                log_event(
                    log,
                    logging.WARNING,
                    "connection",
                    "attestation failed",
                    server=target,
                    result="failed",
                    check=check,
                    reason=reason,
                    duration_ms=monotonic_ms(t0),
                )
                if check in _PRE_ATTESTATION:
                    if check == "tcp.connect" and m is not None:
                        m.backend_connect_error()  # the server is this side's backend
                    return Outcome(_PRE_ATTESTATION[check])
                if m is not None:
                    m.attestation_requested()
                    m.attestation_failed(check)
                return Outcome("attestation_failed")
            self.attested += 1
            if m is not None:
                m.attestation_requested()
                m.attestation_succeeded()
            log_event(
                log,
                logging.INFO,
                "attested",
                "attested",
                server=target,
                simulated=conn.report.simulated,
                setup_ms=monotonic_ms(t0),
            )
            # Seen from the client side, the "backend" is the attested server.
            try:
                return await forward(
                    log,
                    t0,
                    conn.stream,
                    local,
                    settings.timeouts.idle,
                    result="attested",
                    plain_is_backend=False,
                    server=target,
                )
            finally:
                await conn.stream.close()
        finally:
            # Buffered bytes still go out; nothing waits for the close (after the pump the
            # transport reports to the pump's protocol, not to the stream's).
            local.close()
