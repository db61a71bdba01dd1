"""From a CMW to appraisals: demultiplex the records and hand each to the verifier for its type.

Sans-IO. Every record must be Evidence (``ind`` absent or with the Evidence bit, RFC 9999 "CM Type")
and must have a verifier; a record that cannot be appraised fails, it is never skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from atls_proxy.errors import DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import IND_EVIDENCE, decode_cmw, records
from atls_proxy.verify.base import Verifier
from atls_proxy.verify.result import Appraisal, Check


def appraise_cmw(
    cmw_bytes: bytes, expected: Binding, verifiers: Sequence[Verifier], now: float
) -> list[Appraisal]:
    try:
        cmw = decode_cmw(cmw_bytes)
    except DecodeError as exc:
        return [Appraisal("cmw", [Check("cmw.decode", False, str(exc))])]
    out: list[Appraisal] = []
    for path, rec in records(cmw):
        where = f" at {path}" if path else ""
        media = (
            rec.media_type
            if isinstance(rec.media_type, str)
            else f"coap-content-format {rec.media_type}"
        )
        if rec.ind is not None and not rec.ind & IND_EVIDENCE:
            out.append(
                Appraisal(
                    media,
                    [
                        Check(
                            "cmw.type",
                            False,
                            f"record{where} is not Evidence",
                            observed=f"ind={rec.ind}",
                        )
                    ],
                )
            )
            continue
        verifier = next((v for v in verifiers if v.accepts(media)), None)
        if verifier is None:
            out.append(
                Appraisal(
                    media,
                    [
                        Check(
                            "cmw.media-type",
                            False,
                            f"no verifier configured for this evidence{where}",
                            observed=media,
                        )
                    ],
                )
            )
            continue
        appraisal = verifier.appraise(media, rec.value, expected, now)
        appraisal.checks.insert(
            0,
            Check("cmw.media-type", True, f"evidence record{where} has a verifier", observed=media),
        )
        out.append(appraisal)
    return out
