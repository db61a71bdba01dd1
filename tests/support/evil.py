"""Attackers for the adversarial tests, built from the project's own sans-IO pieces so that each can
deviate from the protocol in exactly one way. All listen on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from atls_proxy.attest.software import SoftwareAttester
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import framing as f
from atls_proxy.expat import messages as m
from atls_proxy.expat import session as xs
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import IND_EVIDENCE, CMWRecord, encode_cmw
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.ops.config import load_server_config
from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import (
    ServerIdentity,
    client_context,
    load_server_identity,
    server_context,
)
from atls_proxy.tls.engine import TLSEngine

PROFILE = ExpatProfile()


def issue_leaf(dev: Path, name: str) -> ServerIdentity:
    """A certificate for ``name`` issued by the dev CA: an attacker holding a CA-trusted certificate."""
    ca = x509.load_pem_x509_certificate((dev / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((dev / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ServerIdentity((cert,), key)


def write_identity(ident: ServerIdentity, cert: Path, key: Path) -> None:
    cert.write_bytes(ident.chain[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        ident.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Listener:
    """Base: one asyncio server on 127.0.0.1, a handler per connection, closed by ``close()``."""

    server: asyncio.Server

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._guarded, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _guarded(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.handle(reader, writer), 30)
        writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


async def read_events(
    stream: TLSStream, sess: xs.AttesterSession | xs.RelyingPartySession
) -> list[xs.Event]:
    while True:
        data = await stream.read()
        if not data:
            raise ConnectionError("peer closed")
        events = sess.receive(data)
        if events:
            return events


class EvilServer(Listener):
    """A server holding the genuine TLS identity and platform key, misbehaving in one way."""

    def __init__(self, dev: Path, behaviour: str) -> None:
        cfg = load_server_config(dev / "serve.toml")
        self.identity = load_server_identity(cfg.certificate, cfg.private_key)
        self.ctx = server_context(self.identity)
        assert cfg.attester.software is not None
        key = serialization.load_pem_private_key(
            cfg.attester.software.platform_key.read_bytes(), None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.attester = SoftwareAttester(key, dict(cfg.attester.software.measurements))
        self.behaviour = behaviour
        # The codes of the ERROR frames the client answered with (docs/PROTOCOL.md §4).
        self.client_errors: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = TLSStream(reader, writer, TLSEngine(self.ctx, server_side=True))
        try:
            await stream.handshake()
            e = stream.engine
            sess = xs.AttesterSession(
                xs.TLSInfo(e.export, e.hash_name),
                self.identity.chain_der,
                self.identity.private_key,
                PROFILE,
            )
            (ev,) = await read_events(stream, sess)
            assert isinstance(ev, xs.AttestationRequested) and ev.binding is not None
            if self.behaviour == "early-data-record":
                # A valid authenticator, then application data in a TLS record of its own
                # before any ACCEPT: the client decrypts them one record at a time.
                stream.queue(sess.authenticator(await self.cmw(ev.binding)))
                await stream.write(b"HTTP/1.1 200 OK\r\n\r\nsecret")
            elif self.behaviour == "silent":
                pass  # never answers: the client's attestation_timeout ends the exchange
            else:
                await stream.write(await self.answer(sess, ev, e))
            await self._client_verdict(stream, 3.0 if self.behaviour == "silent" else 0.5)
        finally:
            await stream.close()

    async def _client_verdict(self, stream: TLSStream, wait: float) -> None:
        """Read what the client sends back for ``wait`` seconds, or until it closes, and keep
        the codes of its ERROR frames (docs/PROTOCOL.md §4 framing; parsed here, apart from
        the session, which may be closed)."""
        buf = b""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(wait):
                while data := await stream.read():
                    buf += data
                    while len(buf) >= 4 and len(buf) >= 4 + (n := int.from_bytes(buf[1:4])):
                        if buf[0] == f.FrameType.ERROR:
                            self.client_errors.append(f.decode_error(buf[4 : 4 + n])[0])
                        buf = buf[4 + n :]

    async def cmw(self, binding: Binding) -> bytes:
        evidence = await self.attester.attest(binding)
        return encode_cmw(CMWRecord(evidence.media_type, evidence.data, IND_EVIDENCE))

    async def answer(
        self, sess: xs.AttesterSession, ev: xs.AttestationRequested, e: TLSEngine
    ) -> bytes:
        b = self.behaviour
        assert ev.binding is not None
        good = await self.cmw(ev.binding)
        if b == "no-cmw":
            return sess.authenticator(None)
        if b == "refuse":
            return sess.refuse()
        if b == "server-error":
            return sess.error(f.ErrorCode.ATTESTATION_UNAVAILABLE, "TEE down")
        if b == "early-data":
            return (
                sess.authenticator(good) + f.encode_frame(f.FrameType.ACCEPT) + b"HTTP/1.1 200 OK"
            )
        if b == "app-data-first":
            return b"HTTP/1.1 200 OK\r\n\r\nsecret"
        if b == "bad-version":
            return f.MAGIC + b"\x02"
        if b == "wrong-binder":
            other = Binding(
                ev.binding.hash_name, os.urandom(len(ev.binding.binder)), ev.binding.aik_hash
            )
            return sess.authenticator(await self.cmw(other))
        if b == "garbage-cmw":
            return sess.authenticator(b"\x82\x61a\x61b")
        if b.startswith("evidence-flip-"):
            # Tamper with the evidence *inside* a validly signed authenticator.
            evidence = await self.attester.attest(ev.binding)
            data = bytearray(evidence.data)
            pos = {
                "evidence-flip-payload": len(data) // 2,
                "evidence-flip-signature": len(data) - 1,
            }[b]
            data[pos] ^= 1
            return sess.authenticator(
                encode_cmw(CMWRecord(evidence.media_type, bytes(data), IND_EVIDENCE))
            )
        if b == "evidence-media-type":
            evidence = await self.attester.attest(ev.binding)
            return sess.authenticator(
                encode_cmw(CMWRecord("application/eat+cwt", evidence.data, IND_EVIDENCE))
            )
        if b == "unoffered-extension":
            # Re-sign with an extension (SCT, 0x0012) that the request never offered.
            req = m.AuthenticatorRequest(
                17, ev.request.context, (*ev.request.extensions, m.Extension(0x0012))
            )
            keys = ea.AuthenticatorKeys.derive(e.export, ea.Role.SERVER, e.hash_name)
            raw = ea.authenticate(
                keys,
                req,
                ev.request.encode(),
                self.identity.chain_der,
                self.identity.private_key,
                [PROFILE.attestation_extension(good), m.Extension(0x0012, b"")],
            )
            return f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, raw)
        frame = sess.authenticator(good)
        auth = bytearray(frame[f.PREAMBLE_LEN + 4 :])
        msgs = m.split_handshake_messages(bytes(auth))
        cert_len, cv_len = len(msgs[0][2]), len(msgs[1][2])
        if b == "bad-signature":
            auth[cert_len + cv_len - 1] ^= 1
        elif b == "bad-scheme":
            auth[cert_len + 4] ^= 0x01  # 0x0403 -> 0x0503: a scheme that does not fit the key
        elif b == "bad-finished":
            auth[-1] ^= 1
        elif b == "wrong-context":
            auth[5] ^= 1  # first byte of the echoed context
        elif b == "bad-certificate":
            auth[5 + 32 + 3 + 3 + 40] ^= 1  # a byte inside the end-entity certificate's DER
        elif b == "truncated":
            return f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, bytes(auth))[:40]
        return f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, bytes(auth))


class RelayMITM(Listener):
    """Terminates the client's TLS with ``front`` (a CA-trusted certificate of the attacker's) and
    relays the plaintext to the genuine attested server over a TLS connection of its own.

    ``resign`` models an attacker who also stole the genuine server's TLS key: it rewrites the
    relayed authenticator, re-signing it for the client's connection while keeping the genuine
    evidence. ``relayed_bytes_from_server`` counts application bytes that came back after ACCEPT.
    """

    def __init__(self, front: ServerIdentity, upstream_port: int, resign: bool = False) -> None:
        self.front = front
        self.ctx = server_context(front)
        self.upstream_port = upstream_port
        self.resign = resign
        self.relayed_bytes_from_server = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        down = TLSStream(reader, writer, TLSEngine(self.ctx, server_side=True))
        await down.handshake()
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up = TLSStream(
            r2,
            w2,
            TLSEngine(client_context(None, False), server_side=False, server_name="localhost"),
        )
        await up.handshake()
        try:
            if self.resign:
                await self._resigning_relay(down, up)
            else:
                await asyncio.gather(self._copy(down, up, False), self._copy(up, down, True))
        finally:
            await up.close()
            await down.close()

    async def _copy(
        self, src: TLSStream, dst: TLSStream, from_server: bool, seen_authenticator: bool = False
    ) -> None:
        while data := await src.read():
            if from_server and seen_authenticator:
                self.relayed_bytes_from_server += len(data)
            seen_authenticator = seen_authenticator or from_server
            await dst.write(data)
        await dst.close_write()

    async def _resigning_relay(self, down: TLSStream, up: TLSStream) -> None:
        # Act as the attester towards the client, using the genuine server's stolen key but the
        # evidence the genuine server produced for the *upstream* connection.
        e = down.engine
        sess = xs.AttesterSession(
            xs.TLSInfo(e.export, e.hash_name), self.front.chain_der, self.front.private_key, PROFILE
        )
        (ev,) = await read_events(down, sess)
        assert isinstance(ev, xs.AttestationRequested)
        await up.write(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, ev.request.encode()))
        raw = b""
        decoder = f.FrameDecoder()
        frames: list[f.Frame] = []
        while not frames:
            raw = await up.read()
            frames = decoder.feed(raw)
        genuine = frames[0].payload
        cert = m.split_handshake_messages(genuine)[0][1]
        cmw = m.Certificate.decode_body(cert).entries[0].extensions[0]
        await down.write(sess.authenticator(PROFILE.parse_attestation_extension(cmw)))
        # Then relay both ways, as the pure relay does: should the client ACCEPT, its request
        # reaches the genuine server and whatever comes back is counted.
        await asyncio.gather(
            self._copy(down, up, False), self._copy(up, down, True, seen_authenticator=True)
        )


async def record_genuine(port: int) -> tuple[bytes, bytes]:
    """Attest the genuine server once as a relying party; return (AUTHENTICATOR frame payload, CMW)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    stream = TLSStream(
        r, w, TLSEngine(client_context(None, False), server_side=False, server_name="localhost")
    )
    await stream.handshake()
    e = stream.engine
    leaf = e.peer_certificate()
    assert leaf is not None
    sess = xs.RelyingPartySession(
        xs.TLSInfo(e.export, e.hash_name),
        PROFILE,
        os.urandom(32),
        leaf.public_bytes(serialization.Encoding.DER),
    )
    await stream.write(sess.start())
    raw = b""
    events: list[xs.Event] = []
    while not events:
        chunk = await stream.read()
        raw += chunk
        events = sess.receive(chunk)
    (ev,) = events
    assert isinstance(ev, xs.AuthenticatorValidated)
    await stream.write(sess.reject(f.ErrorCode.VERIFICATION_FAILED, "recording only"))
    await stream.close()
    return raw[f.PREAMBLE_LEN + 4 :], ev.cmw


class ReplayServer(Listener):
    """Holds the genuine server's TLS key (stolen) but not its platform key; replays what it recorded.

    ``mode = "authenticator"``: the recorded authenticator, verbatim.
    ``mode = "evidence"``: a fresh, validly signed authenticator for this connection carrying the
    recorded evidence.
    """

    def __init__(
        self, dev: Path, recorded_authenticator: bytes, recorded_cmw: bytes, mode: str
    ) -> None:
        cfg = load_server_config(dev / "serve.toml")
        self.identity = load_server_identity(cfg.certificate, cfg.private_key)
        self.ctx = server_context(self.identity)
        self.auth, self.cmw, self.mode = recorded_authenticator, recorded_cmw, mode

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = TLSStream(reader, writer, TLSEngine(self.ctx, server_side=True))
        try:
            await stream.handshake()
            e = stream.engine
            sess = xs.AttesterSession(
                xs.TLSInfo(e.export, e.hash_name),
                self.identity.chain_der,
                self.identity.private_key,
                PROFILE,
            )
            await read_events(stream, sess)
            if self.mode == "authenticator":
                await stream.write(
                    f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, self.auth)
                )
            else:
                await stream.write(sess.authenticator(self.cmw))
            await asyncio.sleep(0.5)
        finally:
            await stream.close()
