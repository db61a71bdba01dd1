"""The metrics layer: every method moves its series, labels stay bounded, the documented names are
the exposed names, promtool accepts the exposition, and multiprocess mode merges workers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import atls_proxy
from atls_proxy.ops import metrics as mm
from atls_proxy.ops.metrics import CLOSE_REASONS, MAX_CHECKS, Metrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "METRICS.md"


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def families(body: bytes) -> dict[str, str]:
    """Family name (as in ``# TYPE``) → type, from a text exposition."""
    out: dict[str, str] = {}
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            out[name] = typ
    return out


def documented() -> dict[str, str]:
    """Metric name → type from the table under '## The metrics' in docs/METRICS.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The metrics", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"`atls_proxy_[a-z0-9_]+`", cells[0]):
            out[cells[0].strip("`")] = cells[1]
    return out


def promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if path is None:
        if os.environ.get("ATLS_PROXY_REQUIRE_TOOLS") == "1":
            pytest.fail("promtool not found and ATLS_PROXY_REQUIRE_TOOLS=1")
        pytest.skip("promtool not installed")
    return path


def populated() -> Metrics:
    m = Metrics(attester="software", tier="cached")
    m.conn_accepted()
    m.conn_accepted()
    m.conn_closed("completed", 100, 200)
    m.conn_refused()
    m.handshake(True, 0.002)
    m.handshake(False, 0.3)
    m.attestation_requested()
    m.attestation_succeeded()
    m.attestation_failed("ea.signature")
    m.evidence("software", "cached", 0.0002)
    m.quote("software", 0.04, ok=True)
    m.quote("software", 10.0, ok=False)
    m.queue_depth(3)
    m.batch(17)
    m.epoch(12.5)
    m.appraisal(0.003)
    m.backend_connect_error()
    m.reload(True)
    m.reload(False)
    m.draining(True)
    return m


# -- every method moves the right series ---------------------------------------------------------


def test_fixed_enum_series_exist_from_start() -> None:
    m = Metrics()
    for reason in CLOSE_REASONS:
        assert value(m, "atls_proxy_connections_closed_total", reason=reason) == 0
    for result in ("ok", "failed"):
        assert value(m, "atls_proxy_tls_handshakes_total", result=result) == 0
    for direction in ("to_backend", "to_client"):
        assert value(m, "atls_proxy_forwarded_bytes_total", direction=direction) == 0
    for result in ("success", "failure"):
        assert value(m, "atls_proxy_reloads_total", result=result) == 0
    assert value(m, "atls_proxy_connections_active") == 0
    assert value(m, "atls_proxy_draining") == 0
    assert value(m, "atls_proxy_config_last_reload_successful") == 1
    age = value(m, "atls_proxy_epoch_age_seconds")
    assert age is not None and math.isnan(age)


def test_build_info() -> None:
    from OpenSSL import SSL

    m = Metrics()
    body, _ = m.exposition()
    (fam,) = [
        f
        for f in text_string_to_metric_families(body.decode())
        if f.name == "atls_proxy_build_info"
    ]
    (s,) = fam.samples
    assert s.value == 1
    assert s.labels["version"] == atls_proxy.__version__
    assert s.labels["python"] == ".".join(map(str, sys.version_info[:3]))
    assert s.labels["openssl"] == SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def test_connections() -> None:
    m = Metrics()
    m.conn_accepted()
    m.conn_accepted()
    m.conn_accepted()
    assert value(m, "atls_proxy_connections_accepted_total") == 3
    assert value(m, "atls_proxy_connections_active") == 3
    m.conn_closed("completed", 10, 20)
    m.conn_closed("idle_timeout", to_backend=5)
    assert value(m, "atls_proxy_connections_active") == 1
    assert value(m, "atls_proxy_connections_closed_total", reason="completed") == 1
    assert value(m, "atls_proxy_connections_closed_total", reason="idle_timeout") == 1
    assert value(m, "atls_proxy_forwarded_bytes_total", direction="to_backend") == 15
    assert value(m, "atls_proxy_forwarded_bytes_total", direction="to_client") == 20
    m.conn_refused()
    assert value(m, "atls_proxy_connections_accepted_total") == 4
    assert value(m, "atls_proxy_connections_active") == 1
    assert value(m, "atls_proxy_connections_closed_total", reason="refused_limit") == 1


def test_accepted_equals_closed_plus_active() -> None:
    m = Metrics()
    for reason in [*CLOSE_REASONS, "bogus"]:
        if reason == "refused_limit":
            m.conn_refused()
            continue
        m.conn_accepted()
        m.conn_closed(reason)
    m.conn_accepted()
    closed = sum(
        value(m, "atls_proxy_connections_closed_total", reason=r) or 0 for r in CLOSE_REASONS
    )
    active = value(m, "atls_proxy_connections_active") or 0
    assert value(m, "atls_proxy_connections_accepted_total") == closed + active == 11


@pytest.mark.parametrize("reason", ["weird", "", "Completed", "x" * 500, "reason\n"])
def test_unknown_close_reason_is_error(reason: str) -> None:
    m = Metrics()
    m.conn_accepted()
    m.conn_closed(reason)
    assert value(m, "atls_proxy_connections_closed_total", reason="error") == 1
    body, _ = m.exposition()
    reasons = set(re.findall(rb'connections_closed_total\{reason="([^"]*)"\}', body))
    assert reasons == {r.encode() for r in CLOSE_REASONS}


def test_handshake() -> None:
    m = Metrics()
    m.handshake(True, 0.0004)
    m.handshake(False, 12.0)
    h = "atls_proxy_tls_handshake_duration_seconds"
    assert value(m, "atls_proxy_tls_handshakes_total", result="ok") == 1
    assert value(m, "atls_proxy_tls_handshakes_total", result="failed") == 1
    assert value(m, h + "_count") == 2
    assert value(m, h + "_bucket", le="0.0005") == 1
    assert value(m, h + "_bucket", le="10.0") == 1
    assert value(m, h + "_bucket", le="+Inf") == 2


def test_attestation_counters() -> None:
    m = Metrics()
    m.attestation_requested()
    m.attestation_requested()
    m.attestation_succeeded()
    m.attestation_failed("expat.binder")
    m.attestation_failed("expat.binder")
    m.attestation_failed("freshness.max-age")
    assert value(m, "atls_proxy_attestation_requests_total") == 2
    assert value(m, "atls_proxy_attestation_successes_total") == 1
    assert value(m, "atls_proxy_unattested_connections_total") == 0
    m.served_unattested()
    assert value(m, "atls_proxy_unattested_connections_total") == 1
    assert value(m, "atls_proxy_attestation_failures_total", check="expat.binder") == 2
    assert value(m, "atls_proxy_attestation_failures_total", check="freshness.max-age") == 1


def test_evidence_quote_batch_epoch_appraisal() -> None:
    m = Metrics()
    m.evidence("tdx", "batched", 0.05)
    m.evidence("tdx", "batched", 0.07)
    assert (
        value(m, "atls_proxy_evidence_duration_seconds_count", attester="tdx", tier="batched") == 2
    )
    assert value(
        m, "atls_proxy_evidence_duration_seconds_sum", attester="tdx", tier="batched"
    ) == pytest.approx(0.12)
    m.quote("tdx", 0.04)
    m.quote("tdx", 10.0, ok=False)
    assert value(m, "atls_proxy_quote_duration_seconds_count", attester="tdx") == 2
    assert value(m, "atls_proxy_quote_failures_total", attester="tdx") == 1
    m.queue_depth(7)
    assert value(m, "atls_proxy_quote_queue_depth") == 7
    m.queue_depth(0)
    assert value(m, "atls_proxy_quote_queue_depth") == 0
    for size in (1, 3, 1024, 5000):
        m.batch(size)
    b = "atls_proxy_quote_batch_size_bucket"
    assert value(m, b, le="1.0") == 1
    assert value(m, b, le="4.0") == 2
    assert value(m, b, le="1024.0") == 3
    assert value(m, b, le="+Inf") == 4
    m.epoch(42.0)
    assert value(m, "atls_proxy_epoch_age_seconds") == 42
    m.epoch(None)
    assert math.isnan(value(m, "atls_proxy_epoch_age_seconds") or 0.0)
    m.appraisal(0.0002)
    assert value(m, "atls_proxy_appraisal_duration_seconds_bucket", le="0.00025") == 1


def test_batch_buckets_are_powers_of_two() -> None:
    assert tuple(float(2**i) for i in range(11)) == mm.BATCH_BUCKETS
    assert mm.HANDSHAKE_BUCKETS[0] == 0.0005 and mm.HANDSHAKE_BUCKETS[-1] == 10.0


def test_pre_created_attester_series() -> None:
    m = Metrics(attester="snp", tier="strict")
    assert value(m, "atls_proxy_quote_duration_seconds_count", attester="snp") == 0
    assert value(m, "atls_proxy_quote_failures_total", attester="snp") == 0
    assert (
        value(m, "atls_proxy_evidence_duration_seconds_count", attester="snp", tier="strict") == 0
    )


def test_unknown_tier_is_other() -> None:
    m = Metrics()
    m.evidence("software", "turbo", 0.1)
    assert (
        value(m, "atls_proxy_evidence_duration_seconds_count", attester="software", tier="other")
        == 1
    )


def test_epoch_age_source_is_read_at_exposition() -> None:
    m = Metrics()
    ages: list[float | None] = [None]
    m.epoch_age_source(lambda: ages[0])
    assert math.isnan(value(m, "atls_proxy_epoch_age_seconds") or 0.0)
    ages[0] = 30.0
    body, _ = m.exposition()
    assert b"atls_proxy_epoch_age_seconds 30.0" in body

    def broken() -> float | None:
        raise RuntimeError("engine gone")

    m.epoch_age_source(broken)  # a failing source gives NaN, never an exception
    body, _ = m.exposition()
    assert b"atls_proxy_epoch_age_seconds NaN" in body


async def test_refresh_forever_writes_the_epoch_age() -> None:
    m = Metrics()
    ages = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    m.epoch_age_source(lambda: next(ages, 9.0))
    assert value(m, "atls_proxy_epoch_age_seconds") == 1
    task = asyncio.ensure_future(m.refresh_forever(0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert value(m, "atls_proxy_epoch_age_seconds") == 9


def test_backend_reload_draining() -> None:
    now = [1000.0]
    m = Metrics(clock=lambda: now[0])
    assert value(m, "atls_proxy_config_last_reload_timestamp_seconds") == 1000
    m.backend_connect_error()
    assert value(m, "atls_proxy_backend_connect_errors_total") == 1
    now[0] = 2000.0
    m.reload(True)
    assert value(m, "atls_proxy_reloads_total", result="success") == 1
    assert value(m, "atls_proxy_config_last_reload_successful") == 1
    assert value(m, "atls_proxy_config_last_reload_timestamp_seconds") == 2000
    now[0] = 3000.0
    m.reload(False)
    assert value(m, "atls_proxy_reloads_total", result="failure") == 1
    assert value(m, "atls_proxy_config_last_reload_successful") == 0
    assert value(m, "atls_proxy_config_last_reload_timestamp_seconds") == 2000  # last success
    m.draining(True)
    assert value(m, "atls_proxy_draining") == 1
    m.draining(False)
    assert value(m, "atls_proxy_draining") == 0


# -- bounded labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check",
    [
        "",
        "EA.Signature",
        "-leading-dash",
        ".leading-dot",
        "a" * 65,
        "has space",
        'quote"d',
        "new\nline",
        "ünïcode",
        "slash/name",
        "{braces}",
    ],
)
def test_odd_check_names_are_other(check: str) -> None:
    m = Metrics()
    m.attestation_failed(check)
    assert value(m, "atls_proxy_attestation_failures_total", check="other") == 1
    body, _ = m.exposition()
    assert re.findall(rb'check="([^"]*)"', body) == [b"other"]


def test_check_name_limits_are_inclusive() -> None:
    m = Metrics()
    m.attestation_failed("a" * 64)
    m.attestation_failed("0")
    m.attestation_failed("tdx.tcb")
    for c in ("a" * 64, "0", "tdx.tcb"):
        assert value(m, "atls_proxy_attestation_failures_total", check=c) == 1


def test_too_many_check_names_become_other() -> None:
    m = Metrics()
    for i in range(MAX_CHECKS + 36):
        m.attestation_failed(f"check.{i}")
    m.attestation_failed("check.0")  # a name seen before still counts under its own name
    m.attestation_failed("check.99")  # over the limit: other again
    body, _ = m.exposition()
    labels = set(re.findall(rb'atls_proxy_attestation_failures_total\{check="([^"]*)"\}', body))
    assert len(labels) == MAX_CHECKS + 1
    assert b"other" in labels
    assert value(m, "atls_proxy_attestation_failures_total", check="check.0") == 2
    assert value(m, "atls_proxy_attestation_failures_total", check="other") == 37
    # The cache does not grow with odd names: each accepted name by value and by label, plus other.
    assert len(m._failures) == 2 * MAX_CHECKS + 1


def test_too_many_attesters_become_other() -> None:
    m = Metrics()
    for i in range(mm.MAX_ATTESTERS + 4):
        m.quote(f"att{i}", 0.01, ok=False)
        m.evidence(f"att{i}", "strict", 0.01)
    m.quote("Bad Name", 0.01)
    body, _ = m.exposition()
    for fam in ("quote_duration_seconds_count", "quote_failures_total"):
        labels = set(re.findall(rf'atls_proxy_{fam}\{{attester="([^"]*)"\}}'.encode(), body))
        assert len(labels) == mm.MAX_ATTESTERS + 1 and b"other" in labels
    assert value(m, "atls_proxy_quote_duration_seconds_count", attester="other") == 5


# -- names, registry, exposition -----------------------------------------------------------------


def test_own_registry_never_the_global_one() -> None:
    before = set(REGISTRY._names_to_collectors)
    a = Metrics()
    b = Metrics()  # a second instance must not clash
    a.conn_accepted()
    assert value(b, "atls_proxy_connections_accepted_total") == 0
    assert set(REGISTRY._names_to_collectors) == before
    assert not any(n.startswith("atls_proxy") for n in REGISTRY._names_to_collectors)


def test_names_are_the_exposed_families() -> None:
    m = populated()
    body, ctype = m.exposition()
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = families(body)
    assert set(fams) == m.names()
    assert all(n.startswith("atls_proxy_") for n in fams)
    assert not any(n.endswith("_created") for n in fams)


def test_documented_names_equal_exposed_names() -> None:
    doc = documented()
    m = Metrics()
    assert set(doc) == m.names(), (
        f"undocumented: {sorted(m.names() - set(doc))}; documented but absent: "
        f"{sorted(set(doc) - m.names())}"
    )
    fams = families(m.exposition()[0])
    for name, typ in doc.items():
        assert fams[name] == typ, name


def test_exposition_parses() -> None:
    body, _ = populated().exposition()
    parsed = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "atls_proxy_connections_accepted" in parsed  # the parser strips _total


@pytest.mark.parametrize("fresh", [False, True], ids=["populated", "fresh-with-nan-epoch"])
def test_promtool_accepts_exposition(fresh: bool) -> None:
    tool = promtool()
    body, _ = (Metrics() if fresh else populated()).exposition()
    assert (b"atls_proxy_epoch_age_seconds NaN" in body) is fresh
    r = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert not r.stdout.strip() and not r.stderr.strip(), (r.stdout + r.stderr).decode()


def test_promtool_accepts_documented_promql(tmp_path: Path) -> None:
    tool = promtool()
    text = DOC.read_text(encoding="utf-8")
    exprs = [
        e.strip()
        for block in re.findall(r"```promql\n(.*?)```", text, re.S)
        for e in block.split("\n\n")
        if e.strip()
    ]
    assert len(exprs) >= 6
    rules = ["groups:", "  - name: metrics-doc", "    rules:"]
    for i, e in enumerate(exprs):
        rules += [f"      - record: doc:example_{i}", "        expr: |"]
        rules += [f"          {line}" for line in e.splitlines()]
    path = tmp_path / "rules.yml"
    path.write_text("\n".join(rules) + "\n", encoding="utf-8")
    r = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


# -- multiprocess mode ---------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys
    from atls_proxy.ops.metrics import Metrics, multiprocess_enabled
    assert multiprocess_enabled(), "PROMETHEUS_MULTIPROC_DIR was not honoured"
    n = int(sys.argv[1])
    m = Metrics(attester="software", tier="batched")
    for _ in range(n):
        m.conn_accepted()
    m.conn_closed("completed", 10 * n, 20 * n)
    m.handshake(True, 0.001 * n)
    m.attestation_failed("ea.signature")
    m.attestation_failed("bad name")
    m.quote("software", 0.04, ok=n != 1)
    m.batch(n)
    m.queue_depth(n)
    m.epoch(100.0 * n)
    m.reload(n != 2)
    m.draining(n == 2)
    print(os.getpid())
    """
)


def run_worker(path: Path, n: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
    r = subprocess.run(
        [sys.executable, "-c", WORKER, str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def merged(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = mm.multiprocess_exposition(path)
    assert ctype == mm.CONTENT_TYPE
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_multiprocess_merges_two_workers(tmp_path: Path) -> None:
    d = tmp_path / "prom"
    mm.prepare_multiprocess_dir(d)
    (d / "stale_1.db").write_bytes(b"left over from a previous run")
    mm.prepare_multiprocess_dir(d)
    assert list(d.iterdir()) == []

    pid1 = run_worker(d, 1)
    pid2 = run_worker(d, 2)
    got = merged(d)

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    # counters and histograms: summed
    assert v("atls_proxy_connections_accepted_total") == 3
    assert v("atls_proxy_connections_closed_total", reason="completed") == 2
    assert v("atls_proxy_connections_closed_total", reason="drained") == 0
    assert v("atls_proxy_forwarded_bytes_total", direction="to_backend") == 30
    assert v("atls_proxy_attestation_failures_total", check="ea.signature") == 2
    assert v("atls_proxy_attestation_failures_total", check="other") == 2
    assert v("atls_proxy_quote_failures_total", attester="software") == 1
    assert v("atls_proxy_quote_batch_size_count") == 2
    assert v("atls_proxy_quote_batch_size_bucket", le="1.0") == 1
    assert v("atls_proxy_quote_batch_size_bucket", le="2.0") == 2
    assert v("atls_proxy_tls_handshake_duration_seconds_sum") == pytest.approx(0.003)
    # gauges by mode: livesum, livemax, livemin
    assert v("atls_proxy_connections_active") == (1 - 1) + (2 - 1)
    assert v("atls_proxy_quote_queue_depth") == 3
    assert v("atls_proxy_epoch_age_seconds") == 200
    assert v("atls_proxy_config_last_reload_successful") == 0
    assert v("atls_proxy_draining") == 1
    assert v("atls_proxy_reloads_total", result="failure") == 1
    build = [k for k in got if k[0] == "atls_proxy_build_info"]
    assert len(build) == 1 and got[build[0]] == 1
    assert not any(dict(k[1]).get("pid") for k in got), "no per-pid gauge series"

    # the families merged are documented ones
    assert {k[0] for k in got} and set(families(mm.multiprocess_exposition(d)[0])) <= set(
        documented()
    )

    # worker 2 exits: its live gauges stop counting, its counters stay
    mm.mark_worker_dead(pid2, d)
    got = merged(d)
    assert v("atls_proxy_connections_active") == 0
    assert v("atls_proxy_quote_queue_depth") == 1
    assert v("atls_proxy_epoch_age_seconds") == 100
    assert v("atls_proxy_config_last_reload_successful") == 1
    assert v("atls_proxy_draining") == 0
    assert v("atls_proxy_connections_accepted_total") == 3
    mm.mark_worker_dead(pid1, d)
    got = merged(d)
    assert ("atls_proxy_connections_active", ()) not in got
    assert v("atls_proxy_connections_accepted_total") == 3


def test_promtool_accepts_multiprocess_exposition(tmp_path: Path) -> None:
    tool = promtool()
    d = tmp_path / "prom"
    mm.prepare_multiprocess_dir(d)
    run_worker(d, 2)
    body, _ = mm.multiprocess_exposition(d)
    r = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_this_process_is_not_multiprocess() -> None:
    # The test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("the test runner itself was started in multiprocess mode")
    assert not mm.multiprocess_enabled()


def test_env_set_too_late_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if mm.multiprocess_enabled():
        pytest.skip("the test runner itself was started in multiprocess mode")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    with caplog.at_level("WARNING", logger="atls_proxy.metrics"):
        Metrics()
    assert "imported before" in caplog.text
