"""``bench attest --rounds``: the per-round ratios, the targets and their summary (no sockets)."""

from __future__ import annotations

import json

import pytest

from atls_proxy.bench.attest import Result, percentile, render, render_rounds, summarize


def _r(
    tier: str,
    connections: int,
    server_cpu_s: float = 1.0,
    p99: float = 100.0,
    errors: int = 0,
) -> Result:
    r = Result(tier, 64, 5.0, 40, connections=connections, server_cpu_s=server_cpu_s)
    r.latencies_ms = [p99] * 10
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
    r = Result("batched", 64, 5.0, 40, connections=n)
    r.latencies_ms = list(reversed(values))  # to_json sorts
    j = r.to_json()
    assert (j["p50_ms"], j["p99_ms"], j["latency_n"]) == (p50, p99, n)
    assert j["percentile_method"] == "nearest-rank"


def test_one_slow_connection_in_a_hundred_is_not_the_p99() -> None:
    r = Result("batched", 64, 5.0, 40, connections=100)
    r.latencies_ms = [150.0] * 99 + [900.0]
    assert r.to_json()["p99_ms"] == 150.0
    assert percentile([], 99) is None


@pytest.mark.parametrize("duration", [float("inf"), float("nan"), 0.0, -1.0])
def test_no_non_finite_or_negative_rate_in_the_json(duration: float) -> None:
    r = Result("off", 64, duration, 40, connections=1000, server_cpu_s=float("nan"))
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
