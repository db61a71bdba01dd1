"""The bench suite: every workload against the proxy and its baselines, in one run.

Peers (who answers) and generators (who drives them):

=========== ====================================================== ===========================
peer        what                                                   driven by
=========== ====================================================== ===========================
atls        ``atls-proxy serve``, attested (tier ``cached``;       asyncio generator using
atls-TIER   ``attest`` runs one per ``--tier``)                    ``open_attested`` (loadgen)
off-asyncio the same proxy, attestation off for plain TLS clients  the same asyncio generator
            (``plain_clients = "serve-unattested"``)               and TLS client, no Expat
off         the same proxy, attestation off                        wrk
haproxy     HAProxy 2.x, TLS 1.3, ``mode tcp``, ``nbthread 1``      wrk
direct      the backend itself, plain HTTP, no proxy               wrk
=========== ====================================================== ===========================

Workloads (the subject is the peer the ratios are about):

* ``handshake``: new connection per request (``Connection: close``), ``/small`` → connections/s;
  subject ``off`` (plain TLS handshakes through our proxy), baselines ``direct`` and ``haproxy``;
* ``attest``: the same through attested connections, one peer per tier → connections/s; baselines
  ``off-asyncio`` and the ``handshake`` measurements of the same run (not measured twice);
* ``small``: keep-alive, ``--connections`` connections, ``/small`` → requests/s; subject ``atls``,
  baselines ``off-asyncio``, ``off``, ``haproxy``, ``direct``;
* ``bulk``: the same with ``/bulk`` (1 MiB) → MB/s (10^6 bytes of body per second);
* ``idle``: N connections opened, one GET each, then held: proxy RSS growth per connection;
  subject ``atls``, baselines ``off-asyncio`` (the same client stack without Expat: what
  attestation itself costs), ``off`` and ``haproxy`` (plain TLS with the stdlib client).

The proxy (or HAProxy) runs pinned to one core; this process, wrk and the backend to the other.
Every figure is also divided by the CPU seconds the process under test spent in the measured
window (``per_cpu``; for ``direct`` the backend is the process under test), and ``ratio_per_cpu``
compares the subject with each baseline on that footing: work per CPU-second, which does not
depend on how fast the generator is. Every run is repeated, interleaved across peers, and reported
as median with min–max.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atls_proxy.app import build_client_settings
from atls_proxy.bench import loadgen
from atls_proxy.bench.attest import _server_config
from atls_proxy.bench.backend import BULK_SIZE, SMALL_BODY
from atls_proxy.bench.baselines import (
    haproxy_info,
    resumption_probe,
    run_wrk,
    start_haproxy,
    write_wrk_script,
    wrk_successes,
)
from atls_proxy.bench.common import (
    GENERATOR_CPU,
    PROXY_CPU,
    Child,
    CpuWindow,
    can_pin,
    free_port,
    machine_info,
    not_pinned,
    percentile,
    pin_pid,
    pin_self,
    pinned_argv,
    raise_nofile,
    rss_kib,
    serve_argv,
    software_versions,
    unpin_self,
    wait_port,
)
from atls_proxy.ops.config import load_client_config
from atls_proxy.ops.devinit import dev_init
from atls_proxy.proxy.client import ClientSettings

SCHEMA = "atls-proxy-bench/1"
WORKLOADS = ("attest", "handshake", "small", "bulk", "idle")
# Measured in this order: attest reuses the handshake baselines.
RUN_ORDER = ("handshake", "attest", "small", "bulk", "idle")
THROUGHPUT_WORKLOADS = ("attest", "handshake", "small", "bulk")
# The tier of the attested keep-alive and idle peers: the one meant for sustained load.
KEEPALIVE_TIER = "cached"
BASELINES = ("direct", "off", "off-asyncio", "haproxy")
WRK_PEERS = ("direct", "off", "haproxy")
UNITS = {
    "attest": ("connections/s", "connections per server CPU-second"),
    "handshake": ("connections/s", "connections per server CPU-second"),
    "small": ("requests/s", "requests per server CPU-second"),
    "bulk": ("MB/s", "MB per server CPU-second"),
}
PATHS = {"attest": "/small", "handshake": "/small", "small": "/small", "bulk": "/bulk"}
BODY = {"/small": len(SMALL_BODY), "/bulk": BULK_SIZE}
PEER_LABELS = {
    "atls": "atls-proxy, attested (tier {tier}; SIMULATED software attester, no TEE)",
    "off": "atls-proxy, attestation off (plain TLS, serve-unattested)",
    "off-asyncio": "atls-proxy, attestation off, driven like the attested peers",
    "haproxy": "HAProxy, TLS 1.3 termination, mode tcp, nbthread 1",
    "direct": "backend directly, plain HTTP (no proxy)",
}
GEN_ATTESTED = "asyncio generator (open_attested)"
GEN_PLAIN_TLS = "asyncio generator (stdlib ssl)"
GEN_PLAIN = "asyncio generator (TLSStream, no Expat)"
# Opening idle connections: at most this many handshakes in flight.
IDLE_PARALLEL = 32
# Seconds to let the process under test settle before reading its RSS with N connections open.
IDLE_SETTLE = 0.5
Log = Callable[[str], None]


@dataclass(frozen=True)
class SuiteOptions:
    workloads: tuple[str, ...] = WORKLOADS
    duration: int = 10
    warmup: float = 2.0
    repeat: int = 3
    connections: int = 64
    idle_connections: int = 2000
    tiers: tuple[str, ...] = ("cached", "batched")
    simulated_quote_ms: int = 40
    haproxy: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workloads {sorted(unknown)}")
        if self.duration < 1 or self.repeat < 1 or self.connections < 1:
            raise ValueError("duration, repeat and connections must be at least 1")
        if self.idle_connections < 1:
            raise ValueError("idle connections must be at least 1")
        bad = [t for t in self.tiers if t not in ("strict", "batched", "cached")]
        if bad or not self.tiers:
            raise ValueError("tiers are strict, batched or cached")


def quick_options(**overrides: Any) -> SuiteOptions:
    """The ``--quick`` defaults: short windows, 200 idle connections."""
    base: dict[str, Any] = {
        "duration": 2,
        "warmup": 0.5,
        "idle_connections": 200,
        "quick": True,
    }
    base.update(overrides)
    return SuiteOptions(**base)


@dataclass
class Env:
    """Everything a workload needs: options, folders, tools and the running children."""

    opts: SuiteOptions
    tmp: Path
    dev: Path
    log: Log
    wrk: str | None
    haproxy: str | None
    wrk_script: Path | None
    backend: Child | None = None
    proxies: dict[str, Child] = field(default_factory=dict)
    haproxy_child: Child | None = None
    settings: dict[int, ClientSettings] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def backend_child(self) -> Child:
        assert self.backend is not None
        return self.backend

    def client_settings(self, port: int) -> ClientSettings:
        if port not in self.settings:
            self.settings[port] = build_client_settings(
                load_client_config(self.dev / "connect.toml", server=f"127.0.0.1:{port}")
            )
        return self.settings[port]

    def plain_tls(self) -> ssl.SSLContext:
        tls = ssl.create_default_context(cafile=str(self.dev / "ca.pem"))
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        return tls


# --- children -------------------------------------------------------------------------------------


async def start_backend(env: Env) -> Child:
    """The HTTP backend, on this process's (the generator's) core; it prints its port."""
    log = env.tmp / "backend.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atls_proxy.bench.backend", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    child = Child("backend", proc, 0, GENERATOR_CPU if can_pin() else None)
    env.children.append(child)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    if not line.startswith(b"PORT "):
        raise RuntimeError(f"backend did not start: {log.read_text(errors='replace')[-1000:]}")
    child.port = int(line.split()[1])
    pin_pid(proc.pid, GENERATOR_CPU)
    return child


async def start_proxy(env: Env, tier: str, max_connections: int) -> Child:
    """``atls-proxy serve`` on the proxy core; ``tier`` ``off`` serves plain TLS unattested."""
    opts = env.opts
    cfg = _server_config(
        env.dev,
        tier,
        opts.simulated_quote_ms,
        opts.connections,
        max_connections=max_connections,
    )
    port = free_port()
    argv = serve_argv(cfg, port, env.backend_child.port)
    log = env.tmp / f"serve-{tier}-{port}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            pinned_argv(argv, PROXY_CPU),
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    child = Child(f"atls-proxy ({tier})", proc, port, PROXY_CPU if can_pin() else None)
    env.children.append(child)
    pin_pid(proc.pid, PROXY_CPU)
    await wait_port(port, proc, child.name, log=log)
    return child


async def proxy(env: Env, tier: str) -> Child:
    """The shared proxy of ``tier`` for throughput workloads (started once, reused)."""
    if tier not in env.proxies:
        env.proxies[tier] = await start_proxy(env, tier, max(1024, env.opts.connections * 4))
    return env.proxies[tier]


async def haproxy(env: Env) -> Child | None:
    if env.haproxy is None:
        return None
    if env.haproxy_child is None:
        env.haproxy_child = await start_haproxy(
            env.haproxy, env.tmp, env.dev, env.backend_child.port, 4096
        )
        env.children.append(env.haproxy_child)
    return env.haproxy_child


def stop_child(env: Env, child: Child) -> None:
    child.stop()
    if child in env.children:
        env.children.remove(child)


# --- one run ------------------------------------------------------------------------------------


def make_record(
    workload: str,
    *,
    completed: int,
    duration_s: float,
    body_bytes: int,
    errors: int,
    p50_ms: float | None,
    p99_ms: float | None,
    cpu: dict[str, float],
    error_samples: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The raw figures of one measured window; ``throughput`` and ``per_cpu`` in the workload's unit."""
    work = body_bytes / 1e6 if workload == "bulk" else float(completed)
    server_cpu = cpu.get("server", 0.0)
    backend_cpu = cpu.get("backend", 0.0)
    record: dict[str, Any] = {
        "throughput": round(work / duration_s, 2) if duration_s > 0 else 0.0,
        "completed": completed,
        "body_bytes": body_bytes,
        "duration_s": round(duration_s, 3),
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "errors": errors,
        "server_cpu_s": round(server_cpu, 3),
        "backend_cpu_s": round(backend_cpu, 3),
        "generator_cpu_s": round(cpu.get("generator", 0.0), 3),
        "per_cpu": round(work / server_cpu, 2) if server_cpu > 0 and work > 0 else None,
        # How busy each core was: near 1.0 is the bottleneck. The backend shares the generator's.
        "server_core_busy": round(server_cpu / duration_s, 2) if duration_s > 0 else None,
        "generator_core_busy": round((cpu.get("generator", 0.0) + backend_cpu) / duration_s, 2)
        if duration_s > 0
        else None,
    }
    if error_samples:
        record["error_samples"] = list(error_samples)[:5]
    if extra:
        record.update(extra)
    return record


async def wrk_run(env: Env, workload: str, peer: str, server: Child | None) -> dict[str, Any]:
    """One wrk window against ``server`` (None: the backend directly)."""
    assert env.wrk is not None and env.wrk_script is not None
    backend = env.backend_child
    path = PATHS[workload]
    close = workload == "handshake"
    if server is None:
        url = f"http://127.0.0.1:{backend.port}{path}"
        pids = {"server": backend.pid, "backend": backend.pid}
    else:
        url = f"https://127.0.0.1:{server.port}{path}"
        pids = {"server": server.pid, "backend": backend.pid}
    stats_before = _haproxy_ssl_conns(env) if peer == "haproxy" else None
    window = CpuWindow(pids)
    window.start()
    res = await run_wrk(
        env.wrk, url, env.opts.connections, env.opts.duration, env.wrk_script, close
    )
    cpu = window.stop()
    extra: dict[str, Any] = {"error_detail": res.error_detail}
    if stats_before is not None:
        after = _haproxy_ssl_conns(env)
        if after is not None:
            # A full handshake per request: TLS connections accepted ≈ requests completed.
            extra["tls_connections"] = after - stats_before
    ok = wrk_successes(res)  # non-2xx answers are errors, not work
    return make_record(
        workload,
        completed=ok,
        duration_s=res.duration_s,
        body_bytes=ok * BODY[path],
        errors=res.errors,
        p50_ms=res.p50_ms,
        p99_ms=res.p99_ms,
        cpu=cpu,
        extra=extra,
    )


def _haproxy_ssl_conns(env: Env) -> int | None:
    child = env.haproxy_child
    if child is None:
        return None
    try:
        info = haproxy_info(env.tmp / f"haproxy-{child.port}.sock")
        return int(info.get("CumSslConns", ""))
    except (OSError, ValueError):
        return None


async def gen_run(env: Env, workload: str, server: Child, attested: bool = True) -> dict[str, Any]:
    """One asyncio-generator window: attested, or plain TLS with the same client stack."""
    opts = env.opts
    settings = env.client_settings(server.port)
    opener = loadgen.attested_opener(settings) if attested else loadgen.plain_opener(settings)
    window = CpuWindow({"server": server.pid, "backend": env.backend_child.pid})
    path = PATHS[workload]
    if workload == "attest":
        fig = await loadgen.per_request(
            opener, path, opts.connections, opts.duration, opts.warmup, window
        )
    else:
        fig = await loadgen.keepalive(
            opener, path, opts.connections, opts.duration, opts.warmup, window
        )
    lat = sorted(fig.latencies_ms)
    # Nearest-rank, like ``bench attest`` (common.percentile), rounded to the microsecond.
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return make_record(
        workload,
        completed=fig.completed,
        duration_s=fig.duration_s,
        body_bytes=fig.body_bytes,
        errors=fig.errors,
        p50_ms=None if p50 is None else round(p50, 3),
        p99_ms=None if p99 is None else round(p99, 3),
        cpu=window.result,
        error_samples=fig.error_samples,
        extra={"mean_ms": round(statistics.fmean(lat), 3) if lat else None},
    )


# --- summaries ----------------------------------------------------------------------------------

SUMMARY_KEYS = ("throughput", "per_cpu", "p50_ms", "p99_ms", "server_cpu_s", "errors")


def spread(values: Sequence[float | int | None]) -> dict[str, float] | None:
    nums = [float(v) for v in values if v is not None]
    if not nums:
        return None
    return {
        "median": round(statistics.median(nums), 3),
        "min": round(min(nums), 3),
        "max": round(max(nums), 3),
    }


def runs_with_errors(doc: dict[str, Any]) -> list[str]:
    """Every peer of every workload whose runs had errors: ``"<workload> <peer>: N errors"``."""
    out: list[str] = []
    sections = dict(doc.get("workloads", {}))
    if doc.get("idle") is not None:
        sections["idle"] = doc["idle"]
    for workload, w in sections.items():
        for name, peer in w.get("peers", {}).items():
            if peer.get("shared_with"):
                continue  # counted where it was measured
            n = sum(int(r.get("errors") or 0) for r in peer.get("runs", []))
            if n:
                out.append(f"{workload} {name}: {n} errors")
    return out


def summarize(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    return {k: spread([r.get(k) for r in runs]) for k in keys}


def _median(peer: dict[str, Any], key: str) -> float | None:
    s = peer.get("summary", {}).get(key)
    return None if s is None else float(s["median"])


def _paired(mine: dict[str, Any], base: dict[str, Any], key: str) -> list[float]:
    """``subject ÷ baseline`` of ``key`` round by round (run i of each: the runs are interleaved,
    so run i of every peer of a workload ran within the same minutes)."""
    out = []
    for a, b in zip(mine.get("runs", []), base.get("runs", []), strict=False):
        x, y = a.get(key), b.get(key)
        if x is not None and y is not None and x > 0 and y > 0:
            out.append(x / y)
    return out


def ratios(peers: dict[str, dict[str, Any]], subject: str, key: str) -> dict[str, float]:
    """``subject ÷ baseline`` of ``key`` for every baseline: the median of the ratios taken
    within each round. On this kind of machine the same code runs 20–30 % faster or slower from
    one minute to the next (docs/PERFORMANCE.md); within a round both runs share that drift, across
    rounds they do not, so a ratio of medians could pair one peer's fast minute with another's
    slow one. A baseline measured in another phase (``shared_with``: the attest workload's wrk
    peers are the handshake workload's runs) has no round of its own to pair: the ratio of the
    medians. ``ratio_spreads`` gives the per-round ratios' range."""
    out: dict[str, float] = {}
    mine = peers.get(subject)
    if mine is None:
        return out
    for name in BASELINES:
        if name == subject or name not in peers:
            continue
        base = peers[name]
        if base.get("shared_with"):
            s, b = _median(mine, key), _median(base, key)
            if s is not None and b is not None and s > 0 and b > 0:
                out[name] = round(s / b, 3)
            continue
        pairs = _paired(mine, base, key)
        if pairs:
            out[name] = round(statistics.median(pairs), 3)
    return out


def ratio_spreads(
    peers: dict[str, dict[str, Any]], subject: str, key: str
) -> dict[str, dict[str, float]]:
    """The per-round ratios of ``ratios`` (median, min, max) for the baselines measured in the
    same rounds as the subject."""
    mine = peers.get(subject)
    if mine is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name in BASELINES:
        if name == subject or name not in peers or peers[name].get("shared_with"):
            continue
        sp = spread(_paired(mine, peers[name], key))
        if sp is not None:
            out[name] = sp
    return out


# --- the workloads ------------------------------------------------------------------------------


def _peer_doc(name: str, label: str, generator: str) -> dict[str, Any]:
    return {"label": label, "generator": generator, "runs": []}


async def throughput_workload(env: Env, workload: str, shared: dict[str, Any]) -> dict[str, Any]:
    """``handshake``, ``attest``, ``small`` or ``bulk``: every peer, ``repeat`` interleaved rounds."""
    opts = env.opts
    plan: list[tuple[str, Callable[[], Any]]] = []
    peers: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    conn_mode = "Connection: close" if workload == "handshake" else "keep-alive"
    wrk_gen = f"wrk (1 thread, {opts.connections} connections, {conn_mode})"

    def add(name: str, label: str, generator: str, run: Callable[[], Any]) -> None:
        peers[name] = _peer_doc(name, label, generator)
        plan.append((name, run))

    subject = {"attest": f"atls-{opts.tiers[0]}", "handshake": "off"}.get(workload, "atls")
    # 1. Attested peers, driven by the asyncio generator.
    if workload == "attest":
        for tier in opts.tiers:
            child = await proxy(env, tier)
            add(
                f"atls-{tier}",
                PEER_LABELS["atls"].format(tier=tier)
                + f", simulated quote {opts.simulated_quote_ms} ms",
                f"{GEN_ATTESTED}, {opts.connections} concurrent, new connection per request",
                _bind(gen_run, env, workload, child),
            )
    elif workload != "handshake":
        child = await proxy(env, KEEPALIVE_TIER)
        add(
            "atls",
            PEER_LABELS["atls"].format(tier=KEEPALIVE_TIER),
            f"{GEN_ATTESTED}, {opts.connections} keep-alive connections",
            _bind(gen_run, env, workload, child),
        )
    # 2. Attestation off, same generator and client TLS stack minus the Expat exchange.
    if workload != "handshake":
        off = await proxy(env, "off")
        mode = "new connection per request" if workload == "attest" else "keep-alive"
        add(
            "off-asyncio",
            PEER_LABELS["off-asyncio"],
            f"{GEN_PLAIN}, {opts.connections} connections, {mode}",
            _bind(gen_run, env, workload, off, False),
        )
    # 3. wrk-driven peers; attest reuses the handshake workload's (same measurement).
    if workload == "attest":
        for name in WRK_PEERS:
            if name in shared:
                continue
            if env.wrk is None:
                skipped[name] = "wrk is not installed"
            elif name == "haproxy" and env.haproxy is None:
                skipped[name] = _haproxy_skip_reason(env)
            else:
                skipped[name] = "not measured: the handshake workload did not run"
    elif env.wrk is None:
        skipped.update(dict.fromkeys(WRK_PEERS, "wrk is not installed"))
    else:
        off = await proxy(env, "off")
        add("off", PEER_LABELS["off"], wrk_gen, _bind(wrk_run, env, workload, "off", off))
        add("direct", PEER_LABELS["direct"], wrk_gen, _bind(wrk_run, env, workload, "direct", None))
        hap = await haproxy(env)
        if hap is None:
            skipped["haproxy"] = _haproxy_skip_reason(env)
        else:
            add(
                "haproxy",
                PEER_LABELS["haproxy"],
                wrk_gen,
                _bind(wrk_run, env, workload, "haproxy", hap),
            )

    for rnd in range(opts.repeat):
        for name, run in plan:
            record = await run()
            peers[name]["runs"].append(record)
            env.log(
                f"{workload:<9} {name:<12} run {rnd + 1}/{opts.repeat}: "
                f"{record['throughput']:,.1f} {UNITS[workload][0]}, "
                f"server CPU {record['server_cpu_s']:.2f}s, errors {record['errors']}"
            )
    for doc in peers.values():
        doc["summary"] = summarize(doc["runs"], SUMMARY_KEYS)

    if workload == "handshake":
        for name in ("off", "haproxy"):
            target = env.proxies.get("off") if name == "off" else env.haproxy_child
            if name in peers and target is not None:
                reused = await asyncio.to_thread(resumption_probe, target.port, env.dev / "ca.pem")
                peers[name]["resumption_accepted"] = reused
                if reused:
                    env.notes.append(
                        f"WARNING: {name} resumed a TLS session in the probe: its handshake "
                        "figures may include abbreviated handshakes"
                    )
    if workload == "attest":
        for name in WRK_PEERS:
            if name in shared:
                peers[name] = dict(shared[name], shared_with="handshake")

    out: dict[str, Any] = {
        "unit": UNITS[workload][0],
        "per_cpu_unit": UNITS[workload][1],
        "subject": subject,
        "peers": peers,
        "ratio_per_cpu": ratios(peers, subject, "per_cpu"),
        "ratio": ratios(peers, subject, "throughput"),
        "ratio_per_cpu_spread": ratio_spreads(peers, subject, "per_cpu"),
    }
    if workload == "attest":
        # The wrk peers' figures are the handshake workload's runs (an earlier phase, another
        # generator): per server CPU-second they compare, end to end they do not.
        for name in WRK_PEERS:
            out["ratio"].pop(name, None)
        out["ratio_per_cpu_by_tier"] = {
            name: ratios(peers, name, "per_cpu") for name in peers if name.startswith("atls-")
        }
    if skipped:
        out["skipped"] = skipped
    return out


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


async def idle_run(env: Env, peer: str, n: int) -> dict[str, Any]:
    """A fresh process for ``peer``; open ``n`` connections, one GET each, hold; RSS growth."""
    limit = n + 256
    if peer == "atls":
        child = await start_proxy(env, KEEPALIVE_TIER, limit)
    elif peer in ("off", "off-asyncio"):
        child = await start_proxy(env, "off", limit)
    else:
        assert env.haproxy is not None
        child = await start_haproxy(env.haproxy, env.tmp, env.dev, env.backend_child.port, limit)
        env.children.append(child)
    try:
        opener: Callable[[], Any]
        if peer == "atls":
            settings = env.client_settings(child.port)

            def opener() -> Any:
                return loadgen.attested_get(settings, "/small")
        elif peer == "off-asyncio":
            # The attested peer's client stack minus Expat: the same key exchange, so
            # atls ÷ off-asyncio is what attestation itself costs in memory per connection.
            plain_settings = env.client_settings(child.port)

            def opener() -> Any:
                return loadgen.plain_get(plain_settings, "/small")
        else:
            tls = env.plain_tls()

            def opener() -> Any:
                return loadgen.plain_tls_get(child.port, tls, "/small")

        warm = await loadgen.open_many(opener, 4, 4, loadgen.GenFigures())
        await loadgen.close_all(warm)
        await asyncio.sleep(0.3)
        rss0 = rss_kib(child.pid)
        window = CpuWindow({"server": child.pid, "backend": env.backend_child.pid})
        fig = loadgen.GenFigures()
        window.start()
        t0 = time.monotonic()
        conns = await loadgen.open_many(opener, n, IDLE_PARALLEL, fig)
        opened_s = time.monotonic() - t0
        await asyncio.sleep(IDLE_SETTLE)
        rss1 = rss_kib(child.pid)
        cpu = window.stop()
        await loadgen.close_all(conns)
    finally:
        # In a thread: the closes above complete in this loop while the server drains.
        await asyncio.to_thread(stop_child, env, child)
    held = len(conns)
    server_cpu = cpu["server"]
    return {
        "connections": held,
        "errors": fig.errors,
        "error_samples": fig.error_samples[:5],
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_conn_kib": round((rss1 - rss0) / held, 2) if held and rss0 > 0 else None,
        "open_s": round(opened_s, 3),
        "server_cpu_s": round(server_cpu, 3),
        "backend_cpu_s": round(cpu["backend"], 3),
        "generator_cpu_s": round(cpu["generator"], 3),
        # Connection set-ups per CPU-second of the process under test while opening them.
        "per_cpu": round(held / server_cpu, 2) if server_cpu > 0 and held else None,
    }


async def idle_workload(env: Env) -> dict[str, Any]:
    opts = env.opts
    n = opts.idle_connections
    soft = raise_nofile(2 * n + 1024)
    if soft < 2 * n + 256:
        capped = max(1, (soft - 256) // 2)
        env.notes.append(
            f"idle: RLIMIT_NOFILE is {soft}; holding {capped} connections instead of {n}"
        )
        n = capped
    plan = ["atls", "off-asyncio", "off"]
    skipped: dict[str, str] = {}
    if env.haproxy is not None:
        plan.append("haproxy")
    else:
        skipped["haproxy"] = _haproxy_skip_reason(env)
    peers: dict[str, dict[str, Any]] = {
        "atls": _peer_doc(
            "atls", PEER_LABELS["atls"].format(tier=KEEPALIVE_TIER), f"{GEN_ATTESTED}, one GET"
        ),
        "off-asyncio": _peer_doc(
            "off-asyncio", PEER_LABELS["off-asyncio"], f"{GEN_PLAIN}, one GET"
        ),
        "off": _peer_doc("off", PEER_LABELS["off"], f"{GEN_PLAIN_TLS}, one GET"),
    }
    if "haproxy" in plan:
        peers["haproxy"] = _peer_doc("haproxy", PEER_LABELS["haproxy"], f"{GEN_PLAIN_TLS}, one GET")
    for rnd in range(opts.repeat):
        for name in plan:
            record = await idle_run(env, name, n)
            peers[name]["runs"].append(record)
            env.log(
                f"idle      {name:<12} run {rnd + 1}/{opts.repeat}: {record['connections']} held, "
                f"{record['rss_per_conn_kib']} KiB/connection, errors {record['errors']}"
            )
    for doc in peers.values():
        doc["summary"] = summarize(
            doc["runs"], ("rss_per_conn_kib", "per_cpu", "server_cpu_s", "errors")
        )
    subject_rss = _median(peers["atls"], "rss_per_conn_kib")
    out: dict[str, Any] = {
        "unit": "KiB of RSS per connection",
        "subject": "atls",
        "connections": n,
        "rss_per_conn_kib": subject_rss,
        "peers": peers,
        # subject ÷ baseline of RSS per connection: above 1 = the subject needs more memory.
        "ratio": ratios(peers, "atls", "rss_per_conn_kib"),
    }
    if skipped:
        out["skipped"] = skipped
    return out


def _haproxy_skip_reason(env: Env) -> str:
    if not env.opts.haproxy:
        return "disabled with --no-haproxy"
    return "haproxy is not installed (benchmarks/setup.sh installs it)"


# --- the suite ----------------------------------------------------------------------------------


async def run_suite(opts: SuiteOptions, log: Log | None = None) -> dict[str, Any]:
    """Run the selected workloads and return the JSON document (see the module docstring)."""
    say: Log = log or (lambda _msg: None)
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.monotonic()
    wrk = shutil.which("wrk")
    hap = shutil.which("haproxy") if opts.haproxy else None
    raise_nofile(max(4096, 2 * opts.idle_connections + 1024))
    before = pin_self(GENERATOR_CPU)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started.isoformat(timespec="seconds"),
        "quick": opts.quick,
        "options": {
            "workloads": list(opts.workloads),
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "repeat": opts.repeat,
            "connections": opts.connections,
            "idle_connections": opts.idle_connections,
            "tiers": list(opts.tiers),
            "simulated_quote_ms": opts.simulated_quote_ms,
        },
        "machine": machine_info(),
        "software": software_versions(hap, wrk),
        "generators": {
            "attested peers (atls, atls-TIER)": GEN_ATTESTED
            + " in the bench process, on the generator core",
            "off, haproxy, direct": "wrk, 1 thread, on the generator core",
            "idle": "asyncio generator for every peer (open_attested / TLSStream / stdlib ssl)",
            "backend": "atls_proxy.bench.backend (asyncio Protocol on uvloop), on the generator core",
        },
        "skipped": {},
        "notes": [],
        "workloads": {},
    }
    if not can_pin():
        doc["notes"].append("fewer than 2 CPUs: nothing pinned; figures mix proxy and generator")
    if wrk is None:
        doc["skipped"]["wrk"] = "wrk is not installed (benchmarks/setup.sh installs it)"
    if hap is None:
        doc["skipped"]["haproxy"] = (
            "disabled with --no-haproxy"
            if not opts.haproxy
            else "haproxy is not installed (benchmarks/setup.sh installs it)"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="atls-bench-") as tmp_name:
            tmp = Path(tmp_name)
            dev = tmp / "dev"
            dev_init(dev)
            env = Env(
                opts=opts,
                tmp=tmp,
                dev=dev,
                log=say,
                wrk=wrk,
                haproxy=hap,
                wrk_script=write_wrk_script(tmp) if wrk else None,
            )
            try:
                env.backend = await start_backend(env)
                shared: dict[str, Any] = {}
                for workload in RUN_ORDER:
                    if workload not in opts.workloads:
                        continue
                    t_workload = time.monotonic()
                    if workload == "idle":
                        result = await idle_workload(env)
                        doc["idle"] = result
                    else:
                        result = await throughput_workload(env, workload, shared)
                        if workload == "handshake":
                            shared = result["peers"]
                        doc["workloads"][workload] = result
                    result["elapsed_s"] = round(time.monotonic() - t_workload, 1)
                    say(f"{workload} done in {result['elapsed_s']} s")
            finally:
                unpinned = not_pinned(env.children)
                if unpinned:
                    doc["machine"]["pinned"] = False
                    env.notes.append(
                        "WARNING: pinning did not take for " + ", ".join(unpinned) + ": "
                        "per-core readings do not apply"
                    )
                for child in reversed(env.children):
                    child.stop()
                env.children.clear()
            doc["notes"].extend(env.notes)
    finally:
        unpin_self(before)
    doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return doc
