"""Human-readable rendering of an ``AttestationReport`` (the JSON form is ``report.to_json()``).

Much of a report is the server's to choose — a CMW media type, an ERROR frame's reason, claims
inside the evidence — and it goes to a terminal: every character that is not printable (escape
sequences, line breaks, other controls) is written as a Python escape (``\\x1b``), so a hostile
server can neither drive the terminal nor add lines (a forged "Verdict: PASS") to the report.
"""

from __future__ import annotations

from atls_proxy.verify.result import AttestationReport, Check


def _safe(text: object) -> str:
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _line(c: Check) -> str:
    mark = "SKIP" if c.skipped else "PASS" if c.passed else "FAIL"
    out = f"  [{mark}] {_safe(c.name):<26} {_safe(c.detail)}"
    if c.observed is not None:
        out += f"\n         {'':<26} observed: {_safe(c.observed)}"
    if c.expected is not None:
        out += f"\n         {'':<26} expected: {_safe(c.expected)}"
    return out


def render_text(report: AttestationReport) -> str:
    lines = [f"Attestation report for {_safe(report.target)}", "", "Connection"]
    lines += [_line(c) for c in report.checks]
    for a in report.appraisals:
        lines += [
            "",
            f"Evidence: {_safe(a.evidence_type)}"
            + ("  (SIMULATED: no hardware root of trust)" if a.simulated else ""),
        ]
        lines += [_line(c) for c in a.checks]
    lines.append("")
    failure = report.first_failure
    if report.passed:
        skipped = report.skipped
        if skipped:
            names = ", ".join(_safe(c.name) for c in skipped)
            lines.append(f"Verdict: PASS, every check that ran passed (status {report.tier.label})")
            lines.append(f"WARNING: not checked, by configuration: {names}.")
        else:
            lines.append(f"Verdict: PASS, every check passed (status {report.tier.label})")
        if report.simulated:
            lines.append(
                "WARNING: the evidence is simulated (software attester); it proves nothing about hardware."
            )
    else:
        assert failure is not None
        lines.append(f"Verdict: FAIL at {_safe(failure.name)}: {_safe(failure.detail)}")
    return "\n".join(lines)
