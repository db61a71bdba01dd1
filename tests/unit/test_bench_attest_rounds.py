"""``bench attest --rounds``: the per-round ratios, the targets and their summary, and the
benchmarks' one percentile (no sockets)."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest

from atls_proxy.bench import attest, common, loadgen, workloads
from atls_proxy.bench.attest import EDGE_CONNECTIONS, Result, render, render_rounds, summarize
from atls_proxy.bench.common import percentile


def _r(
    tier: str,
    connections: int,
    server_cpu_s: float = 1.0,
    p99: float = 100.0,
    errors: int = 0,
) -> Result:
    r = Result(tier, 64, 5.0, 40, server_cpu_s=server_cpu_s, pinned=True)
    r.latencies_ms = [p99] * connections  # one latency per connection completed
    r.errors = errors
    return r


def test_ratios_are_taken_within_each_round_not_across() -> None:
    rounds = [
        [_r("strict", 120), _r("batched", 2500), _r("cached", 2000, 2.0), _r("off", 3000, 2.0)],
        [_r("strict", 120), _r("batched", 2300), _r("cached", 2700, 2.0), _r("off", 3000, 3.0)],
    ]
    s = summarize(rounds)
    assert s["rounds"] == 2
    b = s["ratios"]["batched/strict"]
    assert b["per_round"] == [round(2500 / 120, 3), round(2300 / 120, 3)]
    assert b["rounds_meeting_target"] == 1
    assert b["threshold"] == 20.0 and b["max_p99_ms"] == 200.0
    assert b["per_server_cpu_s"] == []  # strict's rate is the TEE's, not the proxy's CPU
    c = s["ratios"]["cached/off"]
    assert c["per_round"] == [round(2000 / 3000, 3), 0.9]
    assert c["median"] == round((2000 / 3000 + 0.9) / 2, 3)  # the median of the ratios
    assert c["rounds_meeting_target"] == 1 and c["met"] == [False, True]
    # Per server CPU-second: (2000/2.0) / (3000/2.0) and (2700/2.0) / (3000/3.0).
    assert c["per_server_cpu_s"] == [round(2000 / 3000, 3), 1.35]
    t = s["tiers"]["batched"]["connections_per_s"]
    assert t == {"median": 480.0, "min": 460.0, "max": 500.0}


def test_batched_strict_target_needs_p99_under_200_ms() -> None:
    """25× in every round, but p99 450 ms: the ratio is there, the target is not met."""
    rounds = [[_r("strict", 120, p99=2600), _r("batched", 3000, p99=450)] for _ in range(3)]
    s = summarize(rounds)
    b = s["ratios"]["batched/strict"]
    assert b["per_round"] == [25.0] * 3 and b["batched_p99_ms"] == [450.0] * 3
    assert b["rounds_meeting_target"] == 0 and b["met"] == [False] * 3
    text = render_rounds(rounds, s)
    assert (
        "| batched/strict | 25 | 0 of 3 rounds (≥ 20 with batched p99 < 200 ms, no errors) |"
        in (text)
    )
    # Each round's ratio with batched's p99 and both runs' errors beside it.
    assert "| 1 | 25 | 450 | 0, 0 | no |" in text


def test_p99_exactly_200_ms_does_not_meet_the_target() -> None:
    rounds = [[_r("strict", 100, p99=2600), _r("batched", 2000, p99=200.0)]]
    assert summarize(rounds)["ratios"]["batched/strict"]["rounds_meeting_target"] == 0
    rounds = [[_r("strict", 100, p99=2600), _r("batched", 2000, p99=199.9)]]
    assert summarize(rounds)["ratios"]["batched/strict"]["rounds_meeting_target"] == 1


def test_a_round_with_errors_does_not_meet_the_target() -> None:
    """p99 and the rate see only successes: 2000 timeouts must not pass for a good round."""
    rounds = [
        [_r("strict", 120, p99=2600), _r("batched", 3000, p99=150, errors=2000)],
        [_r("strict", 120, p99=2600, errors=1), _r("batched", 3000, p99=150)],
        [_r("cached", 900, errors=1), _r("off", 1000)],
    ]
    s = summarize(rounds[:2])
    b = s["ratios"]["batched/strict"]
    assert b["per_round"] == [25.0, 25.0] and b["errors"] == [[2000, 0], [0, 1]]
    assert b["rounds_meeting_target"] == 0
    assert "| 1 | 25 | 150 | 2000, 0 | no |" in render_rounds(rounds[:2], s)
    c = summarize(rounds[2:])["ratios"]["cached/off"]
    assert c["per_round"] == [0.9] and c["rounds_meeting_target"] == 0


@pytest.mark.parametrize("fault", ["unpinned", "warm-up errors"])
def test_an_unpinned_run_or_a_failed_warm_up_is_not_a_measurement(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the CPUs could be split, a run that did not pin measured both sides on shared
    CPUs; a warm-up whose connections failed says the service was not serving. Neither meets a
    target, and both make the run invalid (exit 1)."""
    monkeypatch.setattr(attest, "can_pin", lambda: True)
    bad = _r("off", 1000)
    if fault == "unpinned":
        bad.pinned = False
    else:
        bad.warmup_errors = 60
    rounds = [[_r("strict", 40), _r("cached", 900), bad]]
    s = summarize(rounds)
    assert s["ratios"]["cached/off"]["rounds_meeting_target"] == 0
    expected = "not pinned" if fault == "unpinned" else "60 errors in the warm-up"
    assert any(expected in why for why in attest.invalid_runs(rounds)), attest.invalid_runs(rounds)
    good = [[_r("strict", 40), _r("cached", 900), _r("off", 1000)]]
    assert summarize(good)["ratios"]["cached/off"]["rounds_meeting_target"] == 1
    assert attest.invalid_runs(good) == []
    # Where pinning is impossible (one CPU), an unpinned run is what there is: said, not invalid.
    monkeypatch.setattr(attest, "can_pin", lambda: False)
    if fault == "unpinned":
        assert attest.invalid_runs(rounds) == []


def test_the_ratio_is_compared_unrounded() -> None:
    """19.9996 rounds to 20.0 at three decimals; it is still below 20."""
    rounds = [[_r("strict", 50_000), _r("batched", 999_980, p99=100)]]
    b = summarize(rounds)["ratios"]["batched/strict"]
    assert b["per_round"] == [20.0]
    assert b["rounds_meeting_target"] == 0 and b["met"] == [False]


def test_a_round_without_a_ratio_stays_in_the_denominator() -> None:
    rounds = [
        [_r("cached", 500), _r("off", 600)],
        [_r("cached", 500), _r("off", 0)],  # off completed nothing: no ratio this round
        [_r("cached", 300), _r("off", 600)],
    ]
    s = summarize(rounds)
    c = s["ratios"]["cached/off"]
    assert c["per_round"] == [0.833, None, 0.5]
    assert c["per_server_cpu_s"] == [0.833, None, 0.5]  # aligned with per_round
    assert c["rounds"] == 3 and c["rounds_meeting_target"] == 1
    assert c["median"] == round((500 / 600 + 0.5) / 2, 3)
    text = render_rounds(rounds, s)
    assert "| 2 | — | — | 0, 0 | no |" in text
    assert "| cached/off | 0.667 | 1 of 3 rounds (≥ 0.8, no errors) |" in text
    json.dumps(s, allow_nan=False)


def test_a_ratio_needs_both_tiers_measured() -> None:
    s = summarize([[_r("cached", 100)], [_r("cached", 110)]])
    assert s["ratios"] == {}  # off never measured: no cached/off at all
    assert s["tiers"]["cached"]["connections_per_s"]["median"] == 21.0
    s = summarize([[_r("cached", 100)], [_r("cached", 110), _r("off", 0)]])
    c = s["ratios"]["cached/off"]
    assert c["per_round"] == [None, None] and c["median"] is None
    assert c["rounds_meeting_target"] == 0 and c["rounds"] == 2


def test_errors_are_summed_and_rendered() -> None:
    a, b = _r("cached", 100), _r("off", 200)
    a.errors = 3
    rounds = [[a, b], [_r("cached", 100), _r("off", 200)]]
    s = summarize(rounds)
    assert s["tiers"]["cached"]["errors"] == 3
    text = render_rounds(rounds, s)
    assert "| 1 | cached | 20.0 | 100 |" in text
    assert "| 1 | 0.5 | 0.5 | 3, 0 | no |" in text
    assert "| 2 | 0.5 | 0.5 | 0, 0 | no |" in text
    assert "| cached/off | 0.5 | 0 of 2 rounds (≥ 0.8, no errors) |" in text


@pytest.mark.parametrize(
    ("n", "p50", "p99"),
    [(1, 1, 1), (4, 2, 4), (10, 5, 10), (100, 50, 99), (101, 51, 100), (200, 100, 198)],
)
def test_percentiles_are_nearest_rank(n: int, p50: int, p99: int) -> None:
    """Rank ceil(p·n/100): p99 of 100 samples is the 99th, not the maximum."""
    values = [float(v) for v in range(1, n + 1)]
    assert percentile(values, 50) == p50 and percentile(values, 99) == p99
    r = Result("batched", 64, 5.0, 40)
    r.latencies_ms = list(reversed(values))  # to_json sorts
    j = r.to_json()
    assert (j["p50_ms"], j["p99_ms"], j["latency_n"]) == (p50, p99, n)
    assert j["percentile_method"] == "nearest-rank"


def test_one_slow_connection_in_a_hundred_is_not_the_p99() -> None:
    r = Result("batched", 64, 5.0, 40)
    r.latencies_ms = [150.0] * 99 + [900.0]
    assert r.to_json()["p99_ms"] == 150.0
    assert percentile([], 99) is None


@pytest.mark.parametrize("duration", [float("inf"), float("nan"), 0.0, -1.0])
def test_no_non_finite_or_negative_rate_in_the_json(duration: float) -> None:
    r = Result("off", 64, duration, 40, latencies_ms=[1.0] * 1000, server_cpu_s=float("nan"))
    j = r.to_json()
    json.dumps(j, allow_nan=False)
    assert j["connections_per_s"] == 0.0 and j["connections_per_server_cpu_s"] is None
    assert "| off | 0.0 |" in render([r])


def test_capped_and_pinned_are_in_the_json_and_the_table() -> None:
    r = _r("batched", 1000)
    r.capped, r.pinned = True, False
    j = r.to_json()
    assert j["capped"] is True and j["pinned"] is False
    text = render([r])
    assert "| 5.0 (capped) | NO |" in text and "Capped:" in text and "Not pinned" in text


# -- the third target: strict at or below the TEE's rate ------------------------------------------


def _strict(connections: int, quote_ms: int = 40, duration: float = 5.0, errors: int = 0) -> Result:
    r = Result("strict", 64, duration, quote_ms, errors=errors, pinned=True)
    r.latencies_ms = [2600.0] * connections
    return r


def test_strict_is_judged_against_the_tee_rate_per_round() -> None:
    """40 ms serialised quotes: at most 25 quotes a second, so strict completes at most 125
    connections in a 5 s window plus the two at its edges (EDGE_CONNECTIONS) — 127 is met, 128
    is not, nor is a round with errors or with nothing completed."""
    assert EDGE_CONNECTIONS == 2
    rounds = [
        [_strict(127), _r("batched", 2600)],  # 25.4 conn/s: at the bound
        [_strict(128), _r("batched", 2600)],  # 25.6 conn/s: above it
        [_strict(120, errors=3), _r("batched", 2600)],  # below, but with errors
        [_strict(0), _r("batched", 2600)],  # nothing completed: 0 conn/s proves nothing
        [_r("batched", 2600)],  # strict not run this round
    ]
    s = summarize(rounds)
    b = s["bounds"]["strict"]
    assert b["max_connections_per_s"] == 25.0 and b["simulated_quote_ms"] == 40
    assert b["edge_connections"] == 2
    target = "≤ 25 conn/s = 1000 / 40 ms quote, + 2 connections per window, no errors"
    assert b["target"] == target
    assert b["per_round"] == [25.4, 25.6, 24.0, 0.0, None]
    assert b["errors"] == [0, 0, 3, 0, None]
    assert b["met"] == [True, False, False, False, False]
    assert b["rounds"] == 5 and b["rounds_meeting_target"] == 1
    assert b["median"] == 24.7
    json.dumps(s, allow_nan=False)
    text = render_rounds(rounds, s)
    assert f"| round | strict conn/s | errors strict | meets {target} |" in text
    assert "| 1 | 25.4 | 0 | yes |" in text and "| 2 | 25.6 | 0 | no |" in text
    assert "| 3 | 24 | 3 | no |" in text and "| 5 | — | — | no |" in text
    assert f"| strict ≤ TEE rate | 24.7 | 1 of 5 rounds ({target}) |" in text


def test_the_tee_bound_is_compared_unrounded_over_each_window() -> None:
    """The allowance is two connections over the round's own window: 27 in 1 s is met, 28 is
    not; 25.0004 conn/s over 10,000 s (250,004 connections, within 250,002) is not met although
    it shows as 25.0 at three decimals."""
    b = summarize([[_strict(27, duration=1.0)], [_strict(28, duration=1.0)]])["bounds"]["strict"]
    assert b["met"] == [True, False]
    b = summarize([[_strict(250_004, duration=10_000.0)]])["bounds"]["strict"]
    assert b["per_round"] == [25.0] and b["met"] == [False]
    b = summarize([[_strict(1001, quote_ms=3, duration=3.0)]])["bounds"]["strict"]
    assert b["max_connections_per_s"] == 333.333 and b["met"] == [True]  # within 1000 + 2 in 3 s


@pytest.mark.parametrize("window", [0.0, -1.0, math.inf, math.nan])
def test_the_tee_bound_is_not_met_without_a_window(window: float) -> None:
    """A window that is no positive finite span measured nothing: not met (its rate reads 0,
    which would pass), and no division by zero."""
    b = summarize([[_strict(10, duration=window)]])["bounds"]["strict"]
    assert b["met"] == [False] and b["rounds_meeting_target"] == 0


def test_the_tee_bound_needs_strict_and_a_quote_latency() -> None:
    """Not judged, like a ratio with a tier missing: absent from the JSON, said in the table."""
    rounds = [[_r("cached", 100), _r("off", 200)]]
    s = summarize(rounds)
    assert s["bounds"] == {}
    assert "strict ≤ the TEE's rate: not judged (strict was not run)." in render_rounds(rounds, s)
    rounds = [[_strict(500, quote_ms=0), _r("batched", 2600)]]
    s = summarize(rounds)
    assert s["bounds"] == {} and "batched/strict" in s["ratios"]
    text = render_rounds(rounds, s)
    assert "not judged (--simulated-quote-ms 0: no TEE rate to compare with)." in text
    assert "strict ≤ TEE rate |" not in text


# -- Result: connections are the latencies ---------------------------------------------------------


def test_connections_are_the_latencies_recorded() -> None:
    """One latency per connection completed, so the count is derived, never kept apart."""
    r = Result("cached", 4, 1.0, 0, latencies_ms=[3.0, 1.0, 2.0])
    assert r.connections == 3
    r.latencies_ms.append(4.0)
    assert r.connections == 4
    j = r.to_json()
    assert j["connections"] == j["latency_n"] == 4 and j["connections_per_s"] == 4.0
    with pytest.raises(AttributeError):
        r.connections = 10  # type: ignore[misc]
    with pytest.raises(TypeError):
        Result("cached", 4, 1.0, 0, connections=3)  # type: ignore[call-arg]


# -- one percentile for bench attest and the suite -------------------------------------------------


def test_the_suite_and_bench_attest_share_one_nearest_rank_percentile() -> None:
    assert attest.percentile is common.percentile and workloads.percentile is common.percentile
    assert not hasattr(workloads, "_percentile")


@pytest.mark.parametrize(
    ("n", "p50", "p99"), [(4, 2.0, 4.0), (100, 50.0, 99.0), (200, 100.0, 198.0)]
)
def test_the_suite_reports_nearest_rank_percentiles(
    n: int, p50: float, p99: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio generator's p50/p99 (``gen_run``) as bench attest takes them: p99 of 100
    samples is the 99th, p50 of 4 the 2nd (the old index min(n−1, ⌊p·n⌋) took 100th and 3rd)."""

    async def per_request(*args: Any) -> loadgen.GenFigures:
        lat = [float(v) for v in range(n, 0, -1)]  # gen_run sorts
        return loadgen.GenFigures(completed=n, duration_s=1.0, latencies_ms=lat)

    monkeypatch.setattr(loadgen, "per_request", per_request)
    env = SimpleNamespace(
        opts=SimpleNamespace(connections=4, duration=1, warmup=0.0),
        client_settings=lambda port: None,
        backend_child=SimpleNamespace(pid=0),
    )
    server = SimpleNamespace(pid=0, port=0)
    record = asyncio.run(workloads.gen_run(env, "attest", server))  # type: ignore[arg-type]
    assert (record["p50_ms"], record["p99_ms"]) == (p50, p99)
    assert record["completed"] == n and record["mean_ms"] == round((n + 1) / 2, 3)
