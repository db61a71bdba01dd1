"""The bench suite through the real CLI: a tiny run of every workload; structure, never timing.

One ``atls-proxy bench all`` run of about a second per peer (``--repeat 1``, 20 idle connections),
with the HAProxy baseline when haproxy is installed. Checks the JSON document's shape and that the
figures are positive; a skipped baseline must be absent from the figures and named in ``skipped``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from atls_proxy.bench.baselines import parse_wrk, wrk_successes
from atls_proxy.bench.report import render_markdown
from atls_proxy.bench.workloads import runs_with_errors
from atls_proxy.cli import build_parser
from tests.support.procs import run_cli
from tests.support.swtpm import REQUIRE_TOOLS_ENV, tools_required

pytestmark = pytest.mark.integration

THROUGHPUT = ("attest", "handshake", "small", "bulk")


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and x > 0


def test_bench_argparse_both_forms() -> None:
    p = build_parser()
    bare = p.parse_args(["bench", "--quick"])
    assert bare.func.__name__ == "cmd_bench_suite" and bare.workload is None and bare.quick
    late = p.parse_args(["bench", "small", "--quick", "--repeat", "1"])
    assert late.workload == "small" and late.quick and late.repeat == 1
    early = p.parse_args(["bench", "--quick", "--json", "idle"])
    assert early.workload == "idle" and early.quick and early.json
    flags = "--tier batched --simulated-quote-ms 40 --concurrency 64 --duration 5 --json"
    attest = p.parse_args(["bench", "attest", *flags.split()])
    assert attest.func.__name__ == "cmd_bench" and attest.attest_tier == ["batched"] and attest.json
    assert attest.attest_duration == 5.0 and attest.duration is None  # the suite's, not given


def test_parse_wrk_done_line() -> None:
    out = (
        "Running 1s test @ http://127.0.0.1:1/small\n"
        'ATLS-BENCH {"requests": 10, "duration_us": 1000000, "bytes": 990, "connect_errors": 0, '
        '"read_errors": 1, "write_errors": 0, "status_errors": 0, "timeouts": 0, '
        '"p50_us": 1500, "p99_us": 4000, "mean_us": 1700.5, "max_us": 5000}\n'
    )
    r = parse_wrk(out)
    assert (r.requests, r.errors, r.p50_ms, r.p99_ms, r.duration_s) == (10, 1, 1.5, 4.0, 1.0)
    with pytest.raises(ValueError):
        parse_wrk("wrk: connection refused\n")


def test_wrk_answers_that_are_errors_are_not_work() -> None:
    # wrk counts a 503 in "requests" and in "status_errors": throughput counts successes only.
    out = (
        'ATLS-BENCH {"requests": 100, "duration_us": 1000000, "bytes": 990, "connect_errors": 0, '
        '"read_errors": 0, "write_errors": 0, "status_errors": 30, "timeouts": 0, '
        '"p50_us": 1500, "p99_us": 4000, "mean_us": 1700.5, "max_us": 5000}\n'
    )
    r = parse_wrk(out)
    assert r.errors == 30 and wrk_successes(r) == 70


def test_bench_suite_tiny(tmp_path: Path) -> None:
    have_wrk = shutil.which("wrk") is not None
    have_haproxy = shutil.which("haproxy") is not None
    if tools_required() and not (have_wrk and have_haproxy):
        # CI installs both (.ci/run): the baselines must run there, not be skipped.
        pytest.fail(f"wrk and haproxy must be installed ({REQUIRE_TOOLS_ENV}=1)")
    png = tmp_path / "bench.png"
    args = ["bench", "all", "--duration", "1", "--warmup", "0.2", "--repeat", "1"]
    args += ["--connections", "16", "--idle-connections", "20", "--tier", "cached", "--json"]
    want_png = importlib.util.find_spec("matplotlib") is not None
    if want_png:
        args += ["--png", str(png)]
    res = run_cli(*args, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)

    assert {"cpu_model", "cores", "kernel"} <= set(doc["machine"])
    assert {"python", "openssl", "haproxy", "wrk"} <= set(doc["software"])
    assert doc["options"]["repeat"] == 1

    for name in THROUGHPUT:
        w = doc["workloads"][name]
        if name == "handshake" and not have_wrk:
            # Every peer of the handshake workload is driven by wrk: none ran, and it says why.
            assert w["peers"] == {}, (name, w["peers"].keys())
            assert w["skipped"]["off"] == "wrk is not installed", w
            continue
        subject = w["subject"]
        assert subject in w["peers"], (name, w["peers"].keys())
        for peer, p in w["peers"].items():
            assert p["generator"] and len(p["runs"]) == 1, (name, peer)
            run = p["runs"][0]
            assert run["errors"] == 0, (name, peer, run)
            assert _positive(run["throughput"]) and _positive(run["completed"]), (name, peer, run)
            assert _positive(run["duration_s"]) and run["server_cpu_s"] >= 0, (name, peer, run)
            assert run["per_cpu"] is None or _positive(run["per_cpu"]), (name, peer, run)
            assert p["summary"]["throughput"]["median"] > 0
        expected: set[str] = {"off-asyncio"} if name != "handshake" else set()
        if have_wrk:
            expected |= {"direct"} | ({"off"} if name != "handshake" else set())
            expected |= {"haproxy"} if have_haproxy else set()
        assert expected <= set(w["peers"]), (name, w["peers"].keys())
        ratios = w["ratio_per_cpu"]
        assert set(ratios) <= expected and all(_positive(r) for r in ratios.values()), (name, w)
        # Every baseline that ran has a ratio unless its CPU reading was zero (too short a run).
        assert set(ratios) <= set(w["peers"]), (name, ratios)
        assert all(_positive(r) for r in w["ratio"].values())
        if name == "attest":
            # wrk peers measured in the handshake phase: compared per CPU-second only.
            assert not {"off", "haproxy", "direct"} & set(w["ratio"]), w["ratio"]
        if not have_haproxy:
            assert "haproxy" not in w["peers"] and "haproxy" not in ratios
    if not have_haproxy:
        assert "haproxy" in doc["skipped"]
    if have_haproxy:
        assert doc["workloads"]["handshake"]["peers"]["haproxy"]["resumption_accepted"] is False
    if have_wrk:
        assert doc["workloads"]["handshake"]["peers"]["off"]["resumption_accepted"] is False

    idle = doc["idle"]
    assert idle["connections"] == 20 and _positive(idle["rss_per_conn_kib"]), idle
    for peer, p in idle["peers"].items():
        run = p["runs"][0]
        assert run["connections"] == 20 and run["errors"] == 0, (peer, run)
        assert run["rss_after_kib"] > 0 and run["rss_before_kib"] > 0, (peer, run)
    assert ("haproxy" in idle["peers"]) == have_haproxy
    assert {"atls", "off-asyncio", "off"} <= set(idle["peers"])
    assert "off-asyncio" in idle["ratio"]
    assert all(_positive(r) for r in idle["ratio"].values())

    if want_png:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_skipped_baseline_is_said_and_absent() -> None:
    """A left-out baseline is named in the table and absent from the figures (never zero)."""
    args = ["bench", "idle", "--no-haproxy", "--repeat", "1", "--idle-connections", "10", "--json"]
    res = run_cli(*args, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert "haproxy" in doc["skipped"] and "haproxy" not in doc["idle"]["peers"]
    assert "haproxy" not in doc["idle"]["ratio"] and doc["workloads"] == {}
    table = render_markdown(doc)  # what the command prints without --json
    assert "haproxy: disabled with --no-haproxy" in table, table
    assert "| idle (10 conn) | atls |" in table, table
    assert "Attester: the SIMULATED software attester (no TEE)" in table, table


def test_errors_cell_is_the_sum_over_the_runs() -> None:
    """The other cells are medians of the runs; errors are summed (an error in any run counts)."""
    runs = [{"errors": 0}, {"errors": 2}, {"errors": 5}]
    summary = {"throughput": {"median": 100.0, "min": 90.0, "max": 110.0}}
    doc: dict[str, Any] = {
        "options": {"repeat": 3, "duration_s": 2},
        "workloads": {
            "small": {
                "subject": "atls",
                "peers": {"atls": {"generator": "asyncio", "runs": runs, "summary": summary}},
                "ratio_per_cpu": {},
                "ratio": {},
            }
        },
    }
    table = render_markdown(doc)
    assert "| errors (sum of all runs) |" in table, table
    assert table.splitlines()[-1].endswith("| 7 |"), table


def test_ratios_of_runs_with_errors_are_marked_and_invalid() -> None:
    # A subject or baseline with errors in any run: its ratios carry "!", and the suite lists
    # it as not a valid measurement (the CLI exits 1), as `bench attest` does.
    def peer(errors: int) -> dict[str, Any]:
        return {
            "generator": "g",
            "runs": [{"errors": 0}, {"errors": errors}],
            "summary": {"throughput": {"median": 1.0, "min": 1.0, "max": 1.0}},
        }

    doc: dict[str, Any] = {
        "options": {"repeat": 2, "duration_s": 2},
        "workloads": {
            "small": {
                "subject": "atls",
                "peers": {"atls": peer(0), "off": peer(3), "direct": peer(0)},
                "ratio_per_cpu": {"off": 0.5, "direct": 0.4},
                "ratio": {"off": 0.6, "direct": 0.5},
            },
            "attest": {
                "subject": "atls-cached",
                "peers": {"atls-cached": peer(0), "off": dict(peer(9), shared_with="handshake")},
                "ratio_per_cpu": {},
                "ratio": {},
            },
        },
    }
    row = next(line for line in render_markdown(doc).splitlines() if line.startswith("| small"))
    assert "0.50× (0.60×) !" in row and "0.40× (0.50×) |" in row, row
    assert runs_with_errors(doc) == ["small off: 3 errors"]  # the shared copy is not recounted


def test_a_child_off_its_cpu_is_reported() -> None:
    # The suite used to record "pinned" from can_pin() alone: a pin that did not take was silent.
    import os
    import subprocess

    from atls_proxy.bench.common import GENERATOR_CPU, PROXY_CPU, Child, can_pin, not_pinned

    if not can_pin():
        pytest.skip("needs CPUs 0 and 1")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        child = Child("probe", proc, 0, PROXY_CPU)
        os.sched_setaffinity(proc.pid, {GENERATOR_CPU})
        assert "probe (not on CPU 0 only)" in not_pinned([child])
        os.sched_setaffinity(proc.pid, {PROXY_CPU})
        assert not [s for s in not_pinned([child]) if s.startswith("probe")]
    finally:
        proc.kill()
        proc.wait()


def test_ratios_pair_the_runs_of_each_round() -> None:
    # The machine drifts from one minute to the next; the runs are interleaved, so run i of every
    # peer shares minute i. Round ratios 1.0, 0.5, 2.0: median 1.0 — the ratio of the medians
    # (200 ÷ 150 = 1.33) would pair the subject's middle minute with the baseline's worst one.
    from atls_proxy.bench.workloads import ratio_spreads, ratios, summarize

    def peer(values: list[float], **extra: Any) -> dict[str, Any]:
        runs = [{"per_cpu": v} for v in values]
        return {"runs": runs, "summary": summarize(runs, ("per_cpu",)), **extra}

    peers = {
        "atls": peer([100, 200, 300]),
        "off-asyncio": peer([100, 400, 150]),
        # Measured in another phase: no round of its own, the ratio of the medians.
        "off": peer([50, 100, 400], shared_with="handshake"),
        "direct": peer([0, 0, 0]),  # no CPU reading: no ratio
    }
    assert ratios(peers, "atls", "per_cpu") == {"off-asyncio": 1.0, "off": 2.0}
    assert ratio_spreads(peers, "atls", "per_cpu") == {
        "off-asyncio": {"median": 1.0, "min": 0.5, "max": 2.0}
    }
    doc: dict[str, Any] = {
        "options": {"repeat": 3, "duration_s": 2},
        "workloads": {
            "small": {
                "subject": "atls",
                "peers": peers,
                "ratio_per_cpu": ratios(peers, "atls", "per_cpu"),
                "ratio": {},
                "ratio_per_cpu_spread": ratio_spreads(peers, "atls", "per_cpu"),
            }
        },
    }
    assert "| 1.00× [0.50–2.00] |" in render_markdown(doc)
