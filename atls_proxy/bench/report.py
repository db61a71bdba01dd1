"""Reporting the bench suite: a markdown table, the JSON document, and a PNG chart.

The JSON document is what ``atls_proxy.bench.workloads.run_suite`` returns, printed as is: every
raw figure of every run, the machine and the software versions. The markdown starts with the
ratios of the subject of each workload to each baseline — per server CPU-second, with the end-to-
end ratio in parentheses — then one row per peer (median [min–max]; errors: the sum over the
runs). The chart (matplotlib, Agg backend, an optional dependency: ``pip install
'atls-proxy[bench]'``) has one row per workload: throughput, work per server CPU-second and
latency per peer.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from atls_proxy.bench.workloads import BASELINES, THROUGHPUT_WORKLOADS

MATPLOTLIB_MISSING = (
    "the chart needs matplotlib, which is not installed: python3 -m pip install matplotlib "
    "(or the 'bench' extra: pip install 'atls-proxy[bench]'), or leave out --png"
)
PEER_COLORS = {
    "off": "#e6862a",
    "off-asyncio": "#f5c08a",
    "haproxy": "#3a9d4a",
    "direct": "#8c8c8c",
}
ATLS_COLORS = ("#1f5fa8", "#5b95d6", "#9cc2ec")
SHORT_UNITS = {"attest": "conn/s", "handshake": "conn/s", "small": "req/s", "bulk": "MB/s"}
PER_CPU_UNITS = {"attest": "conn", "handshake": "conn", "small": "req", "bulk": "MB"}
# Bars switch to a log axis when the largest value exceeds the smallest by more than this.
LOG_SPREAD = 25.0
PEER_ORDER = ("off-asyncio", "off", "haproxy", "direct")


def ordered(peers: dict[str, Any]) -> list[str]:
    """Attested peers first (in run order), then off, haproxy, direct."""
    first = [n for n in peers if n not in PEER_ORDER]
    return first + [n for n in PEER_ORDER if n in peers]


def run_kind(doc: dict[str, Any]) -> str:
    o = doc.get("options", {})
    if doc.get("quick"):
        return "quick run"
    if o.get("duration_s") == 10 and o.get("repeat") == 3:
        return "full run"
    return "custom run"


def num(x: float | None) -> str:
    if x is None:
        return "—"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _count(x: float | None) -> str:
    return "—" if x is None else f"{int(x):,}"


def short_version(tool: str, text: object) -> str:
    """``HAProxy version 2.6.12-1 2026/10/17 - https://...`` → ``2.6.12-1``; wrk likewise."""
    words = str(text).split()
    if tool == "haproxy" and len(words) >= 3 and words[1] == "version":
        return words[2]
    if tool == "wrk" and len(words) >= 2:
        return words[1]
    return str(text)


def _spread(s: dict[str, float] | None, unit: str = "") -> str:
    if s is None:
        return "—"
    u = f" {unit}" if unit else ""
    if s["min"] == s["max"]:
        return f"{num(s['median'])}{u}"
    return f"{num(s['median'])}{u} [{num(s['min'])}–{num(s['max'])}]"


def _errors(peer: dict[str, Any]) -> int | None:
    """Errors summed over the peer's runs (the other cells are medians; an error in any run
    matters). None when no run recorded them."""
    counts = [r["errors"] for r in peer.get("runs", []) if r.get("errors") is not None]
    return sum(counts) if counts else None


def _generator(peer: dict[str, Any]) -> str:
    return "wrk" if str(peer.get("generator", "")).startswith("wrk") else "asyncio"


def _header(doc: dict[str, Any]) -> list[str]:
    m = doc.get("machine", {})
    sw = doc.get("software", {})
    o = doc.get("options", {})
    kind = run_kind(doc)
    when = doc.get("started_at", "")
    pin = (
        f"proxy / HAProxy pinned to CPU {m.get('proxy_cpu')}, generators and backend to CPU "
        f"{m.get('generator_cpu')}"
        if m.get("pinned")
        else "NOT pinned (fewer than 2 CPUs)"
    )
    tools = (
        f"Python {sw.get('python')} (ssl: {sw.get('openssl')}); atls-proxy TLS: "
        f"{sw.get('pyopenssl_openssl')} (pyOpenSSL); HAProxy "
        f"{short_version('haproxy', sw.get('haproxy')) if sw.get('haproxy') else 'not installed'}"
        f" ({sw.get('haproxy_openssl') or 'its OpenSSL: unknown'}); wrk "
        f"{short_version('wrk', sw.get('wrk')) if sw.get('wrk') else 'not installed'}"
    )
    return [
        f"atls-proxy bench — {kind}, {when}",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, kernel {m.get('kernel')}; {pin}.",
        f"Software: {tools}.",
        f"Each figure: median of {o.get('repeat')} runs of {o.get('duration_s')} s "
        f"[min–max]; {o.get('connections')} connections. Attester: the SIMULATED software "
        f"attester (no TEE) with a simulated quote of {o.get('simulated_quote_ms')} ms.",
        "Generators: atls peers by the asyncio generator (open_attested, in the bench process); "
        "off-asyncio by the same generator and TLS client without Expat (attestation off); "
        "off, haproxy and direct by wrk. Per server CPU-s: work divided by the CPU seconds of "
        "the process under test (for direct: the backend).",
    ]


def _ratio_cell(
    per_cpu: dict[str, float],
    e2e: dict[str, float],
    name: str,
    flagged: bool = False,
    spreads: dict[str, dict[str, float]] | None = None,
) -> str:
    if name not in per_cpu:
        return "—"
    r = f"{per_cpu[name]:.2f}×"
    sp = (spreads or {}).get(name)
    if sp is not None and sp["min"] != sp["max"]:
        r += f" [{sp['min']:.2f}–{sp['max']:.2f}]"
    cell = f"{r} ({e2e[name]:.2f}×)" if name in e2e else r
    return cell + " !" if flagged else cell


def _with_errors(w: dict[str, Any]) -> set[str]:
    """The peers of a workload whose runs had errors."""
    return {
        name
        for name, peer in w.get("peers", {}).items()
        if any(r.get("errors") for r in peer.get("runs", []))
    }


def render_markdown(doc: dict[str, Any]) -> str:
    lines = _header(doc)
    workloads: dict[str, Any] = doc.get("workloads", {})
    idle = doc.get("idle")
    lines += [
        "",
        "Ratios, subject ÷ baseline, per server CPU-second: the median of the ratios within "
        "each round [their range] (end to end in parentheses; attest's ÷ off, ÷ haproxy and "
        "÷ direct use the handshake workload's wrk runs, so per CPU-second only, as a ratio of "
        "medians); ! = the subject or that baseline had errors, not a clean measurement; idle: RSS "
        "per connection, subject ÷ baseline (above 1 = more memory):",
        "",
        "| workload | subject | subject per server CPU-s | "
        + " | ".join(f"÷ {b}" for b in BASELINES)
        + " |",
        "|---|---|---|" + "---|" * len(BASELINES),
    ]
    for name in THROUGHPUT_WORKLOADS:
        w = workloads.get(name)
        if w is None:
            continue
        subject = w["subject"]
        peer = w["peers"].get(subject, {})
        per_cpu = peer.get("summary", {}).get("per_cpu")
        bad = _with_errors(w)
        cells = [
            _ratio_cell(
                w["ratio_per_cpu"],
                w["ratio"],
                b,
                subject in bad or b in bad,
                w.get("ratio_per_cpu_spread"),
            )
            for b in BASELINES
        ]
        lines.append(
            f"| {name} | {subject} | {_spread(per_cpu, PER_CPU_UNITS[name])} | "
            + " | ".join(cells)
            + " |"
        )
    if idle is not None:
        atls = idle["peers"]["atls"]["summary"].get("rss_per_conn_kib")
        cells = [
            f"{idle['ratio'][b]:.2f}×" if b in idle["ratio"] else "—"
            for b in ("direct", *BASELINES[1:])
        ]
        lines.append(
            f"| idle ({idle['connections']} conn) | atls | {_spread(atls, 'KiB/conn')} | "
            + " | ".join(cells)
            + " |"
        )

    lines += [
        "",
        "Per peer:",
        "",
        "| workload | peer | driven by | rate | p50 ms | p99 ms | server CPU-s | per server CPU-s "
        "| errors (sum of all runs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in THROUGHPUT_WORKLOADS:
        w = workloads.get(name)
        if w is None:
            continue
        for pname in ordered(w["peers"]):
            peer = w["peers"][pname]
            s = peer.get("summary", {})
            shared = " (as handshake)" if peer.get("shared_with") else ""
            lines.append(
                f"| {name} | {pname}{shared} | {_generator(peer)} | "
                f"{_spread(s.get('throughput'), SHORT_UNITS[name])} | "
                f"{_spread(s.get('p50_ms'))} | {_spread(s.get('p99_ms'))} | "
                f"{_spread(s.get('server_cpu_s'))} | {_spread(s.get('per_cpu'))} | "
                f"{_count(_errors(peer))} |"
            )
    if idle is not None:
        lines += [
            "",
            f"Idle ({idle['connections']} connections opened with one GET each, then held):",
            "",
            "| peer | driven by | RSS KiB per connection | connections per server CPU-s (opening) "
            "| errors (sum of all runs) |",
            "|---|---|---|---|---|",
        ]
        for pname in ordered(idle["peers"]):
            peer = idle["peers"][pname]
            s = peer.get("summary", {})
            lines.append(
                f"| {pname} | {_generator(peer)} | {_spread(s.get('rss_per_conn_kib'))} | "
                f"{_spread(s.get('per_cpu'))} | {_count(_errors(peer))} |"
            )
    skipped = dict(doc.get("skipped", {}))
    for name, w in workloads.items():
        for peer, why in w.get("skipped", {}).items():
            skipped.setdefault(peer, f"{why} ({name})")
    if skipped:
        lines += ["", "Skipped baselines (absent from the JSON, never reported as zero):"]
        lines += [f"- {k}: {v}" for k, v in skipped.items()]
    if doc.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines)


# --- PNG ----------------------------------------------------------------------------------------


def _color(peer: str, tiers: list[str]) -> str:
    """Baselines by name; attested peers in blues: ``atls`` and the first tier darkest."""
    if peer in PEER_COLORS:
        return PEER_COLORS[peer]
    tier = peer.removeprefix("atls-") if peer != "atls" else (tiers[0] if tiers else "")
    i = tiers.index(tier) if tier in tiers else 0
    return ATLS_COLORS[i % len(ATLS_COLORS)]


def _bars(
    ax: Any,
    names: list[str],
    stats: list[dict[str, float] | None],
    colors: list[str],
    title: str,
) -> None:
    """Horizontal bars (median, whiskers min–max), value labels; log axis for wide spreads."""
    import numpy as np

    y = np.arange(len(names))
    med = [s["median"] if s else 0.0 for s in stats]
    lo = [s["median"] - s["min"] if s else 0.0 for s in stats]
    hi = [s["max"] - s["median"] if s else 0.0 for s in stats]
    positive = [m for m in med if m > 0]
    top = max((s["max"] for s in stats if s), default=1.0) or 1.0
    log = bool(positive) and top / min(positive) > LOG_SPREAD
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3, ecolor="#333333", height=0.6)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 3, top * 8)
        title += " (log scale)"
    else:
        ax.set_xlim(0, top * 1.3)
    ax.set_title(title, fontsize=10, loc="left")
    for yi, s in zip(y, stats, strict=True):
        label = num(s["median"]) if s else "n/a"
        end = s["max"] if s else 0.0
        x = end * 1.15 if log else end + top * 0.02
        ax.text(
            max(x, min(positive, default=1) / 2.5) if log else x, yi, label, va="center", fontsize=8
        )
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="both", labelsize=8)


def _latency(
    ax: Any, names: list[str], peers: list[dict[str, Any]], colors: list[str], title: str
) -> None:
    import numpy as np

    y = np.arange(len(names))
    p50 = [(p["summary"].get("p50_ms") or {}).get("median", 0.0) for p in peers]
    p99 = [(p["summary"].get("p99_ms") or {}).get("median", 0.0) for p in peers]
    ax.barh(y - 0.17, p50, height=0.32, color=colors, alpha=0.55, label="p50")
    ax.barh(y + 0.17, p99, height=0.32, color=colors, hatch="//", edgecolor="#333333", label="p99")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    top = max([*p99, *p50, 1e-3])
    ax.set_xlim(0, top * 1.35)
    for yi, a, b in zip(y, p50, p99, strict=True):
        ax.text(a + top * 0.02, yi - 0.17, f"p50 {num(a)}", va="center", fontsize=7)
        ax.text(b + top * 0.02, yi + 0.17, f"p99 {num(b)}", va="center", fontsize=7)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="both", labelsize=8)


def _chart_peers(
    by_name: dict[str, Any], tiers: list[str]
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """One chart row's peers in display order, with their colours and axis labels."""
    names = ordered(by_name)
    peers = [by_name[n] for n in names]
    colors = [_color(n, tiers) for n in names]
    labels = [f"{n}  ({_generator(p)})" for n, p in zip(names, peers, strict=True)]
    return peers, colors, labels


def write_png(doc: dict[str, Any], path: str | Path) -> None:
    """Write the chart; raises ``RuntimeError(MATPLOTLIB_MISSING)`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(MATPLOTLIB_MISSING) from None

    workloads: dict[str, Any] = doc.get("workloads", {})
    rows = [w for w in THROUGHPUT_WORKLOADS if w in workloads]
    idle = doc.get("idle")
    nrows = len(rows) + (1 if idle else 0)
    if nrows == 0:
        raise RuntimeError("nothing to plot: no workload ran")
    fig, axes = plt.subplots(nrows, 3, figsize=(17, 2.9 * nrows + 1.2), squeeze=False)
    tiers: list[str] = list(doc.get("options", {}).get("tiers", []))
    for r, name in enumerate(rows):
        w = workloads[name]
        peers, colors, labels = _chart_peers(w["peers"], tiers)
        _bars(
            axes[r][0],
            labels,
            [p["summary"].get("throughput") for p in peers],
            colors,
            f"{name}: throughput, {w['unit']}",
        )
        _bars(
            axes[r][1],
            labels,
            [p["summary"].get("per_cpu") for p in peers],
            colors,
            f"{name}: {w['per_cpu_unit']}",
        )
        per_conn = name in ("attest", "handshake")
        _latency(
            axes[r][2],
            labels,
            peers,
            colors,
            f"{name}: latency ms, p50 light / p99 hatched"
            + ("\n(wrk: request only; asyncio: whole connection)" if per_conn else ""),
        )
    if idle:
        r = len(rows)
        peers, colors, labels = _chart_peers(idle["peers"], tiers)
        _bars(
            axes[r][0],
            labels,
            [p["summary"].get("rss_per_conn_kib") for p in peers],
            colors,
            f"idle: RSS KiB per connection ({idle['connections']} held; lower is better)",
        )
        _bars(
            axes[r][1],
            labels,
            [p["summary"].get("per_cpu") for p in peers],
            colors,
            "idle: connections opened per server CPU-second",
        )
        axes[r][2].axis("off")
        axes[r][2].text(
            0.0,
            0.5,
            "\n".join(_footer(doc)),
            fontsize=8,
            va="center",
            ha="left",
            transform=axes[r][2].transAxes,
            wrap=True,
        )
    m = doc.get("machine", {})
    kind = run_kind(doc)
    fig.suptitle(
        f"atls-proxy bench — {kind}, {doc.get('started_at', '')} — {m.get('cpu_model')}, "
        f"{m.get('cores')} cores, kernel {m.get('kernel')}\n"
        "atls* and off-asyncio driven by the asyncio generator (pyOpenSSL client; atls: + Expat); "
        "off, haproxy, direct by wrk. "
        f"Bars: median of {doc.get('options', {}).get('repeat')} runs, whiskers min–max.",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97 if nrows > 2 else 0.93))
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def _footer(doc: dict[str, Any]) -> list[str]:
    out = []
    skipped = doc.get("skipped", {})
    for k, v in skipped.items():
        out.append(f"skipped {k}: {v}")
    sw = doc.get("software", {})
    out += [
        f"{k}: {short_version(k, sw[k])}"
        for k in ("python", "openssl", "pyopenssl_openssl", "haproxy", "haproxy_openssl", "wrk")
        if sw.get(k)
    ]
    m = doc.get("machine", {})
    if m.get("pinned"):
        out.append(
            f"proxy/HAProxy on CPU {m['proxy_cpu']}; generators+backend on CPU {m['generator_cpu']}"
        )
    out.append(f"generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    return [o[:95] for o in out]
