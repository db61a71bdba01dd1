"""Command line: ``atls-proxy serve | connect | attest | demo | check-config | dev-init | bench``.

Exit codes: 0 success (for ``attest``: every check passed; for ``serve``/``connect``: a clean stop,
every connection finished); 1 attestation or runtime failure; 2 bad configuration or usage;
3 ``serve``/``connect`` drain timeout (connections still open were closed); 4 forced exit by a
second stop signal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from atls_proxy import __version__
from atls_proxy.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("atls_proxy")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop when it is installed (Linux), else on the stdlib loop."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _status(counters: dict[str, int]) -> str:
    from atls_proxy.ops.procstat import open_fds, rss_kib

    fields = " ".join(f"{k}={v}" for k, v in counters.items())
    return f"{fields} tasks={len(asyncio.all_tasks())} fds={open_fds()} rss_kib={rss_kib()}"


def _service_main(args: argparse.Namespace, role: str) -> int:
    """``serve`` and ``connect``: one process, or a supervisor of ``--workers`` processes."""
    from atls_proxy.ops.early_signals import remember_early_hup, remember_early_usr1

    # First, before the imports and the configuration below and building the service (a TPM to
    # open): until the runtime (or the workers' supervisor) installs its handlers, SIGHUP and
    # SIGUSR1 are remembered — their default action would end the process.
    early_hup = remember_early_hup()
    early_usr1 = remember_early_usr1()
    import os

    from atls_proxy.ops import systemd
    from atls_proxy.ops.config import flag_overrides, load_config
    from atls_proxy.ops.logs import setup_logging
    from atls_proxy.ops.metrics import Metrics
    from atls_proxy.ops.runtime import ClientService, Runtime, ServerService

    overrides = flag_overrides(args, role)
    cfg: Any = load_config(role, args.config, overrides)
    setup_logging(args.log_level or cfg.log.level, args.log_format or cfg.log.format)
    worker = bool(os.environ.get("ATLS_PROXY_WORKER"))
    if args.workers > 1 and not worker:
        from atls_proxy.ops.workers import supervise

        return supervise(args, role, cfg)
    if worker:
        from atls_proxy.ops.workers import worker_fds

        inherited = worker_fds()  # the supervisor's listening sockets, if it was socket-activated
    else:
        inherited = systemd.listen_fds()
    tier = cfg.attester.tier if role == "server" else None
    kind = cfg.attester.kind if role == "server" else None
    metrics = Metrics(attester=kind, tier=tier)
    service: Any = (
        ServerService(cfg, overrides, metrics)
        if role == "server"
        else ClientService(cfg, overrides, metrics)
    )

    async def main() -> int:
        rt = Runtime(
            service,
            cfg.ops,
            metrics,
            config_path=Path(args.config),
            inherited=inherited,
            worker=worker,
            status_line=lambda: _status(service.listener.counters()),
            early_hup=early_hup,
            early_usr1=early_usr1,
        )
        return await rt.run()

    return run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    return _service_main(args, "server")


def cmd_connect(args: argparse.Namespace) -> int:
    return _service_main(args, "client")


def cmd_attest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from atls_proxy.app import build_client_settings
    from atls_proxy.ops.config import load_client_config, parse_server_name
    from atls_proxy.ops.logs import setup_logging
    from atls_proxy.proxy.client import AttestationFailed, open_attested
    from atls_proxy.report import render_text

    cfg = load_client_config(args.config, server=args.target)
    setup_logging(args.log_level or "warning")
    settings = build_client_settings(cfg)
    if args.server_name is not None:
        settings = replace(
            settings, server_name=parse_server_name(args.server_name, "--server-name")
        )

    async def main() -> tuple[int, Any]:
        try:
            conn = await open_attested(settings, keep_open=False)
            return 0, conn.report
        except AttestationFailed as exc:
            return 1, exc.report

    code, report = run(main)
    if args.json:
        print(json.dumps(report.to_json(__version__), indent=2))
    else:
        print(render_text(report))
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    from atls_proxy.app import build_client_settings, build_server
    from atls_proxy.ops.config import detect_config_kind, load_client_config, load_server_config

    kind = detect_config_kind(args.file)
    if kind == "server":
        cfg = load_server_config(args.file)
        build_server(cfg)  # parses certificate, key and attester material
    elif kind == "client":
        build_client_settings(load_client_config(args.file))
    else:
        # What connect does with it: the policy, its hardware sections' trust material, and the
        # warnings about what it accepts.
        from atls_proxy.app import policy_verifiers

        policy_verifiers(Path(args.file))
    print(f"{args.file}: OK ({kind} configuration)")
    return 0


def cmd_dev_init(args: argparse.Namespace) -> int:
    from atls_proxy.ops.devinit import dev_init

    written = dev_init(args.dir, force=args.force, server_names=args.server_name or ())
    for p in written:
        print(p)
    d = Path(args.dir)
    print(
        f"\nDevelopment material written (the platform key is SIMULATED). Try:\n"
        f"  atls-proxy serve --config {d / 'serve.toml'}\n"
        f"  atls-proxy connect --config {d / 'connect.toml'}\n"
        f"  atls-proxy attest 127.0.0.1:8443 --config {d / 'connect.toml'}",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from atls_proxy.demo import run_demo

    return run(lambda: run_demo(keep_running=args.keep_running))


def cmd_verify_evidence(args: argparse.Namespace) -> int:
    import datetime

    from atls_proxy.ops import evidence as ev
    from atls_proxy.ops.policyfile import load_policy
    from atls_proxy.report import render_text
    from atls_proxy.verify.policy import DEFAULT_POLICY_ID
    from atls_proxy.verify.result import AttestationReport

    fmt = args.format
    policy_id = DEFAULT_POLICY_ID
    if args.policy:
        policy = load_policy(args.policy)
        policy_id = policy.policy_id
        if fmt not in policy.hardware:
            raise ConfigError("--policy", f"{args.policy} has no [{fmt}] section")
        fmt_policy = policy.hardware[fmt]
    else:
        fmt_policy = ev.default_policy(fmt)
    if args.at:
        try:
            at = datetime.datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError("--at", f"not an RFC 3339 time: {args.at!r}") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=datetime.UTC)
    else:
        at = ev.now_utc()
    report_data = None
    if args.report_data:
        try:
            report_data = bytes.fromhex(args.report_data)
        except ValueError:
            raise ConfigError("--report-data", "expected hex") from None
    trust = ev.load_trust(fmt, args.collateral, args.certs)
    data = ev.read_evidence(args.path)
    appraisal = ev.appraise_file(
        fmt,
        data,
        policy=fmt_policy,
        trust=trust,
        now=at,
        expected_report_data=report_data,
        policy_id=policy_id,
    )
    report = AttestationReport(
        target=str(args.path), appraisals=[appraisal], issued_at=at.timestamp()
    )
    if args.json:
        print(json.dumps(report.to_json(__version__), indent=2))
    else:
        print(render_text(report))
    return 0 if report.passed else 1


def cmd_tpm_ak(args: argparse.Namespace) -> int:
    """Load or create the TPM attestation key as ``serve`` would; write its public key (PEM)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from atls_proxy.attest.tpm import read_ak
    from atls_proxy.errors import AttestationUnavailable

    try:
        ak = read_ak(
            args.tcti,
            ak_handle=args.handle,
            create_ak=args.create,
            hierarchy=args.hierarchy,
            ak_algorithm=args.algorithm,
        )
    except ValueError as exc:
        raise ConfigError("tpm-ak", str(exc)) from None
    except AttestationUnavailable as exc:
        print(f"atls-proxy: tpm-ak: {exc}", file=sys.stderr)
        return 1
    pem = ak.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        Path(args.out).write_bytes(pem)
    except OSError as exc:
        raise ConfigError("--out", f"cannot write {args.out}: {exc.strerror or exc}") from None
    where = f"persistent handle 0x{ak.handle:08x}" if ak.handle else f"{args.hierarchy} primary"
    action = "created" if ak.created and ak.handle else "read"
    print(f"{args.out}: {ak.algorithm} AK ({where}, {action}) sha256(SPKI) {ak.fingerprint}")
    return 0


def _suite_only_flags() -> list[tuple[str, str]]:
    """``(flag, dest)`` of the bare `bench` suite's flags (``_bench_suite_flags``, read off a
    parser built with it, so a new suite flag is covered), but --json, which `bench attest`
    shares (either side of `attest`)."""
    parser = argparse.ArgumentParser(add_help=False)
    _bench_suite_flags(parser, on_subcommand=False)
    return [(a.option_strings[0], a.dest) for a in parser._actions if a.dest != "json"]


def _given(args: argparse.Namespace, dest: str) -> bool:
    """Whether a bare-`bench` flag was given: not its default (None, or False for a switch);
    0 and "" are values given (``is``, since 0 == False)."""
    value = getattr(args, dest, None)
    return value is not None and value is not False


def cmd_bench(args: argparse.Namespace) -> int:
    """``bench attest``: exit 0 with a valid measurement, 1 when a run completed no connection,
    had errors (in its window or its warm-up) or was not pinned where it could be (printed all
    the same, the reasons on stderr), 2 for a flag out of range."""
    from atls_proxy.bench import print_results, run_attest_bench
    from atls_proxy.bench.attest import invalid_runs, option_errors, print_rounds

    early = [flag for flag, dest in _suite_only_flags() if _given(args, dest)]
    if early:
        # `bench --duration 2 attest` set the suite's --duration, which attest does not read.
        raise ConfigError(
            early[0],
            "given before 'attest', it is a flag of the bench suite: give attest's flags after "
            "'attest' (atls-proxy bench attest --help)",
        )
    tiers: list[str] = args.attest_tier or ["strict"]
    quote_ms, concurrency = args.attest_simulated_quote_ms, args.attest_concurrency
    duration, n_rounds = args.attest_duration, args.attest_rounds
    problems = option_errors(
        tiers=tiers,
        quote_ms=quote_ms,
        concurrency=concurrency,
        duration=duration,
        rounds=n_rounds,
    )
    if problems:
        raise ConfigError(*problems[0])

    async def all_tiers() -> list[Any]:
        return [await run_attest_bench(t, quote_ms, concurrency, duration) for t in tiers]

    rounds = [run(all_tiers) for _ in range(n_rounds)]
    if n_rounds == 1:
        print_results(rounds[0], args.json)
    else:
        print_rounds(rounds, args.json)
    invalid = invalid_runs(rounds)
    for why in invalid:
        print(f"atls-proxy: bench attest: not a valid measurement: {why}", file=sys.stderr)
    return 1 if invalid else 0


def cmd_bench_suite(args: argparse.Namespace) -> int:
    """``atls-proxy bench [all|handshake|small|bulk|idle] [--quick]``: the suite with baselines."""
    from atls_proxy.bench.report import render_markdown, write_png
    from atls_proxy.bench.workloads import (
        WORKLOADS,
        SuiteOptions,
        quick_options,
        run_suite,
        runs_with_errors,
    )

    workload = args.workload or "all"
    given: dict[str, Any] = {
        "workloads": WORKLOADS if workload == "all" else (workload,),
        "haproxy": not args.no_haproxy,
    }
    for flag, key in (
        ("duration", "duration"),
        ("warmup", "warmup"),
        ("repeat", "repeat"),
        ("connections", "connections"),
        ("idle_connections", "idle_connections"),
        ("simulated_quote_ms", "simulated_quote_ms"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            given[key] = value
    if args.tier:
        given["tiers"] = tuple(dict.fromkeys(args.tier))
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from atls_proxy.bench.report import MATPLOTLIB_MISSING

            raise ConfigError("--png", MATPLOTLIB_MISSING) from None
    try:
        opts = quick_options(**given) if args.quick else SuiteOptions(**given)
    except ValueError as exc:
        raise ConfigError("bench", str(exc)) from None

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    doc = run(lambda: run_suite(opts, log=progress))
    if args.png:
        write_png(doc, args.png)
        progress(f"chart written to {args.png}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_markdown(doc))
    errors = runs_with_errors(doc)
    if errors:
        # As for `bench attest`: the figures are printed, but they are not a valid measurement.
        print("atls-proxy: bench: not a valid measurement: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


def _bench_suite_flags(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    """The suite's flags, on ``bench`` itself and on each workload subcommand.

    On subcommands the defaults are SUPPRESS, so ``bench --quick small`` and ``bench small
    --quick`` both work (a subparser's defaults would otherwise overwrite the parent's values).
    """
    none: Any = argparse.SUPPRESS if on_subcommand else None
    off: Any = argparse.SUPPRESS if on_subcommand else False
    parser.add_argument(
        "--quick",
        action="store_true",
        default=off,
        help="short runs (2 s, 200 idle connections): under 3 minutes on 2 cores",
    )
    parser.add_argument(
        "--duration", type=int, default=none, help="seconds per measured run (default 10; quick 2)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=none,
        help="seconds of unmeasured load before asyncio-generator runs (default 2; quick 0.5)",
    )
    parser.add_argument(
        "--repeat", type=int, default=none, help="runs per peer, interleaved (default 3)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=none,
        help="concurrent connections of every generator (default 64)",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=none,
        help="connections held by the idle workload (default 2000; quick 200)",
    )
    parser.add_argument(
        "--tier",
        action="append",
        choices=["strict", "batched", "cached"],
        default=none,
        help="attest workload tiers, first = the subject (repeatable; default cached, batched)",
    )
    parser.add_argument(
        "--simulated-quote-ms",
        type=int,
        default=none,
        help="simulated serialised quote latency of the attested peers (default 40)",
    )
    parser.add_argument(
        "--no-haproxy",
        action="store_true",
        default=off,
        help="leave out the HAProxy baseline even when haproxy is installed",
    )
    parser.add_argument(
        "--json", action="store_true", default=off, help="print the JSON document instead"
    )
    parser.add_argument(
        "--png", default=none, metavar="PATH", help="also write a chart (needs matplotlib)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atls-proxy", description="Attested TLS 1.3 proxy (IETF SEAT Expat over RFC 9261)."
    )
    p.add_argument("--version", action="version", version=f"atls-proxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="attested TLS server in front of a backend")
    s.add_argument("--config", required=True, help="serve.toml")
    s.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    s.add_argument(
        "--backend", help="HOST:PORT or unix:/path of the backend (overrides server.backend)"
    )
    _ops_flags(s)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("connect", help="local forwarder to an attested server")
    c.add_argument("--config", required=True, help="connect.toml")
    c.add_argument("--listen", help="local HOST:PORT (overrides client.listen)")
    c.add_argument("--server", help="attested server HOST:PORT (overrides client.server)")
    _ops_flags(c)
    c.set_defaults(func=cmd_connect)

    a = sub.add_parser("attest", help="one-shot appraisal of HOST:PORT; prints the report")
    a.add_argument("target", metavar="HOST:PORT")
    a.add_argument("--config", required=True, help="connect.toml (CA, policy, timeouts)")
    a.add_argument(
        "--server-name", help="name to check in the certificate (default: client.server_name)"
    )
    a.add_argument("--json", action="store_true", help="print the EAR-shaped JSON result")
    a.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    a.set_defaults(func=cmd_attest)

    d = sub.add_parser("demo", help="zero-configuration demo on loopback")
    d.add_argument(
        "--keep-running", action="store_true", help="keep the demo's processes running until Ctrl-C"
    )
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser(
        "bench",
        help="load benchmarks on loopback (bare: every workload with same-run baselines)",
        description="Without a workload, or with 'all': every workload of the suite (attest, "
        "handshake, small, bulk, idle) against the proxy and its baselines (backend direct, "
        "attestation off, HAProxy). 'attest' alone is the per-tier attested connection rate.",
    )
    _bench_suite_flags(b, on_subcommand=False)
    b.set_defaults(func=cmd_bench_suite, workload=None)
    bsub = b.add_subparsers(dest="workload", required=False)
    ba = bsub.add_parser(
        "attest",
        help="attested connections per second and latency per freshness tier",
        description="Attested connections per second, p50/p99 latency (nearest-rank) and server "
        "CPU per --tier, against a local `atls-proxy serve` with the software attester. Exit "
        "status: 0 a valid measurement; 1 a run completed no connection, had errors (in its "
        "window or its warm-up) or was not pinned where two CPUs could be split (the figures "
        "are printed all the same, the reasons on stderr); 2 a flag out of range.",
    )
    # Their own dests: the suite's flags of the same names on bare `bench` keep their values, so
    # one given before `attest` is told apart (cmd_bench refuses it) instead of overwritten.
    ba.add_argument(
        "--tier",
        dest="attest_tier",
        action="append",
        choices=["strict", "batched", "cached", "off"],
        help="freshness tier (repeatable, each at most once; 'off' = attestation switched off); "
        "default strict",
    )
    ba.add_argument(
        "--simulated-quote-ms",
        dest="attest_simulated_quote_ms",
        type=int,
        default=40,
        help="simulated serialised quote latency, 0..60000 (default 40)",
    )
    ba.add_argument(
        "--concurrency",
        dest="attest_concurrency",
        type=int,
        default=64,
        help="concurrent clients, 1..1024 (default 64)",
    )
    ba.add_argument(
        "--rounds",
        dest="attest_rounds",
        type=int,
        default=1,
        help="run every --tier once per round, the tiers one after the other, and report each "
        "round's batched/strict and cached/off ratios and whether strict stayed at or below the "
        "TEE's rate, whether each round met its target, their median and range (1..50; "
        "default 1)",
    )
    ba.add_argument(
        "--duration",
        dest="attest_duration",
        type=float,
        default=5.0,
        help="seconds of measured load per run, 0 < S <= 600 (default 5)",
    )
    ba.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    ba.set_defaults(func=cmd_bench)
    for name, text in (
        ("all", "every workload with same-run baselines (same as bare 'bench')"),
        ("handshake", "new plain TLS connection per request: proxy (attestation off), HAProxy"),
        ("small", "keep-alive small responses, attested vs baselines"),
        ("bulk", "keep-alive 1 MiB responses, attested vs baselines"),
        ("idle", "RSS per idle connection, attested vs baselines"),
    ):
        w = bsub.add_parser(name, help=text)
        _bench_suite_flags(w, on_subcommand=True)
        w.set_defaults(func=cmd_bench_suite)

    v = sub.add_parser("verify-evidence", help="offline appraisal of a saved evidence file")
    v.add_argument("path", type=Path, metavar="PATH")
    v.add_argument("--format", required=True, choices=["tdx", "snp", "cca", "tpm"])
    v.add_argument(
        "--collateral", type=Path, help="collateral folder (TDX: TCB Info, QE Identity, CRLs)"
    )
    v.add_argument(
        "--certs", type=Path, help="certificates / trusted keys folder (VCEK + AMD chain, CPAK, AK)"
    )
    v.add_argument(
        "--policy",
        help="policy TOML with a section for this format (default: the format's defaults)",
    )
    v.add_argument("--at", help="appraise at this RFC 3339 time (default: now)")
    v.add_argument(
        "--report-data", help="expected report data / qualifying data, hex (default: not checked)"
    )
    v.add_argument("--json", action="store_true", help="print the EAR-shaped JSON result")
    v.set_defaults(func=cmd_verify_evidence)

    t = sub.add_parser(
        "tpm-ak",
        help="load or create the TPM attestation key and write its public key (PEM)",
        description='The AK exactly as `serve` with [attester] kind = "tpm" uses it: without '
        "--handle a primary key derived from the hierarchy seed (the same key at every start), "
        "with --handle the persistent key there (--create: made and persisted if absent). Put "
        "the PEM in the client policy's [trust.tpm] certs folder.",
    )
    t.add_argument("--tcti", required=True, help="TCTI, e.g. device:/dev/tpmrm0 or swtpm:port=2321")
    t.add_argument(
        "--handle", type=_tpm_handle, help="persistent AK handle, e.g. 0x81010002 (owner range)"
    )
    t.add_argument(
        "--create", action="store_true", help="with --handle: create and persist the AK if absent"
    )
    t.add_argument(
        "--hierarchy",
        choices=["endorsement", "owner"],
        default="endorsement",
        help="hierarchy of a created AK (default endorsement)",
    )
    t.add_argument(
        "--algorithm",
        choices=["ecc-p256", "rsa-2048"],
        default="ecc-p256",
        help="AK algorithm (default ecc-p256: ECDSA/SHA-256)",
    )
    t.add_argument("--out", required=True, help="where to write the AK public key (PEM)")
    t.set_defaults(func=cmd_tpm_ak)

    k = sub.add_parser("check-config", help="validate a serve.toml, connect.toml or policy file")
    k.add_argument("file")
    k.set_defaults(func=cmd_check_config)

    i = sub.add_parser(
        "dev-init", help="write development CA, certificates, simulated platform key and configs"
    )
    i.add_argument("dir")
    i.add_argument("--force", action="store_true", help="overwrite existing files")
    i.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address the server certificate also holds, beside localhost, "
        "127.0.0.1 and ::1 (repeatable; e.g. a cluster Service's name)",
    )
    i.set_defaults(func=cmd_dev_init)
    return p


def _tpm_handle(text: str) -> int:
    from atls_proxy.attest.tpm import parse_handle

    try:
        return parse_handle(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workers(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("between 1 and 64")
    return n


def _ops_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        help="json lines, text, or auto: text on a terminal, JSON otherwise (overrides log.format)",
    )
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin listener for /healthz /readyz /metrics /status (overrides admin.listen)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="N worker processes sharing the port (SO_REUSEPORT), supervised (default 1)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"atls-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
