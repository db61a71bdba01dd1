"""This project's Expat profile: the values the drafts leave open, and the cmw_attestation extension.

cmw_attestation in a request:          ext_type(2) ‖ 0x0000                (expat-04 §3.1)
cmw_attestation in CertificateEntry 0: ext_type(2) ‖ ext_len(2) ‖ uint16 cmw_len ‖ cmw   (expat-04 §3)
"""

from __future__ import annotations

from dataclasses import dataclass

from atls_proxy.errors import ProtocolError
from atls_proxy.expat.binding import DEFAULT_EXPORTER_LABEL
from atls_proxy.expat.cmw import MAX_CMW_SIZE
from atls_proxy.expat.messages import Extension
from atls_proxy.expat.wire import Reader, opaque

# Private-use code point until IANA assigns one (expat-04 §9.1, digest O-14). 0xFF00 matches cocos.
DEFAULT_EXTENSION_TYPE = 0xFF00


@dataclass(frozen=True, slots=True)
class ExpatProfile:
    """Interop switches (digest §8). Defaults are expat-04 with RFC 9261's transcript."""

    exporter_label: bytes = DEFAULT_EXPORTER_LABEL
    extension_type: int = DEFAULT_EXTENSION_TYPE
    request_header_in_transcript: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.extension_type <= 0xFFFF:
            raise ValueError("extension_type is a uint16")
        # RFC 8446 §7.1: HkdfLabel.label is "tls13 " ‖ label in an opaque<7..255>, so at most 249.
        if not self.exporter_label or len(self.exporter_label) > 249:
            raise ValueError("exporter label must be 1..249 bytes")

    def offer(self) -> Extension:
        """The empty cmw_attestation extension that offers attestation in a request."""
        return Extension(self.extension_type, b"")

    def attestation_extension(self, cmw: bytes) -> Extension:
        # The extension alone could carry 65533 bytes (expat-04 §3); in the first
        # CertificateEntry, whose extensions are themselves a uint16 vector, 65529 (cmw.py).
        if not 1 <= len(cmw) <= MAX_CMW_SIZE:
            raise ValueError(f"cmw_data is 1..{MAX_CMW_SIZE} bytes in a CertificateEntry")
        return Extension(self.extension_type, opaque(2, cmw, minimum=1))

    def parse_attestation_extension(self, ext: Extension) -> bytes:
        r = Reader(ext.data, "cmw_attestation")
        cmw = r.opaque(2, minimum=1)
        r.end()
        return cmw

    def check_offer_is_empty(self, ext: Extension) -> None:
        if ext.data:
            raise ProtocolError(
                "cmw_attestation in a request must be empty (expat-04 §3.1)",
                ProtocolError.DECODE_ERROR,
                check="expat.offer",
            )
