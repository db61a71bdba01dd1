"""``atls-proxy serve``: TLS listener → Expat attestation → backend, one task per connection.

Per connection, in this order, each step under its own timeout (DESIGN.md §7):

1. accept, or refuse at once when ``max_connections`` are open;
2. TLS 1.3 handshake (``handshake_timeout``);
3. the attestation exchange (``attestation_timeout``): wait for the client's preamble and request,
   produce fresh evidence bound to this connection (expat-04 §5), answer with the authenticator,
   wait for ACCEPT. RFC 9261 §9: servers start EAs only after the client's Finished was verified,
   which ``handshake()`` returning guarantees;
4. only then connect the backend (``connect_timeout``) and pump bytes (``idle_timeout``).

A plain TLS client (no Expat preamble) is refused by default; with
``plain_clients = "serve-unattested"`` it is forwarded *unattested*, which is logged and counted.
Every outcome is one log line naming the peer, the result and, on failure, the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL

from atls_proxy.attest.engine import EvidenceEngine
from atls_proxy.errors import (
    AtlsError,
    AttestationUnavailable,
    DecodeError,
    ProtocolError,
    VerificationError,
)
from atls_proxy.expat import session as xs
from atls_proxy.expat.framing import ErrorCode
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.ops.config import Address, ServerConfig
from atls_proxy.proxy.listener import WRITE_HIGH_WATER, Listener, peer_name
from atls_proxy.proxy.pump import IdleTimeout, pump
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import ServerIdentity
from atls_proxy.tls.engine import TLSEngine, TLSError

log = logging.getLogger("atls_proxy.server")


class Refused(AtlsError):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(slots=True)
class ServerStats:
    accepted: int = 0
    attested: int = 0
    unattested: int = 0
    failed: int = 0
    by_check: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Plain:
    initial: bytes


class AttestedServer(Listener):
    limit_check = "server.max-connections"

    def __init__(
        self,
        config: ServerConfig,
        identity: ServerIdentity,
        ssl_context: SSL.Context,
        engine: EvidenceEngine,
        profile: ExpatProfile,
    ) -> None:
        super().__init__(config.max_connections)
        self.config = config
        self.identity = identity
        self.ssl_context = ssl_context
        self.engine = engine
        self.profile = profile
        self.stats = ServerStats()
        self._chain_der = tuple(identity.chain_der)
        self._spki = xs.spki_der(x509.load_der_x509_certificate(self._chain_der[0]))

    def counters(self) -> dict[str, int]:
        return {
            "active": self.active,
            "accepted": self.stats.accepted,
            "attested": self.stats.attested,
            "unattested": self.stats.unattested,
            "failed": self.stats.failed,
            "refused_limit": self.refused_limit,
        }

    async def start(self) -> list[tuple[str, int]]:
        await self.engine.start()  # the cached tier quotes its first epoch before accepting
        return await self.listen(self.config.listen.host, self.config.listen.port)

    async def close(self) -> None:
        await super().close()
        await self.engine.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        await self._handle(reader, writer, peer_name(writer))

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        t0 = time.monotonic()
        tls = TLSStream(reader, writer, TLSEngine(self.ssl_context, server_side=True))
        timeouts = self.config.timeouts
        stage = "tls.handshake"
        try:
            # asyncio.timeout, not wait_for: no extra task and loop hop per step (3.11 wait_for
            # wraps the coroutine in a task).
            async with asyncio.timeout(timeouts.handshake):
                await tls.handshake()
            stage = "expat.exchange"
            async with asyncio.timeout(timeouts.attestation):
                outcome = await self._attest(tls)
            plain = isinstance(outcome, _Plain)
            initial = outcome.initial if isinstance(outcome, _Plain) else outcome
            stage = "backend.connect"
            async with asyncio.timeout(timeouts.connect):
                b_reader, b_writer = await _open(self.config.backend)
            b_writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            if plain:
                self.stats.unattested += 1
            else:
                self.stats.attested += 1
            stage = "forward"
            try:
                stats = await pump(tls, b_reader, b_writer, timeouts.idle, initial_to_plain=initial)
            finally:
                b_writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await b_writer.wait_closed()
            log.info(
                "connection closed peer=%s result=%s to_backend=%d from_backend=%d duration_ms=%.1f",
                peer,
                "unattested" if plain else "attested",
                stats.tls_to_plain,
                stats.plain_to_tls,
                (time.monotonic() - t0) * 1000,
            )
        except Refused as exc:
            self._fail(peer, exc.check, str(exc), t0)
        except (ProtocolError, VerificationError) as exc:
            self._fail(peer, exc.check, str(exc), t0)
        except DecodeError as exc:
            self._fail(peer, "expat.decode", str(exc), t0)
        except TimeoutError:
            self._fail(peer, stage, f"timed out in {stage}", t0)
        except IdleTimeout:
            log.info(
                "connection closed peer=%s result=idle-timeout duration_ms=%.1f",
                peer,
                (time.monotonic() - t0) * 1000,
            )
        except TLSError as exc:
            self._fail(peer, stage if stage != "forward" else "tls.record", str(exc), t0)
        except (ConnectionError, OSError) as exc:
            self._fail(peer, stage, f"{type(exc).__name__}: {exc}", t0)
        except AttestationUnavailable as exc:
            self._fail(peer, "attester.evidence", str(exc), t0)
        finally:
            await tls.close()

    def _fail(self, peer: str, check: str, message: str, t0: float) -> None:
        self.stats.failed += 1
        self.stats.by_check[check] = self.stats.by_check.get(check, 0) + 1
        log.warning(
            "connection failed peer=%s check=%s reason=%r duration_ms=%.1f",
            peer,
            check,
            message,
            (time.monotonic() - t0) * 1000,
        )

    async def _attest(self, tls: TLSStream) -> bytes | _Plain:
        """Run the Expat exchange; return application data that came with ACCEPT, or a plain client."""
        engine = tls.engine
        sess = xs.AttesterSession(
            xs.TLSInfo(engine.export, engine.hash_name),
            self._chain_der,
            self.identity.private_key,
            self.profile,
            self._spki,
        )
        serve_plain = self.config.plain_clients == "serve-unattested"
        first = True
        while True:
            if first and serve_plain:
                # A plain client of a server-speaks-first protocol sends nothing: give up waiting.
                try:
                    async with asyncio.timeout(self.config.plain_sniff_timeout):
                        data = await tls.read()
                except TimeoutError:
                    log.warning(
                        "plain TLS client served UNATTESTED (sent nothing for %.1fs)",
                        self.config.plain_sniff_timeout,
                    )
                    return _Plain(b"")
            else:
                data = await tls.read()
            first = False
            if not data:
                raise Refused("expat.exchange", f"client closed the stream in state {sess.state}")
            try:
                events = sess.receive(data)
            except (ProtocolError, DecodeError) as exc:
                with contextlib.suppress(Exception):
                    await tls.write(sess.error(ErrorCode.MALFORMED, str(exc)))
                raise
            for ev in events:
                if isinstance(ev, xs.PlainClient):
                    if serve_plain:
                        log.warning("plain TLS client served UNATTESTED (no Expat preamble)")
                        return _Plain(ev.initial)
                    raise Refused(
                        "expat.preamble",
                        "plain TLS client refused (no Expat preamble; plain_clients = refuse)",
                    )
                if isinstance(ev, xs.AttestationRequested):
                    try:
                        answer = await self._answer(sess, ev)
                    except AttestationUnavailable:
                        with contextlib.suppress(Exception):
                            await tls.write(
                                sess.error(
                                    ErrorCode.ATTESTATION_UNAVAILABLE, "evidence unavailable"
                                )
                            )
                        raise
                    await tls.write(answer)
                elif isinstance(ev, xs.PeerError):
                    raise Refused(
                        "client.verdict",
                        f"client rejected the attestation (code {ev.code}): {ev.reason}",
                    )
                elif isinstance(ev, xs.Accepted):
                    return ev.data

    async def _answer(self, sess: xs.AttesterSession, ev: xs.AttestationRequested) -> bytes:
        if ev.binding is None:
            # The request did not offer cmw_attestation: a plain RFC 9261 authenticator (expat-04 §3.1).
            return sess.authenticator(None)
        return sess.authenticator(await self.engine.evidence_for(ev.binding))


async def _open(addr: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if addr.kind == "unix":
        return await asyncio.open_unix_connection(addr.path, limit=65536)
    return await asyncio.open_connection(addr.host, addr.port, limit=65536)
