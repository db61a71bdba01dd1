"""Human-readable rendering of an ``AttestationReport`` (the JSON form is ``report.to_json()``)."""

from __future__ import annotations

from atls_proxy.verify.result import AttestationReport, Check


def _line(c: Check) -> str:
    mark = "PASS" if c.passed else "FAIL"
    out = f"  [{mark}] {c.name:<26} {c.detail}"
    if c.observed is not None:
        out += f"\n         {'':<26} observed: {c.observed}"
    if c.expected is not None:
        out += f"\n         {'':<26} expected: {c.expected}"
    return out


def render_text(report: AttestationReport) -> str:
    lines = [f"Attestation report for {report.target}", "", "Connection"]
    lines += [_line(c) for c in report.checks]
    for a in report.appraisals:
        lines += [
            "",
            f"Evidence: {a.evidence_type}"
            + ("  (SIMULATED: no hardware root of trust)" if a.simulated else ""),
        ]
        lines += [_line(c) for c in a.checks]
    lines.append("")
    failure = report.first_failure
    if report.passed:
        lines.append(f"Verdict: PASS, every check passed (status {report.tier.label})")
        if report.simulated:
            lines.append(
                "WARNING: the evidence is simulated (software attester); it proves nothing about hardware."
            )
    else:
        assert failure is not None
        lines.append(f"Verdict: FAIL at {failure.name}: {failure.detail}")
    return "\n".join(lines)
