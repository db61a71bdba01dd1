"""CPU per connection of each side of an attested connection, per tier — and, with ``--profile``,
where the difference between two tiers goes. Not part of the test run.

Usage (from the checkout, machine otherwise idle)::

    python3 benchmarks/tier_cost.py                           # cached and off, 3 rounds
    python3 benchmarks/tier_cost.py --tier cached --tier off --connections 3000 --rounds 5
    python3 benchmarks/tier_cost.py --profile server --top 40 # cProfile of serve, cached - off
    python3 benchmarks/tier_cost.py --profile client --top 40 # cProfile of the client side
    python3 benchmarks/tier_cost.py --profile timed           # C calls in serve, in place
    python3 benchmarks/tier_cost.py --exchange                # the cached exchange, no sockets

What it runs is what ``atls-proxy bench attest`` runs, at a low and fixed concurrency instead of
a saturating closed loop: the real ``atls-proxy serve`` (the bench's configuration for the tier:
SIMULATED software attester; ``off`` is the same proxy serving plain TLS clients unattested)
pinned to CPU 0, and in this process, pinned to CPU 1, the project's client (``open_attested``,
or for ``off`` the same TLS stack without the Expat exchange) and the bench's backend. Each
connection: TCP connect, TLS 1.3 handshake, the exchange and appraisal, ``GET /small`` with
``Connection: close``, close. After 50 warm-up connections it opens ``--connections``
connections, ``--concurrency`` at a time, and reports the server's CPU (``/proc``, user + system)
and this process's CPU (``process_time``: the client *and* the backend) per connection. Tiers run
one after the other in each round; ratios are taken within a round.

``--profile server`` runs ``serve`` under ``cProfile`` (``--profile client`` profiles this
process's measured part; both timed by CPU clocks, not the wall clock) and prints, per connection, the functions whose own time ("tottime")
grows most from the last ``--tier`` to the first (by default ``off`` → ``cached``), with the
extra calls. The profiler inflates Python function time far more than time spent in C (OpenSSL,
the kernel), so read its figures as a map of where the difference is, and the unprofiled runs for
how large it is.

``--profile timed`` runs ``serve`` without the profiler but with thread-CPU clocks around a
few functions (``TIMED``): the signatures, the exporters, the TLS engine's I/O steps and the
socket write — the work in C (OpenSSL, the kernel) that the tier's extra cannot do without — and
the Expat session's two entry points (inclusive). It prints them per connection for both tiers
and sets the C part of the difference against the 0.25 × the second tier's cost that ``cached``
≥ 0.8× ``off`` allows: in place, with the caches other connections leave behind, these cost more
than ``--exchange``'s tight loop says.

``--exchange`` measures the cached tier's exchange alone, with no sockets and no event loop
between the steps: one in-memory TLS 1.3 connection (the real server identity and contexts of
``dev-init``), then per connection the server's part (a fresh ``AttesterSession`` receiving the
client's request, ``EvidenceEngine.evidence_for``, the authenticator) and the client's part
(``RelyingPartySession`` start, validation, ``appraise_cmw`` with the warm appraisal cache). In the
same run it times the ECDSA P-256 signature and verification through ``cryptography`` that the
exchange cannot do without (two signatures on the server, one verification on the client), and
reports each side's cost against them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from atls_proxy.app import build_client_settings
from atls_proxy.bench.attest import TIERS, _server_config, bench_server
from atls_proxy.bench.common import (
    can_pin,
    cpu_seconds,
)
from atls_proxy.bench.loadgen import attested_opener, plain_opener, request_bytes, request_close
from atls_proxy.ops.config import load_client_config
from atls_proxy.ops.devinit import dev_init

WARMUP_CONNECTIONS = 50
# ``python -c`` program: run ``atls-proxy ARGS...`` under cProfile timed by this thread's CPU
# clock, and dump the stats to argv[1].
_PROFILED_SERVE = """
import cProfile, sys, time
from atls_proxy.cli import main
out, sys.argv = sys.argv[1], ["atls-proxy", *sys.argv[2:]]
prof = cProfile.Profile(time.thread_time)
try:
    prof.runcall(main)
except SystemExit:
    pass
finally:
    prof.dump_stats(out)
"""
# ``python -c`` program for ``--profile timed``: serve with thread-CPU accumulators around the
# functions TIMED names (module, qualified name); writes {name: [ns, calls]} as JSON to argv[1]
# at exit.
_TIMED_SERVE = """
import atexit, importlib, json, sys, time
acc = {}
def timed(modname, qual):
    mod = importlib.import_module(modname)
    owner, _, attr = qual.rpartition(".")
    obj = getattr(mod, owner) if owner else mod
    orig, rec = getattr(obj, attr), acc.setdefault(qual, [0, 0])
    clock = time.thread_time_ns
    def wrapper(*a, **k):
        t = clock()
        try:
            return orig(*a, **k)
        finally:
            rec[0] += clock() - t
            rec[1] += 1
    setattr(obj, attr, wrapper)  # callers reach these through the module or the class
for modname, qual in json.loads(sys.argv[2]):
    timed(modname, qual)
out, sys.argv = sys.argv[1], ["atls-proxy", *sys.argv[3:]]
atexit.register(lambda: open(out, "w").write(json.dumps(acc)))
from atls_proxy.cli import main
main()
"""
# (module, qualified name, group). "c": a call into OpenSSL or the kernel behind a thin wrapper;
# "session": the Expat session's entry points, inclusive of the "c" calls they make.
TIMED = (
    ("atls_proxy.expat.schemes", "sign", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.export", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.handshake", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.read", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.write", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.feed", "c"),
    ("atls_proxy.tls.engine", "TLSEngine.outgoing", "c"),
    ("atls_proxy.proxy.conn", "Conn.write", "c"),
    ("atls_proxy.expat.session", "AttesterSession.receive", "session"),
    ("atls_proxy.expat.session", "AttesterSession.authenticator", "session"),
)
MAX_CONNECTIONS = 100_000
MAX_SECONDS_PER_RUN = 300.0
# One connection (handshake, exchange, request) may take this long before the run fails.
CONNECTION_TIMEOUT = 30.0


async def one_run(
    tier: str, connections: int, concurrency: int, profile: str | None, prof_path: Path | None
) -> tuple[float, float, int]:
    """Server and client CPU milliseconds per connection for one run of ``tier``, and the number
    of connections measured."""

    def profiled(argv: list[str]) -> list[str]:
        # serve under cProfile with a CPU clock (the default wall clock would count the event
        # loop's waits for I/O as its own time); the stats are written at exit, and serve exits
        # cleanly on SIGTERM.
        return [argv[0], "-c", _PROFILED_SERVE, str(prof_path), *argv[3:]]

    def timed(argv: list[str]) -> list[str]:
        names = json.dumps([[m, q] for m, q, _ in TIMED])
        return [argv[0], "-c", _TIMED_SERVE, str(prof_path), names, *argv[3:]]

    wrap = None
    if prof_path is not None and profile in ("server", "timed"):
        wrap = profiled if profile == "server" else timed
    async with bench_server(tier, 40, concurrency, wrap_argv=wrap) as (proc, settings, pinned):
        if not pinned:
            print(f"{tier}: NOT pinned (server and client share the CPUs)", file=sys.stderr)
        opener = plain_opener(settings) if tier == "off" else attested_opener(settings)
        request = request_bytes("/small", close=True)

        async def one() -> None:
            async with asyncio.timeout(CONNECTION_TIMEOUT):  # every connection is bounded
                await request_close(opener, request)

        for _ in range(WARMUP_CONNECTIONS):
            await one()
        started = 0
        deadline = time.monotonic() + MAX_SECONDS_PER_RUN

        async def client() -> None:
            nonlocal started
            while started < connections and time.monotonic() < deadline:
                started += 1
                await one()

        prof = cProfile.Profile(time.thread_time) if profile == "client" else None
        s0, c0 = cpu_seconds(proc.pid), time.process_time()
        if prof is not None:
            prof.enable()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        if prof is not None:
            prof.disable()
        s1, c1 = cpu_seconds(proc.pid), time.process_time()
        if prof is not None and prof_path is not None:
            prof.dump_stats(str(prof_path))
        return 1000 * (s1 - s0) / started, 1000 * (c1 - c0) / started, started


def exchange_cost(connections: int) -> None:
    """``--exchange`` (module docstring): µs per connection of each side's sans-I/O part."""
    import os
    import timeit

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from atls_proxy.app import build_server
    from atls_proxy.expat import session as xs
    from atls_proxy.ops.config import load_server_config
    from atls_proxy.proxy.client import appraise
    from atls_proxy.tls.engine import TLSEngine

    async def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="atls-cost-") as tmp:
            dev = Path(tmp)
            dev_init(dev)
            srv = build_server(load_server_config(_server_config(dev, "cached", 0, 64)))
            keys, profile, engine = srv.keys, srv.profile, srv.engine
            await engine.start(keys.identity.private_key)
            s = build_client_settings(load_client_config(dev / "connect.toml", server="h:1"))
            server = TLSEngine(keys.ssl_context, server_side=True)
            client = TLSEngine(s.ssl_context, server_side=False, server_name=s.server_name)
            while not (client.handshake() and server.handshake_complete):
                server.feed(client.outgoing())
                server.handshake()
                client.feed(server.outgoing())
            server.feed(client.outgoing())
            leaf = client.peer_certificate_der()
            assert leaf is not None
            stls = xs.TLSInfo(server.export, server.hash_name)
            ctls = xs.TLSInfo(client.export, client.hash_name)

            async def serve(request: bytes) -> bytes:
                at = xs.AttesterSession(
                    stls, keys.chain_der, keys.identity.private_key, profile, keys.spki
                )
                (ev,) = at.receive(request)
                assert isinstance(ev, xs.AttestationRequested) and ev.binding is not None
                cmw = await engine.evidence_for(ev.binding, keys.identity.private_key)
                return at.authenticator(cmw)

            def start() -> tuple[xs.RelyingPartySession, bytes]:
                rp = xs.RelyingPartySession(ctls, s.profile, os.urandom(32), leaf)
                return rp, rp.start()

            def finish(rp: xs.RelyingPartySession, auth: bytes) -> None:
                (val,) = rp.receive(auth)
                assert isinstance(val, xs.AuthenticatorValidated)
                (a,) = appraise(val, s)  # the client's own call
                assert a.passed, a.first_failure
                rp.accept()

            for _ in range(50):  # warm-up: caches, the epoch's appraisal
                rp, req = start()
                finish(rp, await serve(req))
            t0 = time.perf_counter()
            pairs = [start() for _ in range(connections)]
            t1 = time.perf_counter()
            auths = [await serve(req) for _, req in pairs]
            t2 = time.perf_counter()
            for (rp, _), auth in zip(pairs, auths, strict=True):
                finish(rp, auth)
            t3 = time.perf_counter()
            await engine.close()
            us = 1e6 / connections
            return (t2 - t1) * us, (t1 - t0 + t3 - t2) * us

    server_us, client_us = asyncio.run(run())
    key = ec.generate_private_key(ec.SECP256R1())
    data = os.urandom(200)
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    pub = key.public_key()
    n = max(1000, connections)
    sign_us = 1e6 * timeit.timeit(lambda: key.sign(data, ec.ECDSA(hashes.SHA256())), number=n) / n
    verify_us = (
        1e6 * timeit.timeit(lambda: pub.verify(sig, data, ec.ECDSA(hashes.SHA256())), number=n) / n
    )
    print(f"cached exchange without sockets, {connections} connections, µs per connection:")
    print(
        f"  server {server_us:.1f} (two ECDSA P-256 signatures: {2 * sign_us:.1f}, "
        f"{2 * sign_us / server_us:.0%})"
    )
    print(
        f"  client {client_us:.1f} (one ECDSA P-256 verification: {verify_us:.1f}, "
        f"{verify_us / client_us:.0%})"
    )


def own_time(path: Path) -> dict[tuple[str, int, str], tuple[int, float]]:
    """(file tail, line, function) -> (calls, own seconds) from a cProfile dump."""
    out: dict[tuple[str, int, str], tuple[int, float]] = {}
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in stats.items():
        key = ("/".join(Path(filename).parts[-2:]), line, name)
        n, t = out.get(key, (0, 0.0))
        out[key] = (n + calls, t + tottime)
    return out


def print_difference(
    a_name: str, a: Path, a_connections: int, b_name: str, b: Path, b_connections: int, top: int
) -> None:
    """Per connection, each profile divided by its own number of connections (a run stopped by
    its deadline has fewer)."""
    fa, fb = own_time(a), own_time(b)
    rows = []
    for key in fa.keys() | fb.keys():
        na, ta = fa.get(key, (0, 0.0))
        nb, tb = fb.get(key, (0, 0.0))
        rows.append(
            (
                (ta / a_connections - tb / b_connections) * 1e6,
                na / a_connections - nb / b_connections,
                key,
            )
        )
    rows.sort(reverse=True)
    extra_us = sum(r[0] for r in rows)
    extra_calls = sum(r[1] for r in rows)
    print(
        f"\nunder the profiler, {a_name} - {b_name} per connection: "
        f"{extra_calls:+.0f} calls, {extra_us:+.0f} µs of own time; largest differences:"
    )
    print(f"{'µs/conn':>9} {'calls/conn':>10}  function")
    for us, calls, (where, line, name) in rows[:top]:
        print(f"{us:9.1f} {calls:10.2f}  {where}:{line} {name}")


def print_timed(
    a_name: str,
    a: Path,
    a_connections: int,
    b_name: str,
    b: Path,
    b_connections: int,
    b_server_ms: float,
) -> None:
    """``--profile timed``: µs of thread CPU per connection in each TIMED function, both tiers."""
    fa, fb = json.loads(a.read_text()), json.loads(b.read_text())
    print(f"\nthread CPU per connection in serve, µs (calls per connection), {a_name} vs {b_name}:")
    c_extra = 0.0
    for _mod, qual, group in TIMED:
        (ta, na), (tb, nb) = fa.get(qual, (0, 0)), fb.get(qual, (0, 0))
        ua, ub = ta / a_connections / 1e3, tb / b_connections / 1e3
        if group == "c":
            c_extra += ua - ub
        print(
            f"  {qual:32} {ua:7.1f} ({na / a_connections:.2f})  {ub:7.1f} "
            f"({nb / b_connections:.2f})  {ua - ub:+7.1f}" + ("" if group == "c" else "  inclusive")
        )
    allowed = 0.25 * b_server_ms * 1e3
    print(
        f"  C calls ({a_name} - {b_name}): {c_extra:+.1f} µs per connection; {a_name} ≥ 0.8× "
        f"{b_name} allows {allowed:.0f} µs extra in all ({b_name}: {b_server_ms:.3f} ms/conn, "
        "timed run)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tier", action="append", choices=TIERS, help="default: cached, off")
    ap.add_argument("--connections", type=int, default=2000, help="per run (default 2000)")
    ap.add_argument("--concurrency", type=int, default=4, help="default 4")
    ap.add_argument("--rounds", type=int, default=3, help="default 3 (1 with --profile)")
    ap.add_argument("--profile", choices=("server", "client", "timed"))
    ap.add_argument("--top", type=int, default=40, help="rows of the profile difference")
    ap.add_argument("--exchange", action="store_true", help="the cached exchange, no sockets")
    args = ap.parse_args()
    tiers = args.tier or ["cached", "off"]
    if len(set(tiers)) != len(tiers):
        ap.error("each --tier at most once")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        ap.error(f"--connections must be 1..{MAX_CONNECTIONS}")
    if not 1 <= args.concurrency <= 256:
        ap.error("--concurrency must be 1..256")
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds must be 1..20")
    if args.profile and len(tiers) != 2:
        ap.error("--profile compares two tiers: give exactly two --tier (or none)")
    rounds = 1 if args.profile else args.rounds
    if args.exchange:
        exchange_cost(args.connections)
        return 0
    if not can_pin():
        print("note: cannot pin to CPUs 0 and 1 here; figures are unpinned", file=sys.stderr)
    import uvloop

    uvloop.install()
    figures: dict[str, list[tuple[float, float]]] = {t: [] for t in tiers}
    measured: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="atls-cost-prof-") as pdir:
        paths = {t: Path(pdir) / f"{t}.prof" for t in tiers}
        for r in range(rounds):
            for t in tiers:
                server_ms, client_ms, measured[t] = asyncio.run(
                    one_run(t, args.connections, args.concurrency, args.profile, paths[t])
                )
                figures[t].append((server_ms, client_ms))
                print(
                    f"round {r + 1} {t:8} server {server_ms:.3f} ms/conn, "
                    f"client+backend {client_ms:.3f} ms/conn",
                    flush=True,
                )
        under = " (under the profiler)" if args.profile in ("server", "client") else ""
        print("\nmedian ms of CPU per connection" + under)
        for t in tiers:
            s = statistics.median(f[0] for f in figures[t])
            c = statistics.median(f[1] for f in figures[t])
            print(f"  {t:8} server {s:.3f}   client+backend {c:.3f}")
        if len(tiers) == 2 and not args.profile:
            a, b = tiers
            ratios_s = [fb[0] / fa[0] for fa, fb in zip(figures[a], figures[b], strict=True)]
            ratios_c = [fb[1] / fa[1] for fa, fb in zip(figures[a], figures[b], strict=True)]
            print(
                f"  CPU per connection, {b} ÷ {a} (= {a}'s rate ÷ {b}'s on a saturated core), "
                "per round: server "
                + ", ".join(f"{x:.2f}" for x in ratios_s)
                + "; client+backend "
                + ", ".join(f"{x:.2f}" for x in ratios_c)
            )
        if args.profile == "timed":
            a, b = tiers
            print_timed(
                a,
                paths[a],
                measured[a] + WARMUP_CONNECTIONS,
                b,
                paths[b],
                measured[b] + WARMUP_CONNECTIONS,
                statistics.median(f[0] for f in figures[b]),
            )
        elif args.profile:
            a, b = tiers
            # The server's profile covers the whole process: the warm-up connections too.
            warm = WARMUP_CONNECTIONS if args.profile == "server" else 0
            print_difference(
                a, paths[a], measured[a] + warm, b, paths[b], measured[b] + warm, args.top
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
