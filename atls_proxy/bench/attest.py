"""``atls-proxy bench attest``: attested connections per second against a local server, per tier.

The server is the real ``atls-proxy serve`` in a subprocess (the software attester, with an
optional simulated quote latency, serialised like a TEE's); the load generator is this process.
Each connection is: TCP connect, TLS 1.3 handshake, the Expat exchange and appraisal (skipped with
``--tier off``: the same proxy with attestation switched off, i.e. plain TLS clients served
unattested), ``GET /small`` with ``Connection: close`` answered by the suite's backend protocol
(bench/backend.py) in this process, close. When ``common.can_pin()`` (Linux, CPUs 0 and 1
allowed) the server is pinned to CPU 0 (``taskset``, else ``sched_setaffinity`` on its threads)
and the generator to CPU 1, so the numbers read as work per core; each run records whether the
pinning took (``pinned``). The server's CPU seconds come from /proc. Everything runs on
127.0.0.1 and is bounded by ``--duration`` and a connection cap.

The measured window is one span for every figure of a run: it opens after the warm-up and closes
at the end of ``--duration`` or, once the connection cap is reached, when the first client stops
(``capped``: from then on the load is no longer ``--concurrency`` clients). The connections counted, ``duration_s`` (the span as measured) and
both CPU readings (server and generator, taken by callbacks at the opening and at the closing
moment, before the connections still in flight are cancelled) all cover that span.

Latency percentiles are nearest-rank: p of n sorted samples is the one at 1-based rank
ceil(p·n/100) (for p99 of 100 samples the 99th, not the maximum); ``latency_n`` is n, the
connections completed in the window (failed ones have no latency) and the slow ones still in
flight when it closed.

Connections still in flight at the close are not dropped silently (a stuck connection would
otherwise vanish from every figure): ``in_flight_at_close`` and ``oldest_in_flight_ms`` report
them; one in flight more than twice as long as the slowest completed connection, and a second
longer at least, wherever it started, is an error ("stalled": not merely slow); and one in flight for longer than the
completed connections' p99 (and not stalled) counts in the percentiles with its age so far, a
lower bound of its latency. Neither counts as a completed connection in the rate.

The attester is the SIMULATED software one (no TEE): every table and JSON document says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atls_proxy.app import build_client_settings
from atls_proxy.bench.backend import HTTPBackend
from atls_proxy.bench.common import (
    GENERATOR_CPU,
    PERCENTILE_METHOD,
    PROXY_CPU,
    CpuWindow,
    can_pin,
    free_port,
    percentile,
    pin_pid,
    pin_self,
    pinned_argv,
    raise_nofile,
    serve_argv,
    stop,
    unpin_self,
    wait_port,
)
from atls_proxy.bench.loadgen import (
    ERRORS,
    REQUEST_TIMEOUT,
    attested_opener,
    plain_opener,
    request_bytes,
    request_close,
)
from atls_proxy.ops.config import load_client_config
from atls_proxy.ops.devinit import dev_init
from atls_proxy.proxy.client import AttestationFailed, ClientSettings

# Whatever the duration, never more than this many connections in one run.
MAX_CONNECTIONS = 200_000
# ``--rounds`` at most: each round runs every tier for warm-up + duration seconds.
MAX_ROUNDS = 50
TIERS = ("strict", "batched", "cached", "off")
# Bounds of the other flags (usage errors outside them). ``--duration``: seconds of measured load
# per run; ``--concurrency``: clients of the closed loop (the generator holds two descriptors per
# client, the client's and the backend's, and raises its open-files limit to match);
# ``--simulated-quote-ms``: what the software attester accepts (``simulated_quote_ms``, 0..60000).
MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 1024
MAX_QUOTE_MS = 60_000
MAX_WARMUP_S = 60.0


def option_errors(
    *,
    tiers: Sequence[str],
    quote_ms: int,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    rounds: int = 1,
) -> list[tuple[str, str]]:
    """``(flag, problem)`` for every ``bench attest`` option out of range (empty: all valid)."""
    problems: list[tuple[str, str]] = []
    if not tiers:
        problems.append(("--tier", "at least one tier"))
    for t in tiers:
        if t not in TIERS:
            problems.append(("--tier", f"must be one of {', '.join(TIERS)}, got {t!r}"))
    dup = sorted({t for t in tiers if list(tiers).count(t) > 1})
    if dup:
        problems.append(("--tier", f"each tier at most once, repeated: {', '.join(dup)}"))
    if not 0 <= quote_ms <= MAX_QUOTE_MS:
        problems.append(("--simulated-quote-ms", f"must be 0..{MAX_QUOTE_MS}, got {quote_ms}"))
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        problems.append(("--concurrency", f"must be 1..{MAX_CONCURRENCY}, got {concurrency}"))
    if not (math.isfinite(duration) and 0 < duration <= MAX_DURATION_S):
        problems.append(
            (
                "--duration",
                f"must be a number of seconds, 0 < S <= {MAX_DURATION_S:g}, got {duration}",
            )
        )
    if not (math.isfinite(warmup) and 0 <= warmup <= MAX_WARMUP_S):
        problems.append(("--warmup", f"must be 0..{MAX_WARMUP_S:g} seconds, got {warmup}"))
    if not 1 <= rounds <= MAX_ROUNDS:
        problems.append(("--rounds", f"must be 1..{MAX_ROUNDS}, got {rounds}"))
    return problems


def _finite(x: float, digits: int) -> float | None:
    """``x`` rounded, or None when it is not a finite number (JSON has no NaN or Infinity)."""
    return round(x, digits) if math.isfinite(x) else None


# A connection in flight this much longer than the slowest completed one (and twice as long) is
# stalled, not slow (Result.account_in_flight).
STALL_MARGIN_MS = 1000.0


@dataclass
class Result:
    tier: str
    concurrency: int
    # The measured window in seconds: ``--duration``, or shorter when the connection cap stopped
    # every client first (``capped``). Set by ``_load``.
    duration_s: float
    simulated_quote_ms: int
    errors: int = 0
    # One latency per connection completed in the window: ``connections`` is their number.
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    # This process's CPU seconds in the window: the load generator and the tiny backend. Near
    # duration_s means the generator's core, not the server, set the rate.
    generator_cpu_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    # The window closed early because MAX_CONNECTIONS connections had been started.
    capped: bool = False
    # The server ran on PROXY_CPU only and this process on GENERATOR_CPU only.
    pinned: bool = False
    # Connections that failed before the window opened: not in the rate, but a run whose warm-up
    # failed is not a valid measurement (invalid_runs).
    warmup_errors: int = 0
    # Ages (ms) at the close of the connections still in flight then (module docstring).
    in_flight_ms: list[float] = field(default_factory=list)
    # Of those, the ones slower than the completed connections' p99: percentile samples too.
    censored_ms: list[float] = field(default_factory=list)

    @property
    def connections(self) -> int:
        """Connections completed in the window: each has its latency, failures have none."""
        return len(self.latencies_ms)

    def samples_ms(self) -> list[float]:
        """The latency samples of the percentiles, sorted: the completed connections' and the
        slow in-flight ones' ages (module docstring)."""
        return sorted(self.latencies_ms + self.censored_ms)

    def p99_ms(self) -> float | None:
        """p99 latency, unrounded (what the batched/strict target compares with 200 ms)."""
        return percentile(self.samples_ms(), 99)

    def account_in_flight(self, ages_ms: list[float]) -> None:
        """Fold in the connections in flight at the close (module docstring)."""
        self.in_flight_ms = sorted(ages_ms)
        window_ms = self.duration_s * 1000
        # Stalled: in flight more than twice as long as any connection that completed in the
        # window — wherever it started (one that hung inside the window stalls the rate as much
        # as one that hung before it). Merely slow ones are not: strict's 64 clients wait ~2.6 s
        # each, longer than a short window, and so do the ones that complete. (A run that
        # completed nothing is invalid already.)
        slowest = max(self.latencies_ms, default=0.0)
        # ... and a second longer at least: a 7 ms scheduling hiccup is not a stall when the
        # connections take 3 ms.
        limit = max(2 * slowest, slowest + STALL_MARGIN_MS)
        stalled = [a for a in ages_ms if a > limit] if slowest else []
        if stalled:
            self.errors += len(stalled)
            if len(self.error_samples) < 5:
                whole = sum(1 for a in stalled if a >= window_ms)
                self.error_samples.append(
                    f"stalled: {len(stalled)} connection(s) in flight over twice as long as the "
                    f"slowest completed one ({whole} for the whole {self.duration_s:.2f} s window)"
                )
        p99 = percentile(sorted(self.latencies_ms), 99)
        stuck = set(stalled)
        self.censored_ms = [a for a in ages_ms if a not in stuck and (p99 is None or a > p99)]

    def to_json(self) -> dict[str, Any]:
        lat = self.samples_ms()

        def pct(p: int) -> float | None:
            v = percentile(lat, p)
            return None if v is None else _finite(v, 2)

        per_cpu = (
            self.connections / self.server_cpu_s
            if self.server_cpu_s > 0 and math.isfinite(self.server_cpu_s)
            else None
        )
        return {
            "tier": self.tier,
            "connections_per_s": round(_rate(self), 1),
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            # The samples p50/p99 are taken over: the connections completed in the window and
            # the slow in-flight ones at their age (latency_n_in_flight of them).
            "latency_n": len(lat),
            "percentile_method": PERCENTILE_METHOD,
            # Of the completed connections only (an in-flight age is a lower bound, no latency).
            "mean_ms": (
                _finite(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else None
            ),
            "errors": self.errors,
            "connections": self.connections,
            "concurrency": self.concurrency,
            "duration_s": _finite(self.duration_s, 3),
            "capped": self.capped,
            "pinned": self.pinned,
            "warmup_errors": self.warmup_errors,
            "simulated_quote_ms": self.simulated_quote_ms,
            "server_cpu_s": _finite(self.server_cpu_s, 3),
            "generator_cpu_s": _finite(self.generator_cpu_s, 3),
            "connections_per_server_cpu_s": None if per_cpu is None else round(per_cpu, 1),
            "in_flight_at_close": len(self.in_flight_ms),
            # Of latency_n, the in-flight connections counted at their age (a lower bound).
            "latency_n_in_flight": len(self.censored_ms),
            "oldest_in_flight_ms": (
                _finite(self.in_flight_ms[-1], 2) if self.in_flight_ms else None
            ),
            "attester": "software (SIMULATED: no TEE)",
            "error_samples": self.error_samples[:5],
        }


def _rate(r: Result) -> float:
    """Connections completed in the window per second of the window (0 without a window)."""
    d = r.duration_s
    return r.connections / d if math.isfinite(d) and d > 0 else 0.0


def run_problems(r: Result) -> list[str]:
    """Why one run is not a valid measurement (none: it is): it completed no connection, had
    errors (in its window or its warm-up), or was not pinned where two CPUs could be split (an
    unpinned run measured both sides on shared CPUs; with one CPU, unpinned is what there is,
    and the report says so). No round with such a run meets a target."""
    out: list[str] = []
    if r.connections == 0:
        out.append("no connection completed in the window")
    if r.errors:
        out.append(f"{r.errors} errors")
    if r.warmup_errors:
        out.append(f"{r.warmup_errors} errors in the warm-up")
    if not r.pinned and can_pin():
        out.append("not pinned (server and generator shared CPUs)")
    return out


def invalid_runs(rounds: Sequence[Sequence[Result]]) -> list[str]:
    """Why the measurement is not valid: ``run_problems`` of every run, with where it ran."""
    out: list[str] = []
    for i, results in enumerate(rounds, 1):
        where = f"round {i}, " if len(rounds) > 1 else ""
        out.extend(f"{where}tier {r.tier}: {why}" for r in results for why in run_problems(r))
    return out


_free_port = free_port


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return [pid]


def _pin_server(pid: int) -> bool:
    """Pin every thread of the server to PROXY_CPU (taskset may be missing, in which case the
    server started unpinned); True when all of them run there only."""
    if not can_pin():
        return False
    for tid in _threads(pid):
        pin_pid(tid, PROXY_CPU)
    pinned = True
    for tid in _threads(pid):
        try:
            pinned = pinned and os.sched_getaffinity(tid) == {PROXY_CPU}
        except ProcessLookupError:
            continue  # a thread that ended meanwhile runs nowhere
        except OSError:
            return False
    return pinned


def _server_config(
    dev: Path, tier: str, quote_ms: int, concurrency: int, *, max_connections: int | None = None
) -> Path:
    """A serve.toml for ``tier`` (``off``: plain TLS clients served unattested) next to dev-init's."""
    text = (dev / "serve.toml").read_text()
    limit = max_connections if max_connections is not None else max(1024, concurrency * 4)
    server_extra = f"max_connections = {limit}\n"
    if tier == "off":
        server_extra += 'plain_clients = "serve-unattested"\n'
    text = text.replace("[server]\n", "[server]\n" + server_extra, 1)
    attester_extra = f'tier = "{"strict" if tier == "off" else tier}"\n'
    text = text.replace('kind = "software"\n', 'kind = "software"\n' + attester_extra, 1)
    text = text.replace(
        'platform_key = "platform-key.pem"\n',
        f'platform_key = "platform-key.pem"\nsimulated_quote_ms = {quote_ms}\n',
        1,
    )
    out = dev / f"serve-bench-{tier}.toml"
    out.write_text(text)
    return out


async def run_attest_bench(
    tier: str, quote_ms: int, concurrency: int, duration: float, warmup: float = 1.0
) -> Result:
    problems = option_errors(
        tiers=[tier], quote_ms=quote_ms, concurrency=concurrency, duration=duration, warmup=warmup
    )
    if problems:
        raise ValueError("; ".join(f"{flag}: {why}" for flag, why in problems))
    # Each client holds two descriptors here (its connection and the backend's side of it); the
    # server, started below, inherits the limit.
    raise_nofile(4 * concurrency + 256)
    async with bench_server(tier, quote_ms, concurrency) as (proc, settings, pinned):
        result = Result(tier, concurrency, duration, quote_ms, pinned=pinned)
        cpu = CpuWindow({"server": proc.pid})
        await _load(tier, settings, concurrency, warmup, duration, result, cpu.start, cpu.stop)
        result.server_cpu_s = cpu.result["server"]
        result.generator_cpu_s = cpu.result["generator"]
        return result


@contextlib.asynccontextmanager
async def bench_server(
    tier: str,
    quote_ms: int,
    concurrency: int,
    *,
    wrap_argv: Callable[[list[str]], list[str]] | None = None,
) -> AsyncIterator[tuple[subprocess.Popen[bytes], ClientSettings, bool]]:
    """The layout of ``bench attest`` (module docstring): a dev-init folder, the suite's backend
    in this process, ``atls-proxy serve`` for ``tier`` pinned to ``PROXY_CPU`` (its argv through
    ``wrap_argv`` first, e.g. to run it under a profiler) and this process pinned to
    ``GENERATOR_CPU``. Yields the server process, client settings that reach it and whether the
    pinning took; stops the server and restores this process's affinity afterwards."""
    with tempfile.TemporaryDirectory(prefix="atls-bench-") as tmp:
        dev = Path(tmp)
        dev_init(dev)
        # The suite's backend protocol, in this process: it shares the generator's core.
        backend = await asyncio.get_running_loop().create_server(
            HTTPBackend, "127.0.0.1", 0, backlog=4096
        )
        bport = backend.sockets[0].getsockname()[1]
        sport = _free_port()
        argv = serve_argv(_server_config(dev, tier, quote_ms, concurrency), sport, bport)
        if wrap_argv is not None:
            argv = wrap_argv(argv)
        proc = subprocess.Popen(
            pinned_argv(argv, PROXY_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        before: set[int] | None = None
        try:
            pin_pid(proc.pid, PROXY_CPU)  # without taskset: at once, before it starts threads
            before = pin_self(GENERATOR_CPU)
            await _wait_port(sport, proc)
            pinned = _pin_server(proc.pid) and before is not None
            settings = build_client_settings(
                load_client_config(dev / "connect.toml", server=f"127.0.0.1:{sport}")
            )
            yield proc, settings, pinned
        finally:
            # In a thread, so that this loop keeps running meanwhile: the client connections
            # cancelled at the end of the window close in it, and the server's drain, which waits
            # for them, ends at once instead of at the 10 s kill.
            await asyncio.to_thread(stop, proc, 10)
            backend.close()
            unpin_self(before)  # the affinity this process had before, not every CPU


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    await wait_port(port, proc, "server", timeout)


async def _load(
    tier: str,
    settings: ClientSettings,
    concurrency: int,
    warmup: float,
    duration: float,
    result: Result,
    window_opens: Callable[[], object],
    window_closes: Callable[[], object] | None = None,
) -> None:
    """Closed loop: ``concurrency`` clients, each starting a new connection when its last one
    ended, for ``warmup + duration`` seconds without a pause. Steady state: only connections that
    *complete* inside the measurement window (after the warm-up) are counted, whenever they
    started, and the rate is completions / window. (Counting only connections that start and end
    inside one window under-counts when latency is long against the window: in the strict tier
    64 clients wait ~2.6 s each, and a 5 s window would lose half its completions.)

    The window opens at ``t_open`` (``window_opens`` is called then, by a timer or by the first
    connection completing after it) and closes at ``t_close`` — or earlier, when the cap
    (MAX_CONNECTIONS started) stops the clients: then when the first of them stops, and
    ``result.capped`` is set. ``window_closes`` is called at that moment, before the connections
    still open are cancelled (they are not counted), and ``result.duration_s`` is set to the span
    between the two calls as measured: counts, duration and CPU readings cover one span."""
    # ``off``: the same client TLS stack as the attested tiers (TLSStream over pyOpenSSL, the same
    # context, so the same key exchange: X25519MLKEM768 with OpenSSL 4), minus the Expat exchange
    # — so that off vs a tier differs by attestation only.
    connect = plain_opener(settings) if tier == "off" else attested_opener(settings)
    request = request_bytes("/small", close=True)
    t_start = time.monotonic()
    t_open, t_close = t_start + warmup, t_start + warmup + duration
    count = 0
    running = concurrency
    opened_at: float | None = None
    closed_at: float | None = None
    in_flight: dict[int, float] = {}  # connection number -> its start
    ages_at_close: list[float] = []

    def open_window() -> None:
        nonlocal opened_at
        if opened_at is None:
            opened_at = time.monotonic()
            window_opens()

    def close_window(*, capped: bool) -> None:
        nonlocal closed_at
        if closed_at is not None:
            return
        open_window()  # the cap reached in the warm-up: an empty window
        closed_at = time.monotonic()
        ages_at_close.extend((closed_at - t0) * 1000 for t0 in in_flight.values())
        result.capped = capped
        if window_closes is not None:
            window_closes()

    async def worker() -> None:
        nonlocal count, running
        while closed_at is None and time.monotonic() < t_close and count < MAX_CONNECTIONS:
            count += 1
            n = count
            t0 = in_flight[n] = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for runs the coroutine as one more
                # task per connection, which the generator's core would pay for.
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await request_close(connect, request)
                ok, exc = True, None
            except ERRORS as e:  # anything else is a bug and ends the run
                ok, exc = False, e
            finally:
                del in_flight[n]
            t1 = time.monotonic()
            if t1 >= t_open:
                open_window()
            if t1 >= t_close:
                close_window(capped=False)  # before the closer's timer ran
            if opened_at is None and not ok:
                result.warmup_errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"warm-up: {type(exc).__name__}: {exc}")
            if opened_at is None or closed_at is not None:
                continue
            if ok:
                result.latencies_ms.append((t1 - t0) * 1000)  # counts the connection
            else:
                result.errors += 1
                if len(result.error_samples) < 5:
                    f = exc.report.first_failure if isinstance(exc, AttestationFailed) else None
                    result.error_samples.append(
                        f"{f.name}: {f.detail}" if f else f"{type(exc).__name__}: {exc}"
                    )
        running -= 1
        if count >= MAX_CONNECTIONS:
            # The cap ended the closed loop: from the first client it stops, the load is no
            # longer --concurrency clients, so the window closes now (a slow connection still in
            # flight must not stretch it and lower the rate).
            close_window(capped=True)
        elif running == 0:
            close_window(capped=False)

    async def at(t: float, then: Callable[[], None]) -> None:
        # Looped: a timer may fire a little early (uvloop's are in milliseconds).
        while (left := t - time.monotonic()) > 0:
            await asyncio.sleep(left)
        then()

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    tasks.append(asyncio.ensure_future(at(t_open, open_window)))
    tasks.append(
        asyncio.ensure_future(at(t_close, lambda: close_window(capped=count >= MAX_CONNECTIONS)))
    )
    try:
        pending: set[asyncio.Future[None]] = set(tasks)
        while closed_at is None and pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                break
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    # A worker that died of an unexpected exception would silently lower the concurrency.
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            raise RuntimeError("a load-generator worker failed") from t.exception()
    assert opened_at is not None and closed_at is not None
    result.duration_s = closed_at - opened_at
    result.account_in_flight(ages_at_close)


def _cell(x: object) -> str:
    return "—" if x is None else str(x)


def _window_cell(r: Result) -> str:
    d = _finite(r.duration_s, 2)
    return f"{_cell(d)} (capped)" if r.capped else _cell(d)


_RUN_HEADER = (
    "conn/s | connections (n) | p50 ms | p99 ms | errors | conn per server CPU-s | "
    "generator CPU % | window s | pinned |"
)


def _run_cells(r: Result) -> str:
    j = r.to_json()
    return (
        f"{j['connections_per_s']} | {j['connections']} | {_cell(j['p50_ms'])} | "
        f"{_cell(j['p99_ms'])} | {j['errors']} | {_cell(j['connections_per_server_cpu_s'])} | "
        f"{_percent(r.generator_cpu_s, r.duration_s)} | {_window_cell(r)} | "
        f"{'yes' if r.pinned else 'NO'} |"
    )


def render(results: list[Result]) -> str:
    rows = [f"| tier | {_RUN_HEADER}", "|---" * 10 + "|"]
    rows += [f"| {r.tier} | {_run_cells(r)}" for r in results]
    rows += _footnotes([results])
    return "\n".join(rows)


def _footnotes(rounds: Sequence[Sequence[Result]]) -> list[str]:
    runs = [r for results in rounds for r in results]
    notes = [
        "Attester: the SIMULATED software attester (no TEE), quote latency "
        + ", ".join(sorted({f"{r.simulated_quote_ms} ms" for r in runs}))
        + ", one quote at a time.",
        f"p50/p99: nearest-rank over the n connections completed in the window and, as lower "
        f"bounds, those still in flight at its close that were slower than the completed p99; "
        f"window: the measured span (--duration, shorter when capped at {MAX_CONNECTIONS:,} "
        "connections).",
    ]
    in_flight = [r for r in runs if r.in_flight_ms]
    if in_flight:
        oldest = max(r.in_flight_ms[-1] for r in in_flight)
        notes.append(
            f"In flight at the close (not completed, not in the rate): up to "
            f"{max(len(r.in_flight_ms) for r in in_flight)} per run, the oldest {oldest:.0f} ms; "
            "one in flight over twice as long as the slowest completed one (and 1 s longer at "
            "least) is counted as an error (stalled)."
        )
    if any(r.capped for r in runs):
        notes.append(
            f"Capped: every client stopped at {MAX_CONNECTIONS:,} connections before --duration "
            "ended; those runs' rate and CPU are over the shorter window shown."
        )
    if any(not r.pinned for r in runs):
        notes.append(
            "Not pinned: server and generator shared the CPUs (fewer than two usable CPUs, or the "
            "affinity could not be set); per-core readings do not apply."
        )
    return ["", *notes]


def _percent(cpu_s: float, wall_s: float) -> str:
    if not (math.isfinite(cpu_s) and math.isfinite(wall_s)) or wall_s <= 0:
        return "—"
    return f"{cpu_s / wall_s * 100:.0f}"


def print_results(results: list[Result], as_json: bool) -> None:
    if as_json:
        docs = [r.to_json() for r in results]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, allow_nan=False))
    else:
        print(render(results))


# -- rounds: the tiers interleaved, ratios per round ------------------------------------------
#
# On a shared 2-vCPU guest the same code runs ±20-30 % faster or slower from one minute to the
# next (docs/PERFORMANCE.md), so a ratio of two tiers is only meaningful between runs made close
# together, and only over several rounds. ``--rounds N`` runs every tier once per round, one after
# the other, and reports each round's ratios with their median and range.


@dataclass(frozen=True)
class Target:
    """A ratio the evidence engine is judged by, with its whole condition: in a round it is met
    iff ``num``'s rate ÷ ``den``'s (unrounded) ≥ ``threshold``, ``num``'s p99 < ``max_p99_ms``
    (when set) and neither run had an error (p99 and the rate only see successes)."""

    num: str
    den: str
    threshold: float
    max_p99_ms: float | None
    # Whether the ratio per server CPU-second means something (not for strict, whose rate is the
    # TEE's, not the proxy's CPU).
    cpu_ratio: bool

    @property
    def name(self) -> str:
        return f"{self.num}/{self.den}"

    def describe(self) -> str:
        p99 = f" with {self.num} p99 < {self.max_p99_ms:g} ms" if self.max_p99_ms else ""
        return f"≥ {self.threshold:g}{p99}, no errors"


# The targets: batched >= 20x strict with p99 < 200 ms; cached >= 0.8x off.
TARGETS: tuple[Target, ...] = (
    Target("batched", "strict", 20.0, 200.0, False),
    Target("cached", "off", 0.8, None, True),
)


def _ratio_round(target: Target, a: Result | None, b: Result | None) -> dict[str, Any]:
    """One round of ``target``: the ratio (None without one), its per-CPU form, p99, errors, met."""
    ratio = _rate(a) / _rate(b) if a is not None and b is not None and _rate(b) > 0 else None
    per_cpu = None
    if (
        target.cpu_ratio
        and ratio is not None
        and a is not None
        and b is not None
        and a.server_cpu_s > 0
        and b.server_cpu_s > 0
        and b.connections
    ):
        per_cpu = (a.connections / a.server_cpu_s) / (b.connections / b.server_cpu_s)
    p99 = a.p99_ms() if a is not None else None
    errors = [a.errors if a is not None else None, b.errors if b is not None else None]
    met = (
        ratio is not None
        and ratio >= target.threshold
        and (target.max_p99_ms is None or (p99 is not None and p99 < target.max_p99_ms))
        and a is not None
        and b is not None
        and not run_problems(a)
        and not run_problems(b)
    )
    return {"ratio": ratio, "per_cpu": per_cpu, "p99": p99, "errors": errors, "met": met}


# Connections a window can count beyond its length's worth of quotes: the quote under way when
# the window opened, and one that ended just before it whose connection completes inside (its
# remaining work, a few milliseconds, is shorter than a quote).
EDGE_CONNECTIONS = 2


@dataclass(frozen=True)
class TeeBound:
    """The third target, a ceiling rather than a ratio: ``tier`` (strict: a fresh quote for every
    connection) completes at most as many connections per second as the TEE produces quotes. The
    simulated quote takes ``quote_ms`` and never runs twice at once, so the TEE's rate is
    1000 / ``quote_ms`` per second, and a window of W seconds can count at most W·1000/quote_ms
    connections plus ``EDGE_CONNECTIONS``. In a round it is met iff the tier's rate (unrounded) is
    at or below ``max_rate(W)`` and the run completed a connection and had no error (the rate
    only sees successes: failures would lower it)."""

    tier: str
    quote_ms: int

    @property
    def tee_rate(self) -> float:
        return 1000 / self.quote_ms

    def max_rate(self, window_s: float) -> float:
        return self.tee_rate + EDGE_CONNECTIONS / window_s

    def describe(self) -> str:
        return (
            f"≤ {self.tee_rate:g} conn/s = 1000 / {self.quote_ms} ms quote, "
            f"+ {EDGE_CONNECTIONS} connections per window, no errors"
        )


# Whose rate the TEE bounds: only strict waits for a quote of its own on every connection.
TEE_BOUND_TIER = "strict"


def tee_bound(rounds: Sequence[Sequence[Result]]) -> TeeBound | str:
    """The TEE bound the rounds are judged by, or why they are not: the tier was not run, or ran
    without a simulated quote latency (no TEE rate to compare with), or with different ones."""
    quote_ms = {
        r.simulated_quote_ms for results in rounds for r in results if r.tier == TEE_BOUND_TIER
    }
    if not quote_ms:
        return f"{TEE_BOUND_TIER} was not run"
    if len(quote_ms) > 1:
        return f"{TEE_BOUND_TIER} ran with different --simulated-quote-ms"
    q = quote_ms.pop()
    if q <= 0:
        return "--simulated-quote-ms 0: no TEE rate to compare with"
    return TeeBound(TEE_BOUND_TIER, q)


def _bound_round(bound: TeeBound, r: Result | None) -> dict[str, Any]:
    """One round of ``bound``: the tier's rate (None: not run this round), its errors, met."""
    rate = _rate(r) if r is not None else None
    errors = r.errors if r is not None else None
    # A window that is not a positive finite span measures nothing (its rate reads 0).
    window = r is not None and math.isfinite(r.duration_s) and r.duration_s > 0
    met = (
        r is not None
        and window
        and _rate(r) <= bound.max_rate(r.duration_s)
        and not run_problems(r)
    )
    return {"rate": rate, "errors": errors, "met": met}


def summarize(rounds: list[list[Result]]) -> dict[str, Any]:
    """Median, min and max rate and p99 per tier over the rounds, and for each target in
    ``TARGETS`` whose two tiers were measured: each round's ratio (end to end, and per server
    CPU-second; None when the denominator completed nothing), the numerator's p99, both runs'
    errors, whether the round met the target's whole condition, and how many rounds did. Under
    ``bounds``, keyed by tier, the same for the TEE bound (``tee_bound``) when it is judged —
    strict was run, with a simulated quote latency: the bound, each round's rate and errors,
    whether the round met it, and how many rounds did; nothing when it is not judged."""
    by_tier: dict[str, list[Result]] = {}
    for results in rounds:
        for r in results:
            by_tier.setdefault(r.tier, []).append(r)

    def spread(values: list[float], digits: int) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), digits),
            "min": round(min(values), digits),
            "max": round(max(values), digits),
        }

    tiers: dict[str, Any] = {}
    for tier, results in by_tier.items():
        p99s = [p for r in results if (p := r.p99_ms()) is not None]
        tiers[tier] = {
            "connections_per_s": spread([_rate(r) for r in results], 1),
            "p99_ms": spread(p99s, 1) if p99s else None,
            "errors": sum(r.errors for r in results),
        }

    def r3(x: float | None) -> float | None:
        return None if x is None else _finite(x, 3)

    ratios: dict[str, Any] = {}
    for target in TARGETS:
        if target.num not in by_tier or target.den not in by_tier:
            continue
        each = []
        for results in rounds:
            got = {r.tier: r for r in results}
            each.append(_ratio_round(target, got.get(target.num), got.get(target.den)))
        values = [e["ratio"] for e in each if e["ratio"] is not None]
        ratios[target.name] = {
            "threshold": target.threshold,
            "max_p99_ms": target.max_p99_ms,
            "target": target.describe(),
            # One entry per round, None where the round has no ratio.
            "per_round": [r3(e["ratio"]) for e in each],
            "per_server_cpu_s": [r3(e["per_cpu"]) for e in each] if target.cpu_ratio else [],
            # Two decimals: the target compares the unrounded value, and 199.96 shown as "200"
            # beside "meets p99 < 200 ms" would read as a contradiction.
            f"{target.num}_p99_ms": [
                None if e["p99"] is None else _finite(e["p99"], 2) for e in each
            ],
            # [numerator's errors, denominator's errors] per round.
            "errors": [e["errors"] for e in each],
            "met": [e["met"] for e in each],
            "median": r3(statistics.median(values)) if values else None,
            "rounds": len(each),
            # The whole condition (ratio, p99 where the target has one, no errors).
            "rounds_meeting_target": sum(1 for e in each if e["met"]),
        }
    bounds: dict[str, Any] = {}
    bound = tee_bound(rounds)
    if isinstance(bound, TeeBound):
        each = []
        for results in rounds:
            got = {r.tier: r for r in results}
            each.append(_bound_round(bound, got.get(bound.tier)))
        rates = [e["rate"] for e in each if e["rate"] is not None]
        bounds[bound.tier] = {
            # The TEE's rate, 1000 / simulated_quote_ms; each round is compared, unrounded, with
            # it plus EDGE_CONNECTIONS over that round's window (duration_s).
            "max_connections_per_s": r3(bound.tee_rate),
            "edge_connections": EDGE_CONNECTIONS,
            "simulated_quote_ms": bound.quote_ms,
            "target": bound.describe(),
            # The tier's connections_per_s, one entry per round, None where it was not run.
            "per_round": [r3(e["rate"]) for e in each],
            "errors": [e["errors"] for e in each],
            "met": [e["met"] for e in each],
            "median": r3(statistics.median(rates)) if rates else None,
            "rounds": len(each),
            "rounds_meeting_target": sum(1 for e in each if e["met"]),
        }
    return {"rounds": len(rounds), "tiers": tiers, "ratios": ratios, "bounds": bounds}


def render_rounds(rounds: list[list[Result]], summary: dict[str, Any]) -> str:
    rows = [f"| round | tier | {_RUN_HEADER}", "|---" * 11 + "|"]
    for i, results in enumerate(rounds, 1):
        rows += [f"| {i} | {r.tier} | {_run_cells(r)}" for r in results]
    rows += ["", "| tier | conn/s median [min–max] | p99 ms median [min–max] | errors (sum) |"]
    rows.append("|---|---|---|---|")
    for tier, t in summary["tiers"].items():
        c, p = t["connections_per_s"], t["p99_ms"]
        p99 = f"{p['median']} [{p['min']}–{p['max']}]" if p else "—"
        rows.append(f"| {tier} | {c['median']} [{c['min']}–{c['max']}] | {p99} | {t['errors']} |")
    targets = {t.name: t for t in TARGETS}
    for name, q in summary["ratios"].items():
        t = targets[name]
        head = ["round", name]
        cols: list[list[Any]] = [list(range(1, q["rounds"] + 1)), q["per_round"]]
        if t.cpu_ratio:
            head.append("per server CPU-s")
            cols.append(q["per_server_cpu_s"])
        if t.max_p99_ms is not None:
            head.append(f"{t.num} p99 ms")
            cols.append(q[f"{t.num}_p99_ms"])
        head += [f"errors {t.num}, {t.den}", f"meets {q['target']}"]
        cols.append([", ".join(_cell(e) for e in errs) for errs in q["errors"]])
        cols.append(["yes" if m else "no" for m in q["met"]])
        rows += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for cells in zip(*cols, strict=True):
            rows.append("| " + " | ".join(_num(c) for c in cells) + " |")
    if summary["ratios"]:
        rows += ["", "| ratio | median | rounds meeting the target |", "|---|---|---|"]
        for name, q in summary["ratios"].items():
            rows.append(
                f"| {name} | {_num(q['median'])} | "
                f"{q['rounds_meeting_target']} of {q['rounds']} rounds ({q['target']}) |"
            )
    rows += _bound_rows(rounds, summary)
    rows += _footnotes(rounds)
    return "\n".join(rows)


def _bound_rows(rounds: Sequence[Sequence[Result]], summary: dict[str, Any]) -> list[str]:
    """The TEE bound's table (each round, then the count), or the line saying it is not judged."""
    bound = tee_bound(rounds)
    if not isinstance(bound, TeeBound):
        return ["", f"{TEE_BOUND_TIER} ≤ the TEE's rate: not judged ({bound})."]
    b, t = summary["bounds"][bound.tier], bound.tier
    rows = ["", f"| round | {t} conn/s | errors {t} | meets {b['target']} |", "|---|---|---|---|"]
    for i, (rate, errors, met) in enumerate(
        zip(b["per_round"], b["errors"], b["met"], strict=True)
    ):
        rows.append(f"| {i + 1} | {_num(rate)} | {_cell(errors)} | {'yes' if met else 'no'} |")
    rows += [
        "",
        "| bound | median conn/s | rounds meeting the target |",
        "|---|---|---|",
        f"| {t} ≤ TEE rate | {_num(b['median'])} | "
        f"{b['rounds_meeting_target']} of {b['rounds']} rounds ({b['target']}) |",
    ]
    return rows


def _num(x: object) -> str:
    """A table cell: "—" for None, floats without trailing zeros."""
    if x is None:
        return "—"
    return f"{x:g}" if isinstance(x, float) else str(x)


def print_rounds(rounds: list[list[Result]], as_json: bool) -> None:
    summary = summarize(rounds)
    if as_json:
        doc = {"runs": [[r.to_json() for r in results] for results in rounds], "summary": summary}
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print(render_rounds(rounds, summary))
