"""``bench attest --rounds``: the per-round ratios and their summary (no sockets)."""

from __future__ import annotations

from atls_proxy.bench.attest import Result, render_rounds, summarize


def _r(tier: str, connections: int, server_cpu_s: float = 1.0, p99: float = 100.0) -> Result:
    r = Result(tier, 64, 5.0, 40, connections=connections, server_cpu_s=server_cpu_s)
    r.latencies_ms = [p99] * 10
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
    assert b["rounds_at_or_above"] == 1 and b["threshold"] == 20.0
    assert b["per_server_cpu_s"] == []  # strict's rate is the TEE's, not the proxy's CPU
    c = s["ratios"]["cached/off"]
    assert c["per_round"] == [round(2000 / 3000, 3), 0.9]
    assert c["median"] == round((0.667 + 0.9) / 2, 3)  # the median of the rounded ratios
    assert c["rounds_at_or_above"] == 1
    # Per server CPU-second: (2000/2.0) / (3000/2.0) and (2700/2.0) / (3000/3.0).
    assert c["per_server_cpu_s"] == [round(2000 / 3000, 3), 1.35]
    t = s["tiers"]["batched"]["connections_per_s"]
    assert t == {"median": 480.0, "min": 460.0, "max": 500.0}


def test_a_ratio_needs_both_tiers_in_the_round() -> None:
    s = summarize([[_r("cached", 100)], [_r("cached", 110), _r("off", 0)]])
    assert s["ratios"] == {}  # no off in round 1; off measured nothing in round 2
    assert s["tiers"]["cached"]["connections_per_s"]["median"] == 21.0


def test_errors_are_summed_and_rendered() -> None:
    a, b = _r("cached", 100), _r("off", 200)
    a.errors = 3
    rounds = [[a, b], [_r("cached", 100), _r("off", 200)]]
    s = summarize(rounds)
    assert s["tiers"]["cached"]["errors"] == 3
    text = render_rounds(rounds, s)
    assert "| 1 | cached | 20.0 |" in text
    assert "| cached/off | 0.5, 0.5 (0.5, 0.5) | 0.5 | 0 of 2 (≥ 0.8) |" in text
