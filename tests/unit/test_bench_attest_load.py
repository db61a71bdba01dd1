"""``bench attest``'s closed loop: what it counts, over which span, and when it refuses to report
(no sockets: ``request_close`` is faked)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

import atls_proxy.bench
from atls_proxy import cli
from atls_proxy.bench import attest, common


class _Marks:
    """The window callbacks, recording when they ran."""

    def __init__(self) -> None:
        self.opened: list[float] = []
        self.closed: list[float] = []

    def opens(self) -> None:
        self.opened.append(time.monotonic())

    def closes(self) -> None:
        self.closed.append(time.monotonic())


async def _run_load(
    monkeypatch: pytest.MonkeyPatch,
    request: Callable[[Any, bytes], Awaitable[int]],
    *,
    clients: int,
    warmup: float,
    duration: float,
    cap: int | None = None,
    window: tuple[Callable[[], object], Callable[[], object]] | None = None,
) -> tuple[attest.Result, _Marks]:
    """``_load`` of the ``off`` tier with ``request`` as ``request_close`` (and ``cap`` as
    MAX_CONNECTIONS); the window callbacks are ``window`` or the returned marks'."""
    monkeypatch.setattr(attest, "request_close", request)
    if cap is not None:
        monkeypatch.setattr(attest, "MAX_CONNECTIONS", cap)
    result = attest.Result("off", clients, duration, 0, pinned=True)
    marks = _Marks()
    opens, closes = window or (marks.opens, marks.closes)
    await attest._load("off", None, clients, warmup, duration, result, opens, closes)  # type: ignore[arg-type]
    return result, marks


async def test_a_worker_dying_of_an_unexpected_error_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that died silently would lower the concurrency and the reported rate with it."""

    async def broken(opener: Any, request: bytes) -> int:
        raise ValueError("a bug in the generator")

    with pytest.raises(RuntimeError, match="worker failed") as e:
        await _run_load(monkeypatch, broken, clients=2, warmup=0.0, duration=0.2)
    assert isinstance(e.value.__cause__, ValueError)


async def test_connection_errors_are_counted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def refused(opener: Any, request: bytes) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("refused")

    result, _ = await _run_load(monkeypatch, refused, clients=2, warmup=0.0, duration=0.2)
    assert calls > 0 and result.errors > 0 and result.connections == 0
    assert result.error_samples[0].startswith("ConnectionRefusedError")


def _fake(latency: float, cancelled: list[float] | None = None) -> Any:
    async def request(opener: Any, request: bytes) -> int:
        try:
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            if cancelled is not None:
                cancelled.append(time.monotonic())
            raise
        return 13

    return request


async def test_the_cap_closes_the_window_and_the_rate_uses_the_measured_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All clients stopped by the cap after ~0.1 s of a 2 s window: the rate divides by ~0.1 s."""
    t0 = time.monotonic()
    result, marks = await _run_load(
        monkeypatch, _fake(0.01), clients=2, warmup=0.05, duration=2.0, cap=30
    )
    assert time.monotonic() - t0 < 1.0  # did not wait for the nominal window
    assert result.capped and result.to_json()["capped"] is True
    assert len(marks.opened) == 1 and len(marks.closed) == 1
    assert 0 < result.duration_s < 1.0
    assert result.duration_s == pytest.approx(marks.closed[0] - marks.opened[0], abs=0.002)
    assert 0 < result.connections <= 30
    assert attest._rate(result) == pytest.approx(result.connections / result.duration_s)
    assert attest._rate(result) > result.connections / 2.0 * 5  # not the nominal 2 s


async def test_a_slow_connection_does_not_stretch_a_capped_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One stalled connection still in flight when the cap stops the others: the window closes
    when the cap stops the first client, flagged, instead of lasting until the stalled one ends
    (which reported a rate several times too low, unflagged)."""
    calls = [0]

    async def request(opener: Any, request: bytes) -> int:
        calls[0] += 1
        await asyncio.sleep(1.5 if calls[0] == 1 else 0.002)
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=4, warmup=0.05, duration=1.0, cap=300)
    assert result.capped and result.to_json()["capped"] is True
    assert result.duration_s < 0.6  # the cap was reached in ~0.2 s, not at the 1.0 s timer
    assert result.connections > 100


async def test_an_uncapped_window_lasts_the_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = await _run_load(monkeypatch, _fake(0.05), clients=4, warmup=0.05, duration=0.4)
    assert not result.capped and result.to_json()["capped"] is False
    assert result.duration_s == pytest.approx(0.4, abs=0.03)
    assert result.connections > 0 and result.latencies_ms


async def test_the_cap_reached_in_the_warm_up_gives_an_empty_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, marks = await _run_load(
        monkeypatch, _fake(0.005), clients=2, warmup=0.5, duration=1.0, cap=4
    )
    assert result.capped and result.connections == 0 and result.errors == 0
    assert len(marks.opened) == 1 and len(marks.closed) == 1  # opened, then closed at once
    assert marks.opened[0] <= marks.closed[0] and 0 <= result.duration_s < 0.01
    assert attest._rate(result) == 0.0


async def test_cpu_readings_are_taken_when_the_window_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both closing CPU readings (``common.CpuWindow``, as ``run_attest_bench`` uses it) at
    t_close, before the connections in flight are cancelled: with fake CPU clocks that read the
    wall clock, CPU seconds == duration_s."""
    cancelled: list[float] = []
    reads: list[tuple[str, float]] = []

    def fake_cpu(pid: int) -> float:
        assert pid == 4242
        reads.append(("server", time.monotonic()))
        return time.monotonic()

    def fake_process_time() -> float:
        reads.append(("generator", time.monotonic()))
        return time.monotonic()

    monkeypatch.setattr(common, "cpu_seconds", fake_cpu)
    monkeypatch.setattr(
        common, "time", SimpleNamespace(process_time=fake_process_time, monotonic=time.monotonic)
    )
    monkeypatch.setattr(common, "children_cpu_seconds", lambda: 0.0)
    cpu = common.CpuWindow({"server": 4242})
    warmup, duration = 0.1, 0.5
    t_start = time.monotonic()
    # 0.25 s per connection: the third of each client starts at 0.5 s and is in flight at t_close
    # (0.6 s). Not 0.3 s: the second would end right at t_close, and whether a third started
    # (something to cancel) was a race.
    result, _ = await _run_load(
        monkeypatch,
        _fake(0.25, cancelled),
        clients=4,
        warmup=warmup,
        duration=duration,
        window=(cpu.start, cpu.stop),
    )
    t_close = t_start + warmup + duration
    assert [k for k, _ in reads] == ["server", "generator", "server", "generator"]
    closing = [t for _, t in reads[2:]]
    assert all(t_close <= t < t_close + 0.03 for t in closing), (closing, t_close)
    # The connections still open (0.25 s each, 4 clients) were cancelled after the readings.
    assert cancelled and min(cancelled) >= max(closing)
    assert cpu.result["server"] == pytest.approx(result.duration_s, abs=0.003)
    assert cpu.result["generator"] == pytest.approx(result.duration_s, abs=0.003)
    assert result.duration_s == pytest.approx(duration, abs=0.03)


# -- flags and exit status (cli.cmd_bench; the runs are faked) -----------------------------------


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A usage error must stop `bench attest` before any run."""

    async def never(*args: Any, **kwargs: Any) -> attest.Result:
        raise AssertionError("nothing may run after a usage error")

    monkeypatch.setattr(atls_proxy.bench, "run_attest_bench", never)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--duration", "0"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "inf"], "--duration"),
        (["--duration", "601"], "--duration"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "1025"], "--concurrency"),
        (["--simulated-quote-ms", "-1"], "--simulated-quote-ms"),
        (["--simulated-quote-ms", "60001"], "--simulated-quote-ms"),
        (["--tier", "off", "--tier", "cached", "--tier", "off"], "--tier"),
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "51"], "--rounds"),
    ],
)
def test_out_of_range_flags_are_usage_errors(
    flags: list[str], named: str, nothing_runs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "attest", *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and ("must be" in err or "at most once" in err), err


@pytest.mark.parametrize(
    ("before", "named"),
    [
        (["--duration", "2"], "--duration"),
        (["--tier", "cached"], "--tier"),
        (["--simulated-quote-ms", "10"], "--simulated-quote-ms"),
        (["--quick"], "--quick"),
        # Falsy values are values given too (0 == False in Python).
        (["--simulated-quote-ms", "0"], "--simulated-quote-ms"),
        (["--warmup", "0"], "--warmup"),
        (["--png", ""], "--png"),
    ],
)
def test_suite_flags_before_attest_are_usage_errors(
    before: list[str], named: str, nothing_runs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench --duration 2 attest` sets the suite's --duration, which attest does not read (its
    own default of 5 s used to win silently): refused, naming the flag."""
    assert cli.main(["bench", *before, "attest"]) == 2
    err = capsys.readouterr().err
    assert named in err and "before 'attest'" in err, err


def test_every_suite_flag_before_attest_is_refused(
    nothing_runs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each flag of the bare `bench` parser but --json, read off the parser itself (a suite flag
    added later is covered without editing a list)."""
    bench = cli.build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    flags = [a for a in bench._actions if a.option_strings and a.dest not in ("help", "json")]
    assert len(flags) >= 10
    for a in flags:
        value = [] if a.nargs == 0 else [str(next(iter(a.choices or ["1"])))]  # switch: no value
        argv = [a.option_strings[0], *value]
        assert cli.main(["bench", *argv, "attest"]) == 2, argv
        assert a.option_strings[0] in capsys.readouterr().err


def test_the_bounds_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "attest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"1..{attest.MAX_CONCURRENCY}" in text and f"0..{attest.MAX_QUOTE_MS}" in text
    assert f"<= {attest.MAX_DURATION_S:g}" in text and f"1..{attest.MAX_ROUNDS}" in text
    assert "Exit status: 0" in text


async def test_run_attest_bench_refuses_a_non_finite_duration() -> None:
    with pytest.raises(ValueError, match="--duration"):
        await attest.run_attest_bench("off", 0, 4, float("nan"))


@pytest.mark.parametrize(
    ("connections", "errors", "code"), [(10, 0, 0), (10, 2, 1), (0, 0, 1), (0, 3, 1)]
)
def test_exit_status_says_whether_the_measurement_is_valid(
    connections: int,
    errors: int,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def fake(tier: str, quote_ms: int, concurrency: int, duration: float) -> attest.Result:
        bad = tier == "off"
        r = attest.Result(tier, concurrency, duration, quote_ms, pinned=True)
        r.latencies_ms = [5.0] * (connections if bad else 10)  # one per connection completed
        r.errors = errors if bad else 0
        return r

    monkeypatch.setattr(atls_proxy.bench, "run_attest_bench", fake)
    flags = ["bench", "attest", "--tier", "cached", "--tier", "off", "--duration", "1"]
    assert cli.main([*flags, "--json"]) == code
    assert cli.main([*flags, "--rounds", "2"]) == code
    err = capsys.readouterr().err
    assert ("not a valid measurement" in err) == (code == 1)
    if connections == 0:
        assert "tier off: no connection completed" in err


async def test_connections_stuck_in_flight_do_not_vanish(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four of sixteen clients hang on their first connection (a lost batch member, a stuck
    # quote): without accounting for them the run read "0 errors, p99 8 ms" and met its target.
    # Stalled for the whole window they are errors; slow ones count in the percentiles.
    calls = 0

    async def request(opener: Any, req: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls <= 4:
            await asyncio.sleep(3600)
        await asyncio.sleep(0.005)
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=16, warmup=0.3, duration=1.0)
    doc = result.to_json()
    assert result.errors == 4 and attest.invalid_runs([[result]])
    assert any(s.startswith("stalled: 4 connection(s)") for s in result.error_samples)
    # in flight since the warm-up began: about warm-up + window (1.3 s), the whole window at least
    assert doc["in_flight_at_close"] >= 4 and doc["oldest_in_flight_ms"] >= 1000 * result.duration_s
    assert doc["attester"].startswith("software (SIMULATED")
    assert "SIMULATED" in attest.render([result])


async def test_a_connection_that_hangs_inside_the_window_is_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One client's connection starts inside the window and is still running at its close, far
    # slower than the rest (the merely slow ones count in the percentiles: the test below).
    calls = 0

    async def request(opener: Any, req: bytes) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600 if calls == 40 else 0.002)
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=1, warmup=0.0, duration=1.3)
    # Hung inside the window: not in flight for the whole of it, yet stalled all the same (over
    # twice the slowest completed one, and STALL_MARGIN_MS longer) — an error, so the run is not
    # a valid measurement (a wedged `off` inflated cached/off to 10.9 and called it met).
    assert result.errors == 1 and attest.invalid_runs([[result]])
    assert any(s.startswith("stalled: 1 connection(s)") for s in result.error_samples)
    assert result.connections == len(result.latencies_ms) == 39


async def test_connections_merely_slower_than_a_short_window_are_not_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Like strict's clients waiting for their quote: one client's connection is in flight for
    # the whole (short) window, yet not even twice as slow as the ones that complete in it —
    # slow, not stalled: no error, and it counts in the percentiles at its age.
    kinds: dict[int, float] = {}

    async def request(opener: Any, req: bytes) -> int:
        me = id(asyncio.current_task())
        await asyncio.sleep(kinds.setdefault(me, 0.3 if not kinds else 0.15))
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=2, warmup=0.31, duration=0.2)
    assert result.connections > 0 and result.errors == 0, result.error_samples
    assert result.in_flight_ms and result.in_flight_ms[-1] >= result.duration_s * 1000
    assert result.censored_ms  # the slow one, at its age


async def test_failures_in_the_warm_up_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Out of the rate like every warm-up connection, but not out of sight: the service was
    # failing when the measurement began.
    calls = 0

    async def request(opener: Any, req: bytes) -> int:
        nonlocal calls
        calls += 1
        n = calls
        await asyncio.sleep(0.005)
        if n <= 20:
            raise OSError("refused while starting")
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=2, warmup=0.3, duration=0.3)
    assert result.warmup_errors == 20 and result.errors == 0 and result.connections > 0
    assert result.to_json()["warmup_errors"] == 20
    assert any("20 errors in the warm-up" in why for why in attest.invalid_runs([[result]]))


async def test_a_hiccup_of_a_few_milliseconds_is_not_a_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Connections of ~2 ms; the one in flight at the close has hit a 60 ms pause (a GC, the
    # scheduler): over twice the slowest completed one, but no stall — it counts at its age in
    # the percentiles, and the run stays valid.
    warmup, duration = 0.1, 0.5
    close = time.monotonic() + warmup + duration

    async def request(opener: Any, req: bytes) -> int:
        late = time.monotonic() > close - 0.03
        await asyncio.sleep(0.06 if late else 0.002)
        return 13

    result, _ = await _run_load(monkeypatch, request, clients=1, warmup=warmup, duration=duration)
    slowest = max(result.latencies_ms)
    assert result.in_flight_ms and result.in_flight_ms[-1] > 2 * slowest, (slowest, result)
    assert result.errors == 0 and attest.invalid_runs([[result]]) == []
