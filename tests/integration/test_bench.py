"""Keep the benchmark harness working: a tiny run of every tier (no timing assertions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atls_proxy.bench.common import can_pin
from tests.support.procs import env, run_cli

pytestmark = pytest.mark.integration


def _bench_attest(*flags: str, timeout: float = 120) -> dict[str, Any]:
    """A tiny ``bench attest`` run (5 ms quote, 4 clients, 0.5 s); its JSON document."""
    res = run_cli(
        "bench",
        "attest",
        *flags,
        "--simulated-quote-ms",
        "5",
        "--concurrency",
        "4",
        "--duration",
        "0.5",
        "--json",
        timeout=timeout,
    )
    # 0: every run completed connections without an error (else 1, the measurement not valid).
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


@pytest.mark.parametrize("tier", ["strict", "batched", "cached", "off"])
def test_bench_attest_tiny(tier: str) -> None:
    doc = _bench_attest("--tier", tier)
    assert {"tier", "connections_per_s", "p50_ms", "p99_ms", "errors"} <= set(doc)
    assert doc["tier"] == tier and doc["errors"] == 0 and doc["connections"] > 0, doc
    # Both sides' CPU in the window are reported (which of them set the rate).
    assert doc["server_cpu_s"] > 0 and doc["generator_cpu_s"] > 0, doc
    # The window as measured (not capped at this size), p50/p99 over the completed connections.
    assert doc["capped"] is False and abs(doc["duration_s"] - 0.5) < 0.1, doc
    # (plus, at their age, the connections still in flight at the close that were slower)
    assert doc["latency_n"] == doc["connections"] + doc["latency_n_in_flight"]
    assert doc["percentile_method"] == "nearest-rank"
    assert isinstance(doc["pinned"], bool) and (can_pin() or not doc["pinned"]), doc


def test_bench_attest_rounds_report_each_rounds_ratio() -> None:
    doc = _bench_attest("--tier", "cached", "--tier", "off", "--rounds", "2", timeout=180)
    assert [[r["tier"] for r in runs] for runs in doc["runs"]] == [["cached", "off"]] * 2
    ratio = doc["summary"]["ratios"]["cached/off"]
    assert len(ratio["per_round"]) == 2 and all(x > 0 for x in ratio["per_round"]), ratio
    assert ratio["rounds"] == 2 and len(ratio["met"]) == 2 and ratio["errors"] == [[0, 0]] * 2
    assert 0 <= ratio["rounds_meeting_target"] <= 2, ratio
    assert doc["summary"]["tiers"]["cached"]["errors"] == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--duration", "nan"), ("--concurrency", "0"), ("--tier", "off"), ("--rounds", "0")],
)
def test_bench_attest_bad_flags_are_usage_errors(flag: str, value: str) -> None:
    extra = ["--tier", "off"] if flag == "--tier" else []
    res = run_cli("bench", "attest", flag, value, *extra, timeout=60)
    assert res.returncode == 2 and flag in res.stderr, res.stderr


@pytest.mark.parametrize(
    "mode", [(), ("--profile", "server", "--top", "5"), ("--profile", "timed"), ("--exchange",)]
)
def test_tier_cost_script_runs(mode: tuple[str, ...]) -> None:
    """benchmarks/tier_cost.py (the measurement behind docs/PERFORMANCE.md's breakdown) keeps
    working: CPU per connection of both sides per tier, and with --profile the difference."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tier_cost.py"
    res = subprocess.run(
        [sys.executable, str(script), "--connections", "20", "--rounds", "1", *mode],
        capture_output=True,
        text=True,
        timeout=180,
        env=env(),
    )
    assert res.returncode == 0, res.stderr
    if mode == ("--exchange",):
        assert re.search(r"server [0-9.]+ \(two ECDSA P-256 signatures: [0-9.]+", res.stdout)
        assert re.search(r"client [0-9.]+ \(one ECDSA P-256 verification: [0-9.]+", res.stdout)
        return
    for tier in ("cached", "off"):
        assert re.search(rf"round 1 {tier} +server [0-9.]+ ms/conn", res.stdout), res.stdout
    if mode == ("--profile", "timed"):
        # two signatures and three exporters per cached connection, none with attestation off
        assert re.search(r"sign +[0-9.]+ \(2\.00\) +0\.0 \(0\.00\)", res.stdout), res.stdout
        assert re.search(r"TLSEngine\.export +[0-9.]+ \(3\.00\) +0\.0 \(0\.00\)", res.stdout)
        assert re.search(r"C calls \(cached - off\): \+[0-9.]+ µs per connection", res.stdout)
        return
    if mode:
        assert "cached - off per connection" in res.stdout, res.stdout
        # the two ECDSA signatures of the cached tier are among the differences it finds
        assert re.search(r"2\.\d\d .*'sign' of", res.stdout), res.stdout
    else:
        assert "CPU per connection, off ÷ cached" in res.stdout, res.stdout
