"""A TLS connection over memory buffers (pyOpenSSL ``Connection`` with memory BIOs) — sans-IO.

Theory of operation
-------------------
OpenSSL never sees a socket here. The adapter moves bytes: ciphertext read from the network goes in
with ``feed()`` (and ``feed_eof()`` at TCP EOF); ciphertext OpenSSL wants sent comes out of
``outgoing()``. Every operation (``handshake``, ``read``, ``write``, ``close_notify``) may produce
ciphertext — including ``read``, which answers post-handshake messages — so the adapter drains
``outgoing()`` after each call and *before* it waits for more input (python-trio's ``_ssl.py``
explains why: a peer may be waiting on bytes we hold).

* ``handshake()`` returns True once the handshake is complete, False when it needs more input.
* ``read()`` returns plaintext, ``None`` when it needs more input, and ``b""`` once the peer's
  close_notify arrived (TLS 1.3 half-close: we may still write).
* EOF without close_notify is a truncation; ``read()`` raises ``TLSError`` ("unexpected EOF").
* Any TLS error leaves the engine broken for good: later calls raise the same error.
* Writes never block: the out-BIO grows; the adapter applies backpressure by awaiting the transport
  after draining ``outgoing()``.

The exporter (RFC 8446 §7.5) is exposed as ``export(label, length, context)`` — the one thing the
stdlib ``ssl`` module cannot do and the reason pyOpenSSL is here.
"""

from __future__ import annotations

import contextlib
import ipaddress

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib  # SSL_session_reused has no public wrapper

from atls_proxy.errors import AtlsError


class TLSError(AtlsError):
    """The TLS layer failed (handshake, certificate, record, truncation)."""


# One TLS record carries at most 16 KiB of plaintext; reading 64 KiB at a time lets one call
# drain several records without holding more than that per connection.
READ_CHUNK = 65536


class TLSEngine:
    __slots__ = ("_conn", "_error", "_handshake_done", "_server_side")

    def __init__(
        self, context: SSL.Context, server_side: bool, server_name: str | None = None
    ) -> None:
        self._conn = SSL.Connection(context, None)
        self._server_side = server_side
        if server_side:
            self._conn.set_accept_state()
        else:
            # SNI; IP literals are not sent (RFC 6066 §3).
            if server_name and not _is_ip_literal(server_name):
                self._conn.set_tlsext_host_name(server_name.encode("idna"))
            self._conn.set_connect_state()
        self._handshake_done = False
        self._error: TLSError | None = None

    # -- bytes in and out ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if data:  # OpenSSL's BIO_write fails on zero bytes
            self._conn.bio_write(data)

    def feed_eof(self) -> None:
        self._conn.bio_shutdown()

    def outgoing(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(READ_CHUNK))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    # -- operations ---------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> TLSError:
        if isinstance(exc, SSL.SysCallError):
            err = TLSError("connection closed during TLS (unexpected EOF, no close_notify)")
        else:
            err = TLSError(_describe(exc))
        self._error = err
        return err

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def handshake(self) -> bool:
        self._check()
        if self._handshake_done:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._fail(exc) from None
        self._handshake_done = True
        if self._conn.get_protocol_version_name() != "TLSv1.3":  # belt and braces: contexts pin 1.3
            raise self._fail(SSL.Error("negotiated protocol is not TLS 1.3"))
        return True

    def read(self, n: int = READ_CHUNK) -> bytes | None:
        self._check()
        try:
            return self._conn.recv(n)
        except SSL.WantReadError:
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.Error as exc:
            raise self._fail(exc) from None

    def pending(self) -> int:
        return self._conn.pending()

    def write(self, data: bytes) -> None:
        self._check()
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise self._fail(exc) from None

    def close_notify(self) -> None:
        """Send close_notify (our write side is done); reading may continue (TLS 1.3 §6.1)."""
        if self._error is not None:
            return
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    # -- connection facts ---------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done

    def export(self, label: bytes, length: int, context: bytes | None) -> bytes:
        """RFC 8446 §7.5 TLS-Exporter. Under TLS 1.3 no context equals an empty context."""
        if not self._handshake_done:
            raise RuntimeError("exporter used before the handshake completed")
        return self._conn.export_keying_material(label, length, context)

    @property
    def hash_name(self) -> str:
        """The suite's HKDF hash: SHA-384 for ``*_SHA384`` suites, else SHA-256 (RFC 8446 B.4)."""
        name = self._conn.get_cipher_name() or ""
        return "sha384" if name.endswith("SHA384") else "sha256"

    @property
    def cipher(self) -> str:
        return self._conn.get_cipher_name() or ""

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def peer_certificate(self) -> x509.Certificate | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert

    def peer_chain(self) -> list[x509.Certificate]:
        chain = self._conn.get_peer_cert_chain(as_cryptography=True)
        return list(chain or [])

    def session_reused(self) -> bool:
        return bool(_lib.SSL_session_reused(self._conn._ssl))


def _describe(exc: Exception) -> str:
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        parts = []
        for item in args:
            if isinstance(item, tuple) and len(item) == 3:
                parts.append(str(item[2]))
            else:
                parts.append(str(item))
        return "TLS error: " + "; ".join(parts)
    return f"TLS error: {exc}"


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
