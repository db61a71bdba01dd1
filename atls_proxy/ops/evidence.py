"""Hardware evidence formats, wired generically: each format ``fmt`` has a sans-IO package
``atls_proxy.verify.<fmt>`` (policy parser, appraisal, Verifier class, MEDIA_TYPE) and an I/O
module ``atls_proxy.ops.<fmt>_files`` (``load_<fmt>_trust``). This module loads trust material and
builds verifiers for the relying party and for ``atls-proxy verify-evidence``."""

from __future__ import annotations

import datetime
import importlib
import string
from pathlib import Path
from types import ModuleType
from typing import Any

from atls_proxy.errors import ConfigError
from atls_proxy.ops.files import read_capped
from atls_proxy.verify.base import Verifier
from atls_proxy.verify.policy import HARDWARE_FORMATS, Policy
from atls_proxy.verify.result import Appraisal

# An evidence file larger than this is not evidence (a TDX quote with its PCK chain is ~5-8 KiB, a
# CCA token a few KiB, a TPM quote with PCRs ~2 KiB).
MAX_EVIDENCE_FILE = 1024 * 1024


def _modules(fmt: str) -> tuple[ModuleType, ModuleType]:
    if fmt not in HARDWARE_FORMATS:
        raise ConfigError(
            "--format", f"unknown evidence format {fmt!r} (one of: {', '.join(HARDWARE_FORMATS)})"
        )
    return importlib.import_module(f"atls_proxy.verify.{fmt}"), importlib.import_module(
        f"atls_proxy.ops.{fmt}_files"
    )


def default_policy(fmt: str) -> Any:
    """The format's policy with every default (debug forbidden, best TCB only, nothing pinned)."""
    module, _ = _modules(fmt)
    return getattr(module, f"parse_{fmt}_policy")({}, fmt, _no_files)


def _no_files(name: str) -> bytes:
    raise OSError(f"no file may be named here ({name})")


def load_trust(fmt: str, collateral: Path | None, certs: Path | None) -> Any:
    _, files = _modules(fmt)
    return getattr(files, f"load_{fmt}_trust")(collateral, certs)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def verifiers_for_policy(policy: Policy, policy_file: Path) -> list[Verifier]:
    """One verifier per hardware section of ``policy``, with trust from ``[trust.<fmt>]``."""
    out: list[Verifier] = []
    base = policy_file.parent
    for fmt, fmt_policy in policy.hardware.items():
        module, _ = _modules(fmt)
        collateral, certs = policy.trust_dirs.get(fmt, (None, None))
        trust = load_trust(
            fmt,
            (base / collateral) if collateral else None,
            (base / certs) if certs else None,
        )
        cls = getattr(module, f"{fmt.capitalize()}Verifier")
        out.append(cls(fmt_policy, trust, now_utc, policy_id=policy.policy_id))
    return out


def read_evidence(path: Path) -> bytes:
    """Evidence bytes from a file; a file holding only hex digits (and whitespace) is decoded."""
    try:
        data = read_capped(path, MAX_EVIDENCE_FILE)
    except OSError as exc:
        raise ConfigError("evidence", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_EVIDENCE_FILE:
        raise ConfigError("evidence", f"{path} is larger than {MAX_EVIDENCE_FILE} bytes")
    # Whitespace anywhere (``xxd -p`` writes 60 digits a line) is not part of the hex digits.
    digits = b"".join(data.split())
    if digits and len(digits) % 2 == 0 and all(chr(c) in string.hexdigits for c in digits):
        return bytes.fromhex(digits.decode())
    return data


def appraise_file(
    fmt: str,
    evidence: bytes,
    *,
    policy: Any,
    trust: Any,
    now: datetime.datetime,
    expected_report_data: bytes | None,
    policy_id: str,
) -> Appraisal:
    module, _ = _modules(fmt)
    appraise = getattr(module, f"appraise_{fmt}")
    result: Appraisal = appraise(
        evidence,
        policy=policy,
        trust=trust,
        now=now,
        expected_report_data=expected_report_data,
        policy_id=policy_id,
    )
    return result
