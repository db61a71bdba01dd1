"""The relying-party side: open an attested connection and appraise it, before any application byte.

``open_attested()`` is the Python API (``AttestedConnection`` carries the stream and the full
``AttestationReport``); ``atls-proxy connect`` and ``atls-proxy attest`` are built on it.

Order of checks, each recorded in the report by name:

    tcp.connect → tls.handshake (chain to the configured CA, TLS 1.3) → tls.hostname (SAN) →
    expat.* / ea.* (RFC 9261 validation, identity = TLS certificate) → cmw.* → evidence.* (verifier)

The connection is accepted (ACCEPT frame) only when every check passed; otherwise the client sends
an ERROR frame naming the failed check and closes. Nothing is read from a local client before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL

from atls_proxy.errors import AtlsError, DecodeError, ProtocolError, VerificationError
from atls_proxy.expat import session as xs
from atls_proxy.expat.authenticator import parse_leaf
from atls_proxy.expat.framing import ErrorCode, error_code_for
from atls_proxy.expat.memo import keep_short
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.ops.config import Timeouts
from atls_proxy.proxy.conn import open_conn
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import hostname_matches
from atls_proxy.tls.engine import TLSEngine, TLSError
from atls_proxy.verify.appraise import AppraisalCache, appraise_cmw
from atls_proxy.verify.base import Verifier
from atls_proxy.verify.policy import Freshness
from atls_proxy.verify.result import Appraisal, AttestationReport, Check

if TYPE_CHECKING:
    from atls_proxy.ops.metrics import Metrics

# RFC 9261 §4 / digest §2.2: 32 unpredictable bytes of certificate_request_context.
CONTEXT_LENGTH = 32


class AttestationFailed(AtlsError):
    """The server was not appraised as trustworthy; ``report`` says which check failed."""

    def __init__(self, report: AttestationReport) -> None:
        failure = report.first_failure
        super().__init__(f"{failure.name}: {failure.detail}" if failure else "attestation failed")
        self.report = report


@dataclass(frozen=True, slots=True)
class ClientSettings:
    host: str
    port: int
    server_name: str
    ssl_context: SSL.Context
    verify_pki: bool
    profile: ExpatProfile
    verifiers: Sequence[Verifier]
    timeouts: Timeouts
    freshness: Freshness = field(default_factory=Freshness)
    # Reuses appraisals of the cached tier's epoch evidence across connections (verify/appraise.py).
    # Its entries are verdicts of the verifiers and freshness rules they were made under; used
    # with others (settings copied with dataclasses.replace), it forgets them (AppraisalCache.scope).
    appraisal_cache: AppraisalCache = field(default_factory=AppraisalCache)
    # Handshake and appraisal durations go here when set (``atls-proxy connect --admin``).
    metrics: Metrics | None = None


@dataclass(slots=True)
class AttestedConnection:
    stream: TLSStream
    report: AttestationReport


async def open_attested(settings: ClientSettings, *, keep_open: bool = True) -> AttestedConnection:
    """Connect, attest and appraise. Raises ``AttestationFailed`` (with the report) on any failure.

    With ``keep_open=False`` (one-shot appraisal) the connection is closed after the verdict.
    """
    report = AttestationReport(target=f"{settings.host}:{settings.port}", issued_at=time.time())
    to = settings.timeouts
    # Before connecting: a server name the engine refuses leaves no socket behind.
    engine = TLSEngine(settings.ssl_context, server_side=False, server_name=settings.server_name)
    try:
        async with asyncio.timeout(to.connect):
            conn = await open_conn(settings.host, settings.port)
    except (OSError, TimeoutError) as exc:
        report.checks.append(Check("tcp.connect", False, _why(exc, "connect")))
        raise AttestationFailed(report) from None
    stream = TLSStream(conn, conn, engine)
    try:
        await _run(stream, settings, report)
    except BaseException:
        await stream.close()
        raise
    if not keep_open:
        await stream.close()
    return AttestedConnection(stream, report)


async def _run(stream: TLSStream, s: ClientSettings, report: AttestationReport) -> None:
    engine = stream.engine
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(s.timeouts.handshake):
            await stream.handshake()  # our Finished stays queued: it leaves with the request
    except (TLSError, OSError, TimeoutError) as exc:
        report.checks.append(Check("tls.handshake", False, _why(exc, "TLS handshake")))
        if s.metrics is not None:
            s.metrics.handshake(False, time.monotonic() - t0)
        raise AttestationFailed(report) from None
    if engine.session_reused():
        # The contexts disable resumption; a resumed session would carry another handshake's
        # authentication into this connection's exporter-bound evidence: never accepted.
        report.checks.append(Check("tls.handshake", False, "the TLS session was resumed"))
        if s.metrics is not None:
            s.metrics.handshake(False, time.monotonic() - t0)
        raise AttestationFailed(report)
    if s.metrics is not None:
        s.metrics.handshake(True, time.monotonic() - t0)
    report.checks.append(
        Check(
            "tls.handshake",
            True,
            "TLS 1.3 handshake complete",
            observed=f"{engine.version} {engine.cipher}",
        )
    )
    leaf_der = engine.peer_certificate_der()
    if leaf_der is None:
        report.checks.append(Check("tls.certificate", False, "server sent no certificate"))
        raise AttestationFailed(report)
    try:
        leaf, _, _ = parse_leaf(leaf_der)  # parsed once per certificate, not per connection
    except Exception as exc:  # OpenSSL accepted it, so this is an unsupported key type
        report.checks.append(Check("tls.certificate", False, f"certificate unusable: {exc}"))
        raise AttestationFailed(report) from None
    if s.verify_pki:
        # What the report claims is what this handshake did, not what the settings say (an
        # embedder's ssl_context might not verify).
        if not engine.chain_verified():
            report.checks.append(
                Check("tls.chain", False, "the TLS context did not verify the server's chain")
            )
            raise AttestationFailed(report)
        report.checks.append(
            Check("tls.chain", True, "certificate chain verified to the configured CA")
        )
        if not _name_matches(leaf_der, s.server_name):
            report.checks.append(
                Check(
                    "tls.hostname",
                    False,
                    "certificate does not name the server",
                    observed=_san(leaf),
                    expected=s.server_name,
                )
            )
            raise AttestationFailed(report)
        report.checks.append(
            Check("tls.hostname", True, "subjectAltName matches", expected=s.server_name)
        )
    else:
        # Not run, and reported as not run (SKIP, "skipped": true, status at best warning):
        # never as checks that passed.
        report.checks += [
            Check(
                "tls.chain",
                True,
                "NOT VERIFIED: verify_pki = false (insecure: no PKI identity)",
                skipped=True,
            ),
            Check(
                "tls.hostname",
                True,
                "NOT VERIFIED: verify_pki = false (insecure: the name is not checked)",
                expected=s.server_name,
                skipped=True,
            ),
        ]

    sess = xs.RelyingPartySession(
        xs.TLSInfo(engine.export, engine.hash_name), s.profile, os.urandom(CONTEXT_LENGTH), leaf_der
    )
    try:
        async with asyncio.timeout(s.timeouts.attestation):
            validated = await _exchange(stream, sess)
    except (ProtocolError, VerificationError) as exc:
        report.checks.extend(sess.checks)
        report.checks.append(
            Check(
                exc.check,
                False,
                str(exc).split(": ", 1)[-1] if isinstance(exc, VerificationError) else str(exc),
            )
        )
        if exc.check != SERVER_ERROR:  # the server closes after its ERROR: nothing to answer
            await _send_reject(stream, sess, _reject_code(exc), exc.check, str(exc))
        raise AttestationFailed(report) from None
    except DecodeError as exc:
        report.checks.extend(sess.checks)
        report.checks.append(Check("expat.decode", False, str(exc)))
        await _send_reject(stream, sess, ErrorCode.MALFORMED, "expat.decode", str(exc))
        raise AttestationFailed(report) from None
    except TimeoutError:
        report.checks.extend(sess.checks)
        why = f"no attestation response within {s.timeouts.attestation:g} s"
        report.checks.append(Check("expat.response", False, why))
        await _send_reject(stream, sess, ErrorCode.TIMEOUT, "expat.response", why)
        raise AttestationFailed(report) from None
    except (TLSError, OSError) as exc:
        report.checks.extend(sess.checks)
        report.checks.append(Check("expat.response", False, _why(exc, "attestation exchange")))
        raise AttestationFailed(report) from None
    report.checks.extend(validated.checks)
    t_appraise = time.monotonic()
    report.appraisals = appraise(validated, s)
    if s.metrics is not None:
        s.metrics.appraisal(time.monotonic() - t_appraise)
    if not report.passed:
        failure = report.first_failure
        assert failure is not None
        await _send_reject(
            stream, sess, ErrorCode.VERIFICATION_FAILED, failure.name, failure.detail
        )
        raise AttestationFailed(report)
    # expat-04 §7.3: the server sends nothing before our ACCEPT. Bytes that arrived after the
    # authenticator in a later read than its own are caught here (the session catches those in
    # the same read); bytes still in flight when ACCEPT leaves cannot be told apart from an answer.
    try:
        early = stream.read_nowait()
    except TLSError as exc:
        early, why = None, str(exc)
    else:
        why = (
            ""
            if early is None
            else "server closed the stream before our ACCEPT"
            if not early
            else "server sent data before attestation completed"
        )
    if why:
        report.checks.append(Check("expat.early-data", False, why))
        await _send_reject(stream, sess, ErrorCode.UNEXPECTED_FRAME, "expat.early-data", why)
        raise AttestationFailed(report)
    # ACCEPT leaves with the first application bytes, before the first wait for the server's,
    # or at close — whichever comes first (proxy/stream.py: coalescing); one segment fewer.
    stream.queue(sess.accept())


async def _exchange(stream: TLSStream, sess: xs.RelyingPartySession) -> xs.AuthenticatorValidated:
    await stream.write(sess.start())
    while True:
        data = await stream.read()
        if not data:
            raise ProtocolError("server closed the stream before answering", check="expat.response")
        for ev in sess.receive(data):
            if isinstance(ev, xs.AuthenticatorValidated):
                return ev
            if isinstance(ev, xs.PeerError):
                raise VerificationError(SERVER_ERROR, f"server error {ev.code}: {ev.reason}")


def appraise(validated: xs.AuthenticatorValidated, s: ClientSettings) -> list[Appraisal]:
    """The appraisal of a validated authenticator's CMW under ``s``'s verifiers, freshness and
    appraisal cache: what the client does per connection (``benchmarks/tier_cost.py`` times it)."""
    return appraise_cmw(
        validated.cmw,
        validated.binding,
        s.verifiers,
        time.time(),
        aik_public_key=validated.signer,
        freshness=s.freshness,
        cache=s.appraisal_cache,
        cmw_signed_by_aik=True,  # the CertificateVerify covered it (session.py)
    )


SERVER_ERROR = "expat.server-error"


def _reject_code(exc: ProtocolError | VerificationError) -> ErrorCode:
    """The ERROR code for a rejected exchange (docs/PROTOCOL.md §4): what the server sent
    violates the shim (version, a frame or bytes its state does not allow, malformed) or did not
    verify (RFC 9261 validation, identity, evidence)."""
    if isinstance(exc, VerificationError):
        return ErrorCode.VERIFICATION_FAILED
    if exc.check == "expat.early-data":
        return ErrorCode.UNEXPECTED_FRAME
    return error_code_for(exc.check, exc.alert)


async def _send_reject(
    stream: TLSStream, sess: xs.RelyingPartySession, code: ErrorCode, check: str, detail: str
) -> None:
    """Best effort: the ERROR frame tells the server why; a server that does not read it (or is
    gone) costs at most a second."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.write(sess.reject(code, f"{check}: {detail}")), 1.0)


# A client talks to few servers, each presenting the same certificate on every connection:
# matching its subjectAltName once per (certificate, name) is enough (expat/memo.py).
@keep_short(16 * 1024, maxsize=256)
def _name_matches(leaf_der: bytes, name: str) -> bool:
    return hostname_matches(parse_leaf(leaf_der)[0], name)


def _why(exc: BaseException, what: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"{what} timed out"
    return str(exc) or type(exc).__name__


def _san(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [
            str(i) for i in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        return "(no subjectAltName)"
    except ValueError:  # a name cryptography cannot decode (hostname_matches says no match)
        return "(undecodable subjectAltName)"
    return ", ".join(names)
