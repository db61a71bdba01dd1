"""The baselines' machinery: HAProxy (configuration, start, stats), wrk (run and parse), a probe.

HAProxy terminates TLS 1.3 in front of the same backend, in ``mode tcp`` — like atls-proxy, a byte
pump after the handshake, one backend connection per client connection — with ``nbthread 1``,
pinned to the proxy's core, the same P-256 certificate and key as ``atls-proxy serve``, and no
resumption: ``no-tls-tickets`` plus ``tune.ssl.cachesize 0`` (atls-proxy: ``OP_NO_TICKET`` plus
``SESS_CACHE_OFF``, ``atls_proxy/tls/context.py``). ``resumption_probe`` checks that: it offers the
session of a first connection on a second one and reports whether the server resumed it.

wrk drives every peer that speaks plain HTTP or plain TLS: one thread (the generator has one core),
``-c`` connections, ``--latency`` percentiles taken from a Lua ``done`` hook that prints one JSON
line (``ATLS-BENCH {...}``) so nothing is scraped from the human-readable output. With
``-H "Connection: close"`` the backend closes after each response and wrk opens a new connection
(a full TLS handshake, as no server here can resume) for the next request.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from atls_proxy.bench.common import (
    PROXY_CPU,
    Child,
    can_pin,
    children_cpu_seconds,
    free_port,
    pin_pid,
    pinned_argv,
    wait_port,
)

WRK_MARK = "ATLS-BENCH "
WRK_SCRIPT = """-- Written by atls-proxy bench: one JSON line with the raw figures of the run.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    "MARK", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50.0), latency:percentile(99.0), latency.mean,
    latency.max))
end
""".replace("MARK", WRK_MARK)


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    generator_cpu_s: float = 0.0


def parse_wrk(stdout: str) -> WrkResult:
    """The figures of the ``done`` hook's line; ValueError when wrk printed none."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARK):
            doc = json.loads(line[len(WRK_MARK) :])
            break
    else:
        raise ValueError(f"wrk printed no result line: {stdout.strip()[-500:]!r}")
    detail = {
        k: int(doc[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    }
    n = int(doc["requests"])

    def ms(key: str) -> float | None:
        return round(float(doc[key]) / 1000, 3) if n else None

    return WrkResult(
        requests=n,
        duration_s=int(doc["duration_us"]) / 1e6,
        bytes=int(doc["bytes"]),
        errors=sum(detail.values()),
        error_detail=detail,
        p50_ms=ms("p50_us"),
        p99_ms=ms("p99_us"),
        mean_ms=ms("mean_us"),
    )


def wrk_successes(res: WrkResult) -> int:
    """Requests answered with success: wrk counts every response in ``requests``, the
    non-2xx/3xx ones too (also in its ``status_errors``)."""
    return res.requests - res.error_detail.get("status_errors", 0)


def write_wrk_script(directory: Path) -> Path:
    path = directory / "atls-bench-done.lua"
    path.write_text(WRK_SCRIPT)
    return path


def wrk_argv(
    wrk: str, url: str, connections: int, duration: int, script: Path, close: bool
) -> list[str]:
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, int(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


async def run_wrk(
    wrk: str, url: str, connections: int, duration: int, script: Path, close: bool
) -> WrkResult:
    """Run wrk once (on this process's core); its CPU seconds come from RUSAGE_CHILDREN."""
    cpu0 = children_cpu_seconds()
    proc = await asyncio.create_subprocess_exec(
        *wrk_argv(wrk, url, connections, duration, script, close),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), duration + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    result = parse_wrk(out.decode(errors="replace"))
    result.generator_cpu_s = children_cpu_seconds() - cpu0
    return result


# --- HAProxy --------------------------------------------------------------------------------------


def haproxy_config(
    port: int, backend_port: int, crt: Path, stats_socket: Path, maxconn: int
) -> str:
    return f"""# Written by atls-proxy bench: HAProxy as a TLS 1.3 terminating baseline, loopback only.
global
    nbthread 1
    maxconn {maxconn}
    # No resumption, like atls-proxy: no tickets, no session cache.
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
    stats socket {stats_socket} mode 600 level user

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend bench
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend backend

backend backend
    server b1 127.0.0.1:{backend_port}
"""


async def start_haproxy(
    haproxy: str, workdir: Path, dev: Path, backend_port: int, maxconn: int
) -> Child:
    """HAProxy on ``PROXY_CPU`` with dev-init's certificate and key; waits until it listens."""
    crt = workdir / "haproxy.pem"
    crt.write_bytes((dev / "server.pem").read_bytes() + (dev / "server-key.pem").read_bytes())
    os.chmod(crt, 0o600)
    port = free_port()
    sock = workdir / f"haproxy-{port}.sock"
    cfg = workdir / f"haproxy-{port}.cfg"
    cfg.write_text(haproxy_config(port, backend_port, crt, sock, maxconn))
    proc = subprocess.Popen(
        pinned_argv([haproxy, "-db", "-f", str(cfg)], PROXY_CPU),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    child = Child("haproxy", proc, port, PROXY_CPU if can_pin() else None)
    try:
        pin_pid(proc.pid, PROXY_CPU)
        await wait_port(port, proc, "haproxy")
    except BaseException:
        child.stop()
        raise
    return child


def haproxy_info(stats_socket: Path) -> dict[str, str]:
    """``show info`` over the stats socket (SslRate, SslFrontendKeyRate, CumSslConns...)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(stats_socket))
        s.sendall(b"show info\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    info: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _probe_once(port: int, tls: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = tls.wrap_socket(raw, server_hostname="localhost", session=session)
    s.sendall(b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    while s.recv(65536):  # reading to the end also processes any NewSessionTicket
        pass
    return s


def resumption_probe(port: int, cafile: Path) -> bool:
    """True if the TLS server on ``port`` resumed a session a client offered (it must not)."""
    tls = ssl.create_default_context(cafile=str(cafile))
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    first = _probe_once(port, tls, None)
    session = first.session
    first.close()
    if session is None:
        return False
    second = _probe_once(port, tls, session)
    reused = second.session_reused
    second.close()
    return bool(reused)
