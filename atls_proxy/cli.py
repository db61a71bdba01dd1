"""Command line: ``atls-proxy serve | connect | attest | demo | check-config | dev-init``.

Exit codes: 0 success (for ``attest``: every check passed); 1 attestation or runtime failure;
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
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


async def _until_signal(serve: Awaitable[None], status: Callable[[], str] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if status is not None:
        # SIGUSR1: one status line in the log (connections, tasks, descriptors, memory).
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status %s", status()))
    task = asyncio.ensure_future(serve)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
        return
    log.info("signal received; shutting down")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _status(counters: dict[str, int]) -> str:
    from atls_proxy.ops.procstat import open_fds, rss_kib

    fields = " ".join(f"{k}={v}" for k, v in counters.items())
    return f"{fields} tasks={len(asyncio.all_tasks())} fds={open_fds()} rss_kib={rss_kib()}"


def cmd_serve(args: argparse.Namespace) -> int:
    from atls_proxy.app import build_server
    from atls_proxy.ops.config import load_server_config
    from atls_proxy.ops.logs import setup_logging

    cfg = load_server_config(args.config, listen=args.listen, backend=args.backend)
    setup_logging(args.log_level or cfg.log.level)
    server = build_server(cfg)

    async def main() -> None:
        addrs = await server.start()
        for host, port in addrs:
            log.info(
                "listening on %s:%d backend=%s attester=%s",
                host,
                port,
                cfg.backend,
                cfg.attester.kind,
            )
        try:
            await _until_signal(server.serve_forever(), lambda: _status(server.counters()))
        finally:
            await server.close()

    run(main)
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from atls_proxy.app import build_client_settings
    from atls_proxy.ops.config import load_client_config
    from atls_proxy.ops.logs import setup_logging
    from atls_proxy.proxy.forwarder import ClientForwarder

    cfg = load_client_config(args.config, listen=args.listen, server=args.server)
    setup_logging(args.log_level or cfg.log.level)
    settings = build_client_settings(cfg)
    if cfg.listen.kind != "tcp":
        raise ConfigError("client.listen", "the local listener is HOST:PORT")
    fwd = ClientForwarder(settings, cfg.listen.host, cfg.listen.port, cfg.max_connections)

    async def main() -> None:
        for host, port in await fwd.start():
            log.info(
                "listening on %s:%d server=%s server_name=%s",
                host,
                port,
                cfg.server,
                cfg.server_name,
            )
        try:
            await _until_signal(fwd.serve_forever(), lambda: _status(fwd.counters()))
        finally:
            await fwd.close()

    run(main)
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from atls_proxy.app import build_client_settings
    from atls_proxy.ops.config import load_client_config
    from atls_proxy.ops.logs import setup_logging
    from atls_proxy.proxy.client import AttestationFailed, open_attested
    from atls_proxy.report import render_text

    cfg = load_client_config(args.config, server=args.target)
    setup_logging(args.log_level or "warning")
    settings = build_client_settings(cfg)
    if args.server_name:
        settings = replace(settings, server_name=args.server_name)

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
    from atls_proxy.ops.policyfile import load_policy

    kind = detect_config_kind(args.file)
    if kind == "server":
        cfg = load_server_config(args.file)
        build_server(cfg)  # parses certificate, key and attester material
    elif kind == "client":
        build_client_settings(load_client_config(args.file))
    else:
        load_policy(args.file)
    print(f"{args.file}: OK ({kind} configuration)")
    return 0


def cmd_dev_init(args: argparse.Namespace) -> int:
    from atls_proxy.ops.devinit import dev_init

    written = dev_init(args.dir, force=args.force)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from atls_proxy.bench import print_results, run_attest_bench

    tiers: list[str] = args.tier or ["strict"]

    async def all_tiers() -> list[Any]:
        return [
            await run_attest_bench(t, args.simulated_quote_ms, args.concurrency, args.duration)
            for t in tiers
        ]

    print_results(run(all_tiers), args.json)
    return 0


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
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("connect", help="local forwarder to an attested server")
    c.add_argument("--config", required=True, help="connect.toml")
    c.add_argument("--listen", help="local HOST:PORT (overrides client.listen)")
    c.add_argument("--server", help="attested server HOST:PORT (overrides client.server)")
    c.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
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

    b = sub.add_parser("bench", help="load benchmarks on loopback")
    bsub = b.add_subparsers(dest="workload", required=True)
    ba = bsub.add_parser(
        "attest", help="attested connections per second and latency per freshness tier"
    )
    ba.add_argument(
        "--tier",
        action="append",
        choices=["strict", "batched", "cached", "off"],
        help="freshness tier (repeatable; 'off' = attestation switched off); default strict",
    )
    ba.add_argument(
        "--simulated-quote-ms",
        type=int,
        default=40,
        help="simulated serialised quote latency (default 40)",
    )
    ba.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    ba.add_argument(
        "--duration", type=float, default=5.0, help="seconds of measured load (default 5)"
    )
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(func=cmd_bench)

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

    k = sub.add_parser("check-config", help="validate a serve.toml, connect.toml or policy file")
    k.add_argument("file")
    k.set_defaults(func=cmd_check_config)

    i = sub.add_parser(
        "dev-init", help="write development CA, certificates, simulated platform key and configs"
    )
    i.add_argument("dir")
    i.add_argument("--force", action="store_true", help="overwrite existing files")
    i.set_defaults(func=cmd_dev_init)
    return p


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
