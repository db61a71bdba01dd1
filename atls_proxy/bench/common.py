"""Process plumbing shared by the benchmarks: pinning, /proc figures, ports, children, versions,
and the percentile the suite's Python generators take latencies with.

Layout on a machine with two or more CPUs: the process under test (``atls-proxy serve`` or
HAProxy) runs on ``PROXY_CPU``; this process (the asyncio load generator), wrk and the benchmark
backend run on ``GENERATOR_CPU``. With one CPU nothing is pinned and the report says so.

CPU seconds and resident memory of another process come from ``/proc/<pid>/stat`` (utime + stime)
and ``/proc/<pid>/status`` (VmRSS), the same sources ``atls_proxy.ops.procstat`` reads for the
running process itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROXY_CPU = 0
GENERATOR_CPU = 1
# How the benchmarks' own generators take latency percentiles (``percentile``); the wrk-driven
# peers report wrk's.
PERCENTILE_METHOD = "nearest-rank"


def percentile(sorted_values: Sequence[float], pct: int) -> float | None:
    """Nearest-rank percentile of ascending ``sorted_values``: the sample at 1-based rank
    ceil(pct·n/100) — the smallest sample with at least ``pct`` % of them at or below it (None
    without samples). Integer arithmetic, so no float rounding moves the rank."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, -(-pct * n // 100))
    return sorted_values[rank - 1]


def _allowed_cpus() -> frozenset[int]:
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


# The CPUs this process may use, read once at import: before ``pin_self`` narrows them.
ALLOWED_CPUS = _allowed_cpus()


def can_pin() -> bool:
    """True when there are two CPUs to split between the proxy and the generator."""
    return (
        hasattr(os, "sched_setaffinity")
        and len(ALLOWED_CPUS) >= 2
        and {PROXY_CPU, GENERATOR_CPU} <= ALLOWED_CPUS
    )


def pin_self(cpu: int) -> set[int] | None:
    """Pin this process to ``cpu``; return the previous affinity to restore (None: not pinned)."""
    if not can_pin():
        return None
    before = set(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return before


def unpin_self(before: set[int] | None) -> None:
    if before is not None:
        os.sched_setaffinity(0, before)


def pinned_argv(argv: Sequence[str], cpu: int) -> list[str]:
    """``argv`` started on ``cpu`` (``taskset -c``) when pinning is possible and taskset exists."""
    if can_pin() and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return list(argv)


def serve_argv(config: Path, port: int, backend_port: int) -> list[str]:
    """``atls-proxy serve`` on 127.0.0.1:``port`` in front of 127.0.0.1:``backend_port``, quiet."""
    return [
        sys.executable,
        "-m",
        "atls_proxy",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        f"127.0.0.1:{backend_port}",
        "--log-level",
        "error",
    ]


def pin_pid(pid: int, cpu: int) -> None:
    """Fallback when taskset is missing: pin an already started (single-threaded) child."""
    if can_pin():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def not_pinned(children: Sequence[Child]) -> list[str]:
    """The children still running that do not run on the one CPU they were pinned to, and this
    process when it does not run on GENERATOR_CPU (pinning failures are otherwise silent)."""
    if not can_pin():
        return []
    out: list[str] = []
    with contextlib.suppress(OSError):
        if os.sched_getaffinity(0) != {GENERATOR_CPU}:
            out.append(f"the generator (not on CPU {GENERATOR_CPU} only)")
    for c in children:
        if c.cpu is None or c.proc.poll() is not None:
            continue
        try:
            ok = os.sched_getaffinity(c.pid) == {c.cpu}
        except OSError:
            continue
        if not ok:
            out.append(f"{c.name} (not on CPU {c.cpu} only)")
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 when the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (-1 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (wrk runs are measured as deltas of this)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(
    port: int,
    proc: subprocess.Popen[bytes],
    name: str,
    timeout: float = 20,
    log: Path | None = None,
) -> None:
    """Wait until 127.0.0.1:``port`` accepts; raise if ``proc`` exits or time runs out.

    The error carries the end of the child's stderr: its pipe, or ``log`` when it writes there.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if log is not None:
                err = log.read_text(errors="replace") if log.exists() else ""
            else:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{name} exited ({proc.returncode}): {err.strip()[-2000:]}")
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:g}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """Terminate, then kill, one child we started (by its own handle, never by name)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tool_version(argv: Sequence[str]) -> str | None:
    """First line a tool prints about its version, or None when it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def _haproxy_openssl(haproxy: str) -> str | None:
    """The OpenSSL HAProxy runs on (``haproxy -vv``: "Running on OpenSSL version : ...")."""
    try:
        res = subprocess.run([haproxy, "-vv"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in res.stdout.splitlines():
        if line.startswith("Running on OpenSSL version"):
            return line.split(":", 1)[1].strip()
    return None


def machine_info() -> dict[str, object]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_allowed": len(ALLOWED_CPUS),
        "kernel": platform.release(),
        "system": platform.system(),
        "pinned": can_pin(),
        "proxy_cpu": PROXY_CPU if can_pin() else None,
        "generator_cpu": GENERATOR_CPU if can_pin() else None,
    }


def software_versions(haproxy: str | None, wrk: str | None) -> dict[str, object]:
    from atls_proxy import __version__

    versions: dict[str, object] = {
        "atls_proxy": __version__,
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "haproxy": tool_version([haproxy, "-v"]) if haproxy else None,
        "haproxy_openssl": _haproxy_openssl(haproxy) if haproxy else None,
        "wrk": tool_version([wrk, "-v"]) if wrk else None,
    }
    with contextlib.suppress(Exception):
        from OpenSSL import SSL

        versions["pyopenssl_openssl"] = SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()
    for dist in ("uvloop", "cryptography", "pyOpenSSL"):
        with contextlib.suppress(Exception):
            versions[dist.lower()] = importlib.metadata.version(dist)
    return versions


class Child:
    """A child process we started, with the loopback port it listens on."""

    __slots__ = ("cpu", "name", "port", "proc")

    def __init__(
        self, name: str, proc: subprocess.Popen[bytes], port: int, cpu: int | None = None
    ) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.cpu = cpu  # the CPU it was pinned to (None: not pinned)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


class CpuWindow:
    """CPU seconds of named processes, of this process and of its reaped children, over a window."""

    __slots__ = ("_children0", "_pids", "_self0", "_start", "_t0", "result")

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start: dict[str, float] = {}
        self._self0 = 0.0
        self._children0 = 0.0
        self._t0 = 0.0
        self.result: dict[str, float] = {}

    def start(self) -> None:
        self._start = {k: cpu_seconds(p) for k, p in self._pids.items()}
        self._self0 = time.process_time()
        self._children0 = children_cpu_seconds()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """``{name: cpu_s, ..., "generator": cpu_s, "wall": s}``; the generator is this process
        plus the children reaped in the window (wrk)."""
        self.result = {k: cpu_seconds(p) - self._start[k] for k, p in self._pids.items()}
        self.result["generator"] = (time.process_time() - self._self0) + (
            children_cpu_seconds() - self._children0
        )
        self.result["wall"] = time.monotonic() - self._t0
        return self.result
