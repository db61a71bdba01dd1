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
from typing import TYPE_CHECKING

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
from atls_proxy.expat.framing import ErrorCode, error_code_for
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.expat.tiers import Tier
from atls_proxy.ops.config import Address, ServerConfig
from atls_proxy.proxy.conn import Abandoned, Conn, open_conn, open_unix_conn, unless
from atls_proxy.proxy.listener import (
    WRITE_HIGH_WATER,
    Listener,
    Outcome,
    forward,
    log_event,
    monotonic_ms,
    peer_name,
)
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import ServerIdentity
from atls_proxy.tls.engine import TLSEngine, TLSError

if TYPE_CHECKING:
    import socket

    from atls_proxy.ops.metrics import Metrics

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


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """Everything a connection takes from the server identity, swapped as one on reload: a
    connection captures the current value when it is accepted and uses only that, so a reload
    never mixes an old certificate with a new key on one connection."""

    identity: ServerIdentity
    ssl_context: SSL.Context
    chain_der: tuple[bytes, ...]
    spki: bytes

    @classmethod
    def build(cls, identity: ServerIdentity, ssl_context: SSL.Context) -> ServerKeys:
        chain = tuple(identity.chain_der)
        return cls(
            identity, ssl_context, chain, xs.spki_der(x509.load_der_x509_certificate(chain[0]))
        )


class AttestedServer(Listener):
    limit_check = "server.max-connections"

    def __init__(
        self,
        config: ServerConfig,
        identity: ServerIdentity,
        ssl_context: SSL.Context,
        engine: EvidenceEngine,
        profile: ExpatProfile,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(config.max_connections, metrics)
        self.config = config
        self.keys = ServerKeys.build(identity, ssl_context)
        self.engine = engine
        self.profile = profile
        self.stats = ServerStats()

    @property
    def identity(self) -> ServerIdentity:
        return self.keys.identity

    async def swap(self, config: ServerConfig, keys: ServerKeys, profile: ExpatProfile) -> None:
        """Reload: later connections use the new state; open ones keep what they captured.

        The cached tier's epoch for the new key is quoted *before* the swap, so the first
        connection on the new certificate does not wait for the TEE (and a TEE failure keeps the
        old state: the caller reports the reload as failed).
        """
        await self.engine.prepare_key(keys.identity.private_key)
        self.config, self.keys, self.profile = config, keys, profile
        self.max_connections = config.max_connections

    def counters(self) -> dict[str, int]:
        return {
            "active": self.active,
            "accepted": self.stats.accepted,
            "attested": self.stats.attested,
            "unattested": self.stats.unattested,
            "failed": self.stats.failed,
            "refused_limit": self.refused_limit,
        }

    async def start(
        self, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        # The cached tier quotes its first epoch before the listener accepts.
        await self.engine.start(self.keys.identity.private_key, keep_warm=True)
        return await self.listen(
            self.config.listen.host, self.config.listen.port, sock=sock, reuse_port=reuse_port
        )

    async def close(self) -> None:
        await super().close()
        await self.engine.close()

    async def handle(self, conn: Conn) -> Outcome | None:
        self.stats.accepted += 1
        return await self._handle(conn, peer_name(conn))

    async def _handle(self, conn: Conn, peer: str) -> Outcome:
        t0 = time.monotonic()
        m = self.metrics
        # One TLS context / identity per connection: a reload swaps them for later connections.
        keys, config, profile = self.keys, self.config, self.profile
        tls = TLSStream(conn, conn, TLSEngine(keys.ssl_context, server_side=True))
        timeouts = config.timeouts
        stage = "tls.handshake"
        sess: xs.AttesterSession | None = None
        try:
            # asyncio.timeout, not wait_for: no extra task and loop hop per step (3.11 wait_for
            # wraps the coroutine in a task).
            async with asyncio.timeout(timeouts.handshake):
                await tls.handshake()
            if tls.engine.session_reused():  # disabled in the context; never accepted
                raise Refused("tls.handshake", "the TLS session was resumed")
            if m is not None:
                m.handshake(True, time.monotonic() - t0)
            stage = "expat.exchange"
            engine = tls.engine
            sess = xs.AttesterSession(
                xs.TLSInfo(engine.export, engine.hash_name),
                keys.chain_der,
                keys.identity.private_key,
                profile,
                keys.spki,
            )
            try:
                async with asyncio.timeout(timeouts.attestation):
                    outcome = await self._attest(tls, conn, sess, keys, config)
            except TimeoutError:
                # An Expat client still waiting for the authenticator learns why (docs/PROTOCOL.md
                # §4). Not after it: until ACCEPT any byte is early data to the client, and one
                # that already sent ACCEPT would hand these bytes to its application. A plain
                # client, or one that sent nothing, gets no shim bytes.
                if sess.state in ("request", "attesting"):
                    _send_error(tls, sess, ErrorCode.TIMEOUT, "attestation timed out")
                raise
            plain = isinstance(outcome, _Plain)
            initial = outcome.initial if isinstance(outcome, _Plain) else outcome
            if plain:
                self.stats.unattested += 1
                if m is not None:
                    m.served_unattested()
            else:
                self.stats.attested += 1
                if m is not None:
                    m.attestation_succeeded()
            stage = "backend.connect"
            async with asyncio.timeout(timeouts.connect):
                backend = await _open(config.backend)
            backend.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            stage = "forward"
            try:
                return await forward(
                    log,
                    t0,
                    tls,
                    backend,
                    timeouts.idle,
                    result="unattested" if plain else "attested",
                    plain_is_backend=True,
                    initial_to_plain=initial,
                    peer=peer,
                )
            finally:
                backend.close()  # buffered bytes still go out; nothing waits for that
        except Refused as exc:
            return self._fail(peer, exc.check, str(exc), t0, stage)
        except (ProtocolError, VerificationError) as exc:
            return self._fail(peer, exc.check, str(exc), t0, stage)
        except DecodeError as exc:
            return self._fail(peer, "expat.decode", str(exc), t0, stage)
        except TimeoutError:
            return self._fail(peer, stage, f"timed out in {stage}", t0, stage)
        except TLSError as exc:
            return self._fail(peer, stage, str(exc), t0, stage)
        except (ConnectionError, OSError) as exc:
            return self._fail(peer, stage, f"{type(exc).__name__}: {exc}", t0, stage)
        except AttestationUnavailable as exc:
            return self._fail(peer, "attester.evidence", str(exc), t0, stage)
        finally:
            if stage == "backend.connect" or (
                stage == "expat.exchange" and sess is not None and sess.answered
            ):
                # The client has sent ACCEPT (or, unattested, its first bytes) — or, once it has
                # the authenticator, may have, with its ACCEPT in flight — and reads what follows
                # as application data: a close_notify would be a complete, empty answer. The
                # stream is cut, so it is reset.
                tls.reset()
            await tls.close()

    def _fail(self, peer: str, check: str, message: str, t0: float, stage: str) -> Outcome:
        self.stats.failed += 1
        self.stats.by_check[check] = self.stats.by_check.get(check, 0) + 1
        log_event(
            log,
            logging.WARNING,
            "connection",
            "connection failed",
            peer=peer,
            result="failed",
            check=check,
            stage=stage,
            reason=message,
            duration_ms=monotonic_ms(t0),
        )
        m = self.metrics
        if stage == "tls.handshake":
            if m is not None:
                m.handshake(False, time.monotonic() - t0)
            return Outcome("handshake_failed")
        if stage == "expat.exchange":
            if m is not None:
                m.attestation_failed(check)
            return Outcome("attestation_failed")
        if stage == "backend.connect":
            if m is not None:
                m.backend_connect_error()
            return Outcome("backend_unavailable")
        return Outcome("error")

    async def _attest(
        self,
        tls: TLSStream,
        conn: Conn,
        sess: xs.AttesterSession,
        keys: ServerKeys,
        config: ServerConfig,
    ) -> bytes | _Plain:
        """Run the Expat exchange; return application data that came with ACCEPT, or a plain client."""
        serve_plain = config.plain_clients == "serve-unattested"
        first = True
        while True:
            if first and serve_plain:
                # A plain client of a server-speaks-first protocol sends nothing: give up waiting.
                try:
                    async with asyncio.timeout(config.plain_sniff_timeout):
                        data = await tls.read()
                except TimeoutError:
                    log.warning(
                        "plain TLS client served UNATTESTED (sent nothing for %.1fs)",
                        config.plain_sniff_timeout,
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
                # An ERROR only before the authenticator, as on the timeout above: after it, a
                # client that believes it sent ACCEPT would hand the frame to its application.
                if not sess.answered:
                    code = (
                        error_code_for(exc.check, exc.alert)
                        if isinstance(exc, ProtocolError)
                        else ErrorCode.MALFORMED
                    )
                    _send_error(tls, sess, code, str(exc))
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
                    if self.metrics is not None:
                        self.metrics.attestation_requested()
                    try:
                        answer = await self._answer(conn, sess, ev, keys)
                    except AttestationUnavailable:
                        _send_error(
                            tls, sess, ErrorCode.ATTESTATION_UNAVAILABLE, "evidence unavailable"
                        )
                        raise
                    await tls.write(answer)
                elif isinstance(ev, xs.PeerError):
                    raise Refused(
                        "client.verdict",
                        f"client rejected the attestation (code {ev.code}): {ev.reason}",
                    )
                elif isinstance(ev, xs.Accepted):
                    if sess.evidence_sent:
                        return ev.data
                    # An Expat client that asked for no evidence (no cmw_attestation offer, or
                    # no signature scheme the key can use) is not attested: the same policy as
                    # a plain TLS client, and counted as unattested (DESIGN.md §7).
                    if serve_plain:
                        log.warning("Expat client accepted without evidence: served UNATTESTED")
                        return _Plain(ev.data)
                    raise Refused(
                        "expat.unattested",
                        "the client accepted without evidence (no cmw_attestation offered, or "
                        "no common signature scheme); plain_clients = refuse",
                    )

    async def _answer(
        self, conn: Conn, sess: xs.AttesterSession, ev: xs.AttestationRequested, keys: ServerKeys
    ) -> bytes:
        if ev.binding is None:
            # The request did not offer cmw_attestation: a plain RFC 9261 authenticator (expat-04 §3.1).
            return sess.authenticator(None)
        t0 = time.monotonic()
        engine, key = self.engine, keys.identity.private_key
        if engine.tier is Tier.CACHED:
            # Signed here, or a wait for the epoch every connection shares: nothing to give back.
            cmw = await engine.evidence_for(ev.binding, key)
        else:
            # A client that ended its side (EOF, reset) can never send ACCEPT: it gets no quote
            # (strict: one of its own; batched: a leaf in the next tree), and one that ends it
            # while queued leaves the TEE's queue now rather than at the attestation timeout. A
            # quote already under way for it is spent: the TEE cannot take it back.
            if conn.ended:
                raise Refused("expat.exchange", _ENDED_BEFORE_EVIDENCE)
            try:
                cmw = await unless(engine.evidence_for(ev.binding, key), conn.wait_ended())
            except Abandoned:
                raise Refused("expat.exchange", _ENDED_BEFORE_EVIDENCE) from None
        if self.metrics is not None:
            self.metrics.evidence(
                self.engine.attester.name, self.engine.tier.value, time.monotonic() - t0
            )
        return sess.authenticator(cmw)


_ENDED_BEFORE_EVIDENCE = "client closed the connection while its evidence was made"


def _send_error(tls: TLSStream, sess: xs.AttesterSession, code: ErrorCode, reason: str) -> None:
    """The ERROR frame (docs/PROTOCOL.md §4), queued: it leaves with the close that follows.
    Nothing waits for it, so a peer that does not read only loses the reason, and the failure
    being reported keeps its own check (a wait could end in the attestation timeout)."""
    with contextlib.suppress(Exception):
        tls.queue(sess.error(code, reason))


async def _open(addr: Address) -> Conn:
    if addr.kind == "unix":
        return await open_unix_conn(addr.path)
    return await open_conn(addr.host, addr.port)
