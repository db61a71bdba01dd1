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

Fast paths: the per-record calls (``handshake``, ``feed``, ``outgoing``, ``read``, ``write``,
``export``) go to OpenSSL through pyOpenSSL's own cffi bindings (``OpenSSL._util.lib``) on the
``SSL``/``BIO`` handles of the pyOpenSSL ``Connection``, into one reusable buffer per thread.
pyOpenSSL's wrappers answer "no data yet" with an exception and allocate a buffer per call; on an
attested connection that was ~10 exceptions and allocations, a few µs each, per side. Only the
outcome codes that mean "no data" (``SSL_ERROR_WANT_READ``, an empty BIO) and "close_notify" are
handled here; every other outcome goes to pyOpenSSL's error translation, so errors read exactly as
before.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import threading

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib  # fast paths and SSL_session_reused (no public wrapper)

from atls_proxy.errors import AtlsError


class TLSError(AtlsError):
    """The TLS layer failed (handshake, certificate, record, truncation)."""


# One TLS record carries at most 16 KiB of plaintext; reading 64 KiB at a time lets one call
# drain several records without holding more than that per connection.
READ_CHUNK = 65536

_WANT_READ = _lib.SSL_ERROR_WANT_READ
_ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
_no_zero = _ffi.new_allocator(should_clear_after_alloc=False)


def _copy(buf: object, n: int) -> bytes:
    """The first ``n`` bytes of a cffi buffer, as bytes."""
    out: bytes = _ffi.buffer(buf, n)[:]
    return out


class _Scratch(threading.local):
    """One READ_CHUNK buffer per thread: OpenSSL copies into it, we copy out before returning
    (cffi releases the GIL during the call, so a buffer shared between threads would race)."""

    def __init__(self) -> None:
        self.buf = _no_zero("char[]", READ_CHUNK)


_scratch = _Scratch()


class TLSEngine:
    __slots__ = ("_conn", "_error", "_handshake_done", "_hash_name", "_server_side")

    def __init__(
        self, context: SSL.Context, server_side: bool, server_name: str | None = None
    ) -> None:
        self._conn = SSL.Connection(context, None)
        self._server_side = server_side
        if server_side:
            self._conn.set_accept_state()
        else:
            sni = _sni(server_name) if server_name else None
            if sni is not None:
                self._conn.set_tlsext_host_name(sni)
            self._conn.set_connect_state()
        self._handshake_done = False
        self._hash_name = "sha256"
        self._error: TLSError | None = None

    # -- bytes in and out ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:  # OpenSSL's BIO_write fails on zero bytes
            return
        # A memory BIO takes everything or nothing (allocation failure); pyOpenSSL's bio_write
        # retries the nothing case and turns a failure into its exception.
        n = _lib.BIO_write(self._conn._into_ssl, data, len(data))
        if n <= 0:
            self._conn.bio_write(data)
        elif n != len(data):
            raise TLSError(f"short write into the TLS input buffer ({n} of {len(data)} bytes)")

    def feed_eof(self) -> None:
        self._conn.bio_shutdown()

    def outgoing(self) -> bytes:
        """Everything OpenSSL has queued for the peer (``b""`` when nothing is)."""
        bio = self._conn._from_ssl
        buf = _scratch.buf
        n = _lib.BIO_read(bio, buf, READ_CHUNK)
        if n <= 0:  # an empty memory BIO: nothing to send (it never fails otherwise)
            return b""
        first = _copy(buf, n)
        if n < READ_CHUNK:
            return first
        chunks = [first]
        while (n := _lib.BIO_read(bio, buf, READ_CHUNK)) > 0:
            chunks.append(_copy(buf, n))
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
        ssl = self._conn._ssl
        result = _lib.SSL_do_handshake(ssl)
        if result <= 0:
            if _lib.SSL_get_error(ssl, result) == _WANT_READ:  # needs the peer's next flight
                return False
            try:  # pyOpenSSL turns the code and OpenSSL's error queue into the exception
                self._conn._raise_ssl_error(ssl, result)
            except SSL.Error as exc:
                raise self._fail(exc) from None
            raise self._fail(SSL.Error(f"SSL_do_handshake failed ({result})"))
        self._handshake_done = True
        if self._conn.get_protocol_version_name() != "TLSv1.3":  # belt and braces: contexts pin 1.3
            raise self._fail(SSL.Error("negotiated protocol is not TLS 1.3"))
        # The suite's HKDF hash: SHA-384 for *_SHA384 suites, else SHA-256 (RFC 8446 B.4).
        if (self._conn.get_cipher_name() or "").endswith("SHA384"):
            self._hash_name = "sha384"
        return True

    def read(self, n: int = READ_CHUNK) -> bytes | None:
        self._check()
        ssl = self._conn._ssl
        buf = _scratch.buf
        got = _lib.SSL_read(ssl, buf, min(n, READ_CHUNK))
        if got > 0:
            return _copy(buf, got)
        code = _lib.SSL_get_error(ssl, got)
        if code == _WANT_READ:
            return None
        if code == _ZERO_RETURN:
            return b""
        try:  # pyOpenSSL turns the code and OpenSSL's error queue into the exception
            self._conn._raise_ssl_error(ssl, got)
        except SSL.Error as exc:
            raise self._fail(exc) from None
        raise self._fail(SSL.Error(f"SSL_read failed (SSL_get_error {code})"))

    def pending(self) -> int:
        return self._conn.pending()

    def write(self, data: bytes) -> None:
        self._check()
        if not data:
            return
        # Into a memory BIO a write completes at once; anything else (a partial write, an
        # error) is left to pyOpenSSL's sendall, which loops and translates errors.
        done = _lib.SSL_write(self._conn._ssl, data, len(data))
        if done == len(data):
            return
        try:
            self._conn.sendall(data[done:] if done > 0 else data)
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
        out = _no_zero("unsigned char[]", length)
        ok = _lib.SSL_export_keying_material(
            self._conn._ssl,
            out,
            length,
            label,
            len(label),
            _ffi.NULL if context is None else context,
            0 if context is None else len(context),
            0 if context is None else 1,
        )
        if ok != 1:
            _lib.ERR_clear_error()  # not left queued for the next connection's error message
            raise TLSError("TLS exporter failed")
        return _copy(out, length)

    @property
    def hash_name(self) -> str:
        """The suite's HKDF hash (fixed when the handshake completes)."""
        if not self._handshake_done:
            raise RuntimeError("the suite's hash is known once the handshake completed")
        return self._hash_name

    @property
    def cipher(self) -> str:
        return self._conn.get_cipher_name() or ""

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def peer_certificate(self) -> x509.Certificate | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert

    def peer_certificate_der(self) -> bytes | None:
        """The peer's certificate as DER, straight from OpenSSL (no pyOpenSSL or ``cryptography``
        objects: a caller that sees the same certificate on every connection parses it once)."""
        cert = _lib.SSL_get_peer_certificate(self._conn._ssl)  # a new reference
        if cert == _ffi.NULL:
            return None
        bio = _lib.BIO_new(_lib.BIO_s_mem())
        try:
            if bio == _ffi.NULL or _lib.i2d_X509_bio(bio, cert) != 1:
                _lib.ERR_clear_error()
                raise TLSError("cannot encode the peer certificate")
            data = _ffi.new("char**")
            n = _lib.BIO_get_mem_data(bio, data)
            return _copy(data[0], n)
        finally:
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
            _lib.X509_free(cert)

    def peer_chain(self) -> list[x509.Certificate]:
        chain = self._conn.get_peer_cert_chain(as_cryptography=True)
        return list(chain or [])

    def session_reused(self) -> bool:
        return bool(_lib.SSL_session_reused(self._conn._ssl))

    def chain_verified(self) -> bool:
        """Whether OpenSSL verified the peer's chain in this handshake (X509_V_OK with a
        verifying context): what a report may claim as "chain verified"."""
        ssl = self._conn._ssl
        return bool(_lib.SSL_get_verify_mode(ssl) & _lib.SSL_VERIFY_PEER) and (
            _lib.SSL_get_verify_result(ssl) == _lib.X509_V_OK
        )


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


@functools.lru_cache(maxsize=64)
def _sni(server_name: str) -> bytes | None:
    """The SNI host_name for ``server_name``; None for IP literals, which are not sent
    (RFC 6066 §3). A client names the same few servers on every connection: computed once."""
    # Without a trailing dot: RFC 6066 §3 (a fully qualified "name." is the same host).
    return None if _is_ip_literal(server_name) else server_name.rstrip(".").encode("idna")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
