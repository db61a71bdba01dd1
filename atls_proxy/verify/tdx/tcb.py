"""TDX TCB evaluation: TCB level, TDX module identity, QE identity, combined status (sans-IO).

The rules are Intel's, as published in the PCS API documentation ("TCB Info V3 for TDX":
how to find the TCB level and the TDX module TCB level) and implemented by Intel's Quote
Verification Library (intel/SGX-TDX-DCAP-QuoteVerificationLibrary,
Src/AttestationLibrary/src/Verifiers/: QuoteVerifier.cpp steps 4.1.2.4.11-17,
Checks/TcbLevelCheck.cpp, Checks/TdxModuleCheck.cpp, Checks/TDRelaunchCheck.cpp,
EnclaveReportVerifier.cpp steps 4.1.2.9.5-11). Nothing here is copied; the steps are:

1. TDX module identity (QVL 4.1.2.4.11): if TEE_TCB_SVN[1] (the module major version) is 0, the
   ``tdxModule`` entry applies; otherwise the ``tdxModuleIdentities`` entry whose id is
   ``"TDX_%02X" % TEE_TCB_SVN[1]`` (missing: mismatch). MRSIGNERSEAM must equal its ``mrsigner``;
   SEAMATTRIBUTES must be zero and equal to its ``attributes``.
2. Platform TCB level (4.1.2.4.17.1-3): walk the levels highest first. The SGX level is the first
   whose 16 SGX components are all <= the PCK certificate's and whose PCESVN <= the PCK's; the TDX
   level is the first level (from there on) that also has every TDX component <= TEE_TCB_SVN,
   comparing indices 2..15 only when TEE_TCB_SVN[1] > 0. None: "TCB not supported".
3. Module TCB level (TdxModuleCheck): when TEE_TCB_SVN[1] > 0, the first identity level (highest
   ISVSVN first) with ISVSVN <= TEE_TCB_SVN[0]; none: not supported. Version 0: UpToDate.
4. Converge (convergeTcbStatusWithTdxModuleStatus): module OutOfDate turns UpToDate or
   SWHardeningNeeded into OutOfDate, and the two ConfigurationNeeded statuses into
   OutOfDateConfigurationNeeded; module Revoked gives Revoked.
5. TD relaunch (TD 1.5 bodies only, TDRelaunchCheck): if the QE is not out of date, the SGX level
   is one of the four good statuses, the TDX status is OutOfDate(ConfigurationNeeded) and the
   module is OutOfDate, but TEE_TCB_SVN2 (the module the TD would get on relaunch) reaches the
   newest level, the status becomes TDRelaunchAdvised(ConfigurationNeeded).
6. QE identity (4.1.2.9.5-10): (MISCSELECT & mask) == miscselect, (ATTRIBUTES & mask) ==
   attributes, MRSIGNER and ISVPRODID equal; QE TCB status from the first level (highest ISVSVN
   first) with ISVSVN <= the QE's ISVSVN; none: not supported.
7. Converge with the QE (convergeTcbStatusWithQeTcbStatus): QE OutOfDate turns UpToDate or
   SWHardeningNeeded into OutOfDate and the ConfigurationNeeded ones into
   OutOfDateConfigurationNeeded; QE Revoked gives Revoked.

Advisory IDs reported are the union of those on the matched TDX level, the module level and the
QE level (what ``dcap-qvl`` 0.7.0 reports for the vectors, too).
"""

from __future__ import annotations

from dataclasses import dataclass

from atls_proxy.verify.tdx.collateral import (
    IsvTcbLevel,
    ModuleIdentity,
    QeIdentity,
    TcbInfo,
    TcbLevel,
)
from atls_proxy.verify.tdx.pck import PckExtensions
from atls_proxy.verify.tdx.quote import SgxReport, TdReport

UP_TO_DATE = "UpToDate"
SW_HARDENING_NEEDED = "SWHardeningNeeded"
CONFIGURATION_NEEDED = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
REVOKED = "Revoked"
TD_RELAUNCH_ADVISED = "TDRelaunchAdvised"
TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED = "TDRelaunchAdvisedConfigurationNeeded"

# Every combined status an appraisal can report (a policy may accept any but Revoked).
TCB_STATUSES = (
    UP_TO_DATE,
    SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    OUT_OF_DATE,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    TD_RELAUNCH_ADVISED,
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    REVOKED,
)
_GOOD_SGX = (
    UP_TO_DATE,
    SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
)
_CONFIG = (
    CONFIGURATION_NEEDED,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One evaluation step: ``ok`` False means "mismatch / not supported", with the reason."""

    ok: bool
    detail: str
    observed: str
    expected: str


@dataclass(frozen=True, slots=True)
class ModuleMatch:
    outcome: Outcome
    identity: ModuleIdentity | None


def match_module(info: TcbInfo, body: TdReport) -> ModuleMatch:
    """Step 1: the TDX module identity applying to this quote, and MRSIGNERSEAM/SEAMATTRIBUTES."""
    version = body.tee_tcb_svn[1]
    if version == 0:
        identity = info.tdx_module
        name = "tdxModule"
    else:
        want = f"TDX_{version:02X}"
        found = [m for m in info.module_identities if m.id.upper() == want]
        if not found:
            have = ", ".join(m.id for m in info.module_identities) or "none"
            return ModuleMatch(
                Outcome(
                    False,
                    f"TEE_TCB_SVN[1] = {version}: TCB Info has no TDX module identity {want}",
                    want,
                    have,
                ),
                None,
            )
        identity = found[0]
        name = identity.id
    if body.mrsignerseam != identity.mrsigner:
        return ModuleMatch(
            Outcome(
                False,
                f"MRSIGNERSEAM differs from the {name} mrsigner in TCB Info",
                body.mrsignerseam.hex(),
                identity.mrsigner.hex(),
            ),
            None,
        )
    if any(body.seam_attributes) or body.seam_attributes != identity.attributes:
        return ModuleMatch(
            Outcome(
                False,
                f"SEAMATTRIBUTES must be zero and equal the {name} attributes",
                body.seam_attributes.hex(),
                identity.attributes.hex(),
            ),
            None,
        )
    return ModuleMatch(
        Outcome(
            True,
            f"TDX module identity {name}: MRSIGNERSEAM and SEAMATTRIBUTES match",
            f"mrsignerseam {body.mrsignerseam.hex()}",
            name,
        ),
        identity,
    )


def _tdx_ge(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


@dataclass(frozen=True, slots=True)
class LevelMatch:
    outcome: Outcome
    sgx_level: TcbLevel | None
    tdx_level: TcbLevel | None
    module_level: IsvTcbLevel | None


def match_levels(
    info: TcbInfo, pck: PckExtensions, body: TdReport, module: ModuleIdentity
) -> LevelMatch:
    """Steps 2-3: the platform TCB level(s) and the TDX module TCB level."""
    svn = body.tee_tcb_svn
    observed = (
        f"sgx {bytes(pck.sgx_tcb_components).hex()} pcesvn {pck.pce_svn} tee_tcb_svn {svn.hex()}"
    )
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    for level in info.tcb_levels:
        if pck.pce_svn < level.pce_svn or any(
            mine < theirs
            for mine, theirs in zip(pck.sgx_tcb_components, level.sgx_components, strict=True)
        ):
            continue
        if sgx_level is None:
            sgx_level = level
        if _tdx_ge(svn, level):
            tdx_level = level
            break
    lowest = info.tcb_levels[-1].describe()
    if sgx_level is None:
        return LevelMatch(
            Outcome(
                False,
                "TCB not supported: the PCK certificate's SGX components / PCESVN are below "
                "every TCB level",
                observed,
                f"at least the lowest level: {lowest}",
            ),
            None,
            None,
            None,
        )
    if tdx_level is None:
        return LevelMatch(
            Outcome(
                False,
                "TCB not supported: TEE_TCB_SVN is below every TCB level the SGX TCB reaches",
                observed,
                f"at least the lowest level: {lowest}",
            ),
            sgx_level,
            None,
            None,
        )
    module_level: IsvTcbLevel | None = None
    if svn[1] > 0:
        module_level = next((lv for lv in module.tcb_levels if svn[0] >= lv.isvsvn), None)
        if module_level is None:
            floor = min((lv.isvsvn for lv in module.tcb_levels), default=None)
            return LevelMatch(
                Outcome(
                    False,
                    f"TCB not supported: TDX module ISVSVN {svn[0]} is below every level of "
                    f"{module.id}",
                    f"module isvsvn {svn[0]}",
                    f"isvsvn >= {floor}",
                ),
                sgx_level,
                tdx_level,
                None,
            )
    module_text = (
        f"; module {module.id} isvsvn {module_level.isvsvn} {module_level.status}"
        if module_level is not None
        else ""
    )
    return LevelMatch(
        Outcome(
            True,
            f"matched TDX TCB level {tdx_level.describe()}{module_text}",
            observed,
            tdx_level.describe(),
        ),
        sgx_level,
        tdx_level,
        module_level,
    )


@dataclass(frozen=True, slots=True)
class QeMatch:
    outcome: Outcome
    level: IsvTcbLevel | None


def match_qe(identity: QeIdentity, report: SgxReport) -> QeMatch:
    """Step 6: the QE report against the TD_QE identity, and the QE TCB level."""
    if report.miscselect & identity.miscselect_mask != identity.miscselect:
        return QeMatch(
            Outcome(
                False,
                "QE MISCSELECT (masked) differs from the QE identity",
                f"{report.miscselect:08x}",
                f"{identity.miscselect:08x} (mask {identity.miscselect_mask:08x})",
            ),
            None,
        )
    masked = bytes(a & m for a, m in zip(report.attributes, identity.attributes_mask, strict=True))
    if masked != identity.attributes:
        return QeMatch(
            Outcome(
                False,
                "QE ATTRIBUTES (masked) differ from the QE identity",
                report.attributes.hex(),
                f"{identity.attributes.hex()} (mask {identity.attributes_mask.hex()})",
            ),
            None,
        )
    if report.mrsigner != identity.mrsigner:
        return QeMatch(
            Outcome(
                False,
                "QE MRSIGNER is not Intel's TD_QE signer",
                report.mrsigner.hex(),
                identity.mrsigner.hex(),
            ),
            None,
        )
    if report.isvprodid != identity.isvprodid:
        return QeMatch(
            Outcome(
                False,
                "QE ISVPRODID differs from the QE identity",
                str(report.isvprodid),
                str(identity.isvprodid),
            ),
            None,
        )
    level = next((lv for lv in identity.tcb_levels if report.isvsvn >= lv.isvsvn), None)
    if level is None:
        return QeMatch(
            Outcome(
                False,
                f"QE ISVSVN {report.isvsvn} is below every QE identity TCB level (not supported)",
                f"isvsvn {report.isvsvn}",
                f"isvsvn >= {identity.tcb_levels[-1].isvsvn}",
            ),
            None,
        )
    return QeMatch(
        Outcome(
            True,
            f"TD_QE: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES match; QE TCB "
            f"{level.status} (isvsvn {report.isvsvn} >= level {level.isvsvn}, {level.tcb_date})",
            f"mrsigner {report.mrsigner.hex()} isvprodid {report.isvprodid} isvsvn {report.isvsvn}",
            f"mrsigner {identity.mrsigner.hex()} isvprodid {identity.isvprodid}",
        ),
        level,
    )


# The statuses a TDX module or QE identity level may carry (QVL: TdxModuleCheck and
# EnclaveReportVerifier); the platform level's list is longer.
_ISV_STATUSES = (UP_TO_DATE, OUT_OF_DATE, REVOKED)


def _qe_status(status: str) -> str:
    """QVL (EnclaveReportVerifier, 4.1.2.9.9): a QE level that is not UpToDate is OutOfDate,
    unless it is Revoked — whatever else it says."""
    return status if status in (UP_TO_DATE, REVOKED) else OUT_OF_DATE


def _converge(status: str, other: str) -> str:
    """QVL's convergence of a level status with a module or QE status (steps 4 and 7)."""
    if other == OUT_OF_DATE:
        if status in (UP_TO_DATE, SW_HARDENING_NEEDED):
            return OUT_OF_DATE
        if status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return OUT_OF_DATE_CONFIGURATION_NEEDED
    if other == REVOKED:
        return REVOKED
    return status


def _relaunch(
    info: TcbInfo, body: TdReport, sgx_status: str, tdx_status: str, module_status: str
) -> str:
    """Step 5 (TD 1.5 bodies): whether relaunching the TD would reach the newest TCB."""
    svn2 = body.tee_tcb_svn2
    if (
        svn2 is None
        or sgx_status not in _GOOD_SGX
        or tdx_status not in (OUT_OF_DATE, OUT_OF_DATE_CONFIGURATION_NEEDED)
        or module_status != OUT_OF_DATE
    ):
        return tdx_status
    latest = info.tcb_levels[0]
    if svn2[1] == 0:
        reaches = svn2[0] >= latest.tdx_components[0] and svn2[2] >= latest.tdx_components[2]
    else:
        want = f"TDX_{svn2[1]:02X}"
        identity = next((m for m in info.module_identities if m.id.upper() == want), None)
        if identity is None or not identity.tcb_levels:
            return tdx_status
        reaches = svn2[0] >= identity.tcb_levels[0].isvsvn and svn2[2] >= latest.tdx_components[2]
    if not reaches:
        return tdx_status
    if sgx_status in _CONFIG or tdx_status in _CONFIG:
        return TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
    return TD_RELAUNCH_ADVISED


@dataclass(frozen=True, slots=True)
class TcbVerdict:
    status: str
    advisory_ids: tuple[str, ...]
    explanation: str


def combine(info: TcbInfo, body: TdReport, levels: LevelMatch, qe_level: IsvTcbLevel) -> TcbVerdict:
    """Steps 4, 5 and 7: the combined TCB status with its advisory IDs."""
    assert levels.sgx_level is not None and levels.tdx_level is not None
    platform = levels.tdx_level.status
    module = levels.module_level.status if levels.module_level is not None else UP_TO_DATE
    parts = [f"TDX level {platform}", f"module {module}"]
    if module in _ISV_STATUSES:
        status = _converge(platform, module)
    else:
        # QVL fails a module level with any other status (STATUS_TCB_UNRECOGNIZED_STATUS). Not
        # carried through as it is: a known platform status there (ConfigurationNeeded, say)
        # could be one a policy accepts.
        status = f"UnrecognizedModuleStatus({module})"
    if status != REVOKED and body.tee_tcb_svn2 is not None and qe_level.status == UP_TO_DATE:
        relaunched = _relaunch(info, body, levels.sgx_level.status, status, module)
        if relaunched != status:
            parts.append(f"TEE_TCB_SVN2 reaches the newest level: {relaunched}")
            status = relaunched
    qe = _qe_status(qe_level.status)
    parts.append(f"QE {qe_level.status}" + (f" (as {qe})" if qe != qe_level.status else ""))
    status = _converge(status, qe)
    advisories: list[str] = []
    sources: list[IsvTcbLevel | TcbLevel | None] = [levels.tdx_level, levels.module_level, qe_level]
    for source in sources:
        if source is not None:
            advisories.extend(a for a in source.advisory_ids if a not in advisories)
    return TcbVerdict(status, tuple(advisories), ", ".join(parts))
