"""Prometheus metrics of the proxy: one ``Metrics`` object per process, on its own registry.

The metric names are public API (docs/METRICS.md lists every one; a test keeps the two equal).
All names start with ``atls_proxy_``; durations are in seconds, sizes in bytes.

Hot code calls one cheap method per event (``conn_closed``, ``handshake``, ``quote`` …); label
children of fixed enums are created up front and cached, so an event costs a dictionary lookup and
one locked add. Label values that come from the outside world (a failing check's name, an attester
name) are *bounded*: a value must match ``^[a-z0-9][a-z0-9._-]{0,63}$`` and at most a fixed number
of distinct values are kept per process; anything else is counted as ``other``.

Multiprocess mode (``--workers N``)
-----------------------------------
prometheus-client picks how metric values are stored **when it is imported**: if
``PROMETHEUS_MULTIPROC_DIR`` is set, every value lives in a per-process memory-mapped file in
that directory; otherwise in process memory. Therefore:

* the supervisor creates (and empties, ``prepare_multiprocess_dir``) the directory and starts each
  worker as a *fresh interpreter* with ``PROMETHEUS_MULTIPROC_DIR`` in its environment — setting the
  variable inside a process that has already imported prometheus_client has no effect
  (``multiprocess_enabled()`` tells which mode the current process is in);
* each worker builds its ``Metrics`` as usual and records events; it does not serve ``/metrics``
  itself (its own registry would only show its own share);
* the supervisor answers ``/metrics`` with ``multiprocess_exposition(dir)``, which merges every
  worker's files (``MultiProcessCollector``): counters and histograms are summed over all processes
  that ever ran, so they never go backwards when a worker dies; gauges aggregate as declared by
  their ``multiprocess_mode`` (``GAUGE_MODES`` below; the ``live*`` modes only count live workers);
* when a worker exits the supervisor calls ``mark_worker_dead(pid, dir)`` so the ``live*`` gauges
  of the dead worker (its active connections, its queue depth …) stop counting.

The epoch age changes continuously, so it is computed rather than pushed: ``epoch_age_source(fn)``
registers a function and ``refresh()`` writes its value. ``exposition()`` refreshes by itself; a
worker in multiprocess mode must call ``refresh()`` periodically (``refresh_forever()``), since the
supervisor reads only what the worker has written.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Generic, Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

import atls_proxy

__all__ = [
    "APPRAISAL_BUCKETS",
    "BATCH_BUCKETS",
    "CLOSE_REASONS",
    "CONTENT_TYPE",
    "EVIDENCE_BUCKETS",
    "GAUGE_MODES",
    "HANDSHAKE_BUCKETS",
    "MAX_ATTESTERS",
    "MAX_CHECKS",
    "OTHER",
    "PREFIX",
    "QUOTE_BUCKETS",
    "TIERS",
    "Metrics",
    "mark_worker_dead",
    "multiprocess_enabled",
    "multiprocess_exposition",
    "prepare_multiprocess_dir",
]

log = logging.getLogger("atls_proxy.metrics")

PREFIX: Final = "atls_proxy_"
# generate_latest() writes the classic text format; say so explicitly (recent prometheus-client
# releases label CONTENT_TYPE_LATEST as version 1.0.0, which older scrapers do not know).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Why a connection ended (atls_proxy_connections_closed_total{reason}); anything else is "error".
CLOSE_REASONS: Final = (
    "completed",
    "handshake_failed",
    "attestation_failed",
    "backend_unavailable",
    "idle_timeout",
    "peer_reset",
    "drained",
    "refused_limit",
    "error",
)
TIERS: Final = ("strict", "batched", "cached")
DIRECTIONS: Final = ("to_backend", "to_client")
OTHER: Final = "other"

# Bounded free-form label values (check names, attester names).
LABEL_VALUE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_CHECKS: Final = 64
MAX_ATTESTERS: Final = 16

# 0.5 ms … 10 s: a loopback TLS 1.3 handshake is ~1 ms, the configured timeouts are seconds.
HANDSHAKE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A hardware quote is ~40 ms and runs under quote_timeout (10 s by default).
QUOTE_BUCKETS: Final = HANDSHAKE_BUCKETS
# Evidence of the cached tier is one signature (~0.1 ms); the strict tier waits for a quote.
EVIDENCE_BUCKETS: Final = (0.0001, 0.00025, *HANDSHAKE_BUCKETS)
# Appraisal: cached epoch appraisals are sub-millisecond, a full chain walk a few ms.
APPRAISAL_BUCKETS: Final = EVIDENCE_BUCKETS
BATCH_BUCKETS: Final = tuple(float(1 << i) for i in range(11))  # 1, 2, 4, …, 1024

GaugeMode = Literal[
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
]

# How each gauge is merged across worker processes (docs/METRICS.md, "Multiprocess mode").
GAUGE_MODES: Final[Mapping[str, GaugeMode]] = {
    "build_info": "livemax",  # 1 while any worker with these versions is alive
    "connections_active": "livesum",
    "quote_queue_depth": "livesum",
    "epoch_age_seconds": "livemax",  # the oldest epoch any live worker serves
    "config_last_reload_successful": "livemin",  # 0 when any live worker's last reload failed
    "config_last_reload_timestamp_seconds": "livemin",  # the oldest configuration in service
    "draining": "livemax",  # 1 when any live worker drains
}


def _openssl_version() -> str:
    try:
        from OpenSSL import SSL

        raw = SSL.OpenSSL_version(SSL.OPENSSL_VERSION)
    except Exception:  # pragma: no cover - pyOpenSSL is a hard dependency
        return "unknown"
    return raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)


class _BoundedLabel:
    """Maps free-form strings onto at most ``limit`` label values (plus ``other``)."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if LABEL_VALUE_RE.match(value) is None or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


_M = TypeVar("_M", Counter, Histogram)


class _Children(Generic[_M]):
    """The label children of one metric, looked up by the caller's raw values.

    Each raw value is bounded first (``_BoundedLabel``, or a fixed set); the child is cached
    under the raw values only when bounding left them unchanged, so odd values (bounded to
    ``other``) cannot grow the cache without end.
    """

    __slots__ = ("_bounds", "_by_label", "_by_value", "_metric")

    def __init__(self, metric: _M, *bounds: Callable[[str], str]) -> None:
        self._metric: _M = metric
        self._bounds = bounds
        self._by_value: dict[tuple[str, ...], _M] = {}
        self._by_label: dict[tuple[str, ...], _M] = {}

    def __len__(self) -> int:
        """Cache entries: each accepted value once by value and once by label, plus ``other``."""
        return len(self._by_value) + len(self._by_label)

    def __call__(self, *values: str) -> _M:
        child = self._by_value.get(values)
        if child is None:
            labels = tuple(bound(v) for bound, v in zip(self._bounds, values, strict=True))
            child = self._by_label.get(labels)
            if child is None:
                child = self._by_label[labels] = self._metric.labels(*labels)
            if labels == values:
                self._by_value[values] = child
        return child


class _WithoutCreated(Collector):
    """The registry minus the ``*_created`` samples.

    prometheus-client adds a ``<name>_created`` gauge family per counter and histogram in the text
    format, but not in multiprocess mode. Dropping them keeps the exposed families the same in both
    modes and equal to the documented list.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            suffix = metric.name + "_created"
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [s for s in metric.samples if s.name != suffix]
            yield out


class Metrics:
    """Every metric of one process, registered in a private ``CollectorRegistry``.

    ``attester`` and ``tier``, when known at start-up, pre-create the evidence and quote series
    of that attester so they exist (at zero) before the first connection.
    """

    def __init__(
        self,
        *,
        attester: str | None = None,
        tier: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._checks = _BoundedLabel(MAX_CHECKS)
        self._attesters = _BoundedLabel(MAX_ATTESTERS)
        self._epoch_source: Callable[[], float | None] | None = None
        reg = self.registry
        p = PREFIX

        if os.environ.get(MULTIPROC_ENV) and not multiprocess_enabled():
            log.warning(
                "%s is set but prometheus_client was imported before it: this process keeps its "
                "metrics in memory and the supervisor will not see them",
                MULTIPROC_ENV,
            )

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(p + name, doc, labels, registry=reg, multiprocess_mode=GAUGE_MODES[name])

        # -- build ---------------------------------------------------------------------------
        self.build_info = gauge(
            "build_info",
            "Always 1; the labels name the atls-proxy, Python and OpenSSL versions.",
            ("version", "python", "openssl"),
        )
        self.build_info.labels(
            atls_proxy.__version__, platform.python_version(), _openssl_version()
        ).set(1)

        # -- connections ---------------------------------------------------------------------
        self.connections_accepted = Counter(
            p + "connections_accepted_total",
            "Connections accepted by the listener (including those refused at the limit).",
            registry=reg,
        )
        self.connections_active = gauge("connections_active", "Connections open now.")
        self.connections_closed = Counter(
            p + "connections_closed_total",
            "Connections ended, by reason.",
            ("reason",),
            registry=reg,
        )
        self._closed = {r: self.connections_closed.labels(r) for r in CLOSE_REASONS}

        # -- TLS -----------------------------------------------------------------------------
        self.tls_handshakes = Counter(
            p + "tls_handshakes_total", "TLS handshakes, by result.", ("result",), registry=reg
        )
        self._hs_ok = self.tls_handshakes.labels("ok")
        self._hs_failed = self.tls_handshakes.labels("failed")
        self.tls_handshake_duration = Histogram(
            p + "tls_handshake_duration_seconds",
            "Duration of TLS handshakes (successful or not).",
            buckets=HANDSHAKE_BUCKETS,
            registry=reg,
        )

        # -- attestation ---------------------------------------------------------------------
        self.attestation_requests = Counter(
            p + "attestation_requests_total", "Attestation exchanges started.", registry=reg
        )
        self.attestation_successes = Counter(
            p + "attestation_successes_total",
            "Attestation exchanges that ended accepted.",
            registry=reg,
        )
        self.unattested_connections = Counter(
            p + "unattested_connections_total",
            "Connections forwarded UNATTESTED (plain_clients = serve-unattested).",
            registry=reg,
        )
        self.attestation_failures = Counter(
            p + "attestation_failures_total",
            "Attestation exchanges that failed, by the name of the failing check.",
            ("check",),
            registry=reg,
        )
        self._failures = _Children(self.attestation_failures, self._checks)

        # -- evidence ------------------------------------------------------------------------
        self.evidence_duration = Histogram(
            p + "evidence_duration_seconds",
            "Time to produce one connection's CMW (includes waiting for a quote).",
            ("attester", "tier"),
            buckets=EVIDENCE_BUCKETS,
            registry=reg,
        )
        self._evidence = _Children(
            self.evidence_duration, self._attesters, lambda t: t if t in TIERS else OTHER
        )
        self.quote_duration = Histogram(
            p + "quote_duration_seconds",
            "Duration of TEE quote operations (successful or not).",
            ("attester",),
            buckets=QUOTE_BUCKETS,
            registry=reg,
        )
        self._quote = _Children(self.quote_duration, self._attesters)
        self.quote_failures = Counter(
            p + "quote_failures_total",
            "TEE quote operations that failed or timed out.",
            ("attester",),
            registry=reg,
        )
        self._quote_failed = _Children(self.quote_failures, self._attesters)
        self.quote_queue_depth = gauge(
            "quote_queue_depth", "Evidence requests waiting for the single-flight quote gate."
        )
        self.quote_batch_size = Histogram(
            p + "quote_batch_size",
            "Connections bound into one quote by the batched tier.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.epoch_age = gauge(
            "epoch_age_seconds",
            "Age of the cached tier's current epoch; NaN when there is no epoch.",
        )
        self.epoch_age.set(math.nan)

        # -- client side ---------------------------------------------------------------------
        self.appraisal_duration = Histogram(
            p + "appraisal_duration_seconds",
            "Duration of the appraisal of a server's evidence (client side).",
            buckets=APPRAISAL_BUCKETS,
            registry=reg,
        )

        # -- forwarding ----------------------------------------------------------------------
        self.forwarded_bytes = Counter(
            p + "forwarded_bytes_total",
            "Application bytes forwarded, by direction (added when a connection closes).",
            ("direction",),
            registry=reg,
        )
        self._to_backend = self.forwarded_bytes.labels("to_backend")
        self._to_client = self.forwarded_bytes.labels("to_client")
        self.backend_connect_errors = Counter(
            p + "backend_connect_errors_total",
            "Failed or timed-out connections to the backend.",
            registry=reg,
        )

        # -- operations ----------------------------------------------------------------------
        self.reloads = Counter(
            p + "reloads_total", "Configuration reloads, by result.", ("result",), registry=reg
        )
        self._reload_ok = self.reloads.labels("success")
        self._reload_failed = self.reloads.labels("failure")
        self.config_last_reload_successful = gauge(
            "config_last_reload_successful",
            "1 if the last configuration (re)load succeeded, else 0.",
        )
        self.config_last_reload_timestamp = gauge(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up counts).",
        )
        self.config_last_reload_successful.set(1)
        self.config_last_reload_timestamp.set(clock())
        self.draining_gauge = gauge("draining", "1 while the process drains for shutdown, else 0.")
        self.draining_gauge.set(0)

        if attester is not None:  # the configured attester's series exist from the start
            self._quote(attester)
            self._quote_failed(attester)
            if tier is not None:
                self._evidence(attester, tier)

    # -- connections ---------------------------------------------------------------------------

    def conn_accepted(self) -> None:
        """A connection was admitted (it is now active)."""
        self.connections_accepted.inc()
        self.connections_active.inc()

    def conn_refused(self) -> None:
        """A connection was accepted and refused at once at the connection limit (never active)."""
        self.connections_accepted.inc()
        self._closed["refused_limit"].inc()

    def conn_closed(self, reason: str, to_backend: int = 0, to_client: int = 0) -> None:
        """An admitted connection ended; ``to_backend``/``to_client`` are its forwarded bytes.

        ``reason`` is one of ``CLOSE_REASONS``; any other string is counted as ``error``.
        Invariant: accepted_total = sum(closed_total) + active.
        """
        self.connections_active.dec()
        (self._closed.get(reason) or self._closed["error"]).inc()
        if to_backend > 0:
            self._to_backend.inc(to_backend)
        if to_client > 0:
            self._to_client.inc(to_client)

    # -- TLS -----------------------------------------------------------------------------------

    def handshake(self, ok: bool, seconds: float) -> None:
        """A TLS handshake ended (``ok`` or failed) after ``seconds``."""
        (self._hs_ok if ok else self._hs_failed).inc()
        self.tls_handshake_duration.observe(seconds)

    # -- attestation ---------------------------------------------------------------------------

    def attestation_requested(self) -> None:
        self.attestation_requests.inc()

    def attestation_succeeded(self) -> None:
        self.attestation_successes.inc()

    def served_unattested(self) -> None:
        """A connection goes to the backend UNATTESTED (``plain_clients = serve-unattested``)."""
        self.unattested_connections.inc()

    def attestation_failed(self, check: str) -> None:
        """An attestation exchange failed at ``check`` (bounded label: odd or excess names → other)."""
        self._failures(check).inc()

    # -- evidence ------------------------------------------------------------------------------

    def evidence(self, attester: str, tier: str, seconds: float) -> None:
        """One connection's CMW was produced by ``attester`` in ``tier`` after ``seconds``."""
        self._evidence(attester, tier).observe(seconds)

    def quote(self, attester: str, seconds: float, ok: bool = True) -> None:
        """One quote operation of ``attester`` ended after ``seconds``; failures are also counted."""
        self._quote(attester).observe(seconds)
        if not ok:
            self._quote_failed(attester).inc()

    def queue_depth(self, waiting: int) -> None:
        """Requests now waiting at the quote gate (``EngineStats.waiting``)."""
        self.quote_queue_depth.set(waiting)

    def batch(self, size: int) -> None:
        """The batched tier bound ``size`` connections into one quote."""
        self.quote_batch_size.observe(size)

    def epoch(self, age_seconds: float | None) -> None:
        """Set the current epoch's age now; ``None`` (no epoch) exposes NaN."""
        self.epoch_age.set(math.nan if age_seconds is None else age_seconds)

    def epoch_age_source(self, source: Callable[[], float | None] | None) -> None:
        """Register the epoch age function (e.g. ``EvidenceEngine.epoch_age``); see ``refresh``."""
        self._epoch_source = source
        self.refresh()

    def appraisal(self, seconds: float) -> None:
        """The client appraised a server's evidence in ``seconds``."""
        self.appraisal_duration.observe(seconds)

    # -- forwarding / backend ------------------------------------------------------------------

    def backend_connect_error(self) -> None:
        self.backend_connect_errors.inc()

    # -- operations ----------------------------------------------------------------------------

    def reload(self, ok: bool) -> None:
        """A configuration reload succeeded or failed."""
        if ok:
            self._reload_ok.inc()
            self.config_last_reload_successful.set(1)
            self.config_last_reload_timestamp.set(self._clock())
        else:
            self._reload_failed.inc()
            self.config_last_reload_successful.set(0)

    def draining(self, on: bool) -> None:
        self.draining_gauge.set(1 if on else 0)

    # -- exposition ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Write computed gauges (the epoch age) from their sources. Never raises."""
        source = self._epoch_source
        if source is None:
            return
        try:
            age = source()
        except Exception:
            log.exception("epoch age source failed")
            age = None
        self.epoch(age)

    async def refresh_forever(self, interval: float = 5.0) -> None:
        """Call ``refresh()`` every ``interval`` seconds (workers in multiprocess mode)."""
        while True:
            self.refresh()
            await asyncio.sleep(interval)

    def exposition(self) -> tuple[bytes, str]:
        """This process's metrics in the Prometheus text format: (body, content type)."""
        self.refresh()
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE

    def names(self) -> set[str]:
        """The metric family names as exposed (counters with their ``_total``)."""
        return _family_names(self.registry.collect())


# -- multiprocess --------------------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    """Whether this process stores metric values in ``PROMETHEUS_MULTIPROC_DIR`` files."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    """Create the directory and delete the files of a previous run (supervisor, before spawning)."""
    os.makedirs(path, exist_ok=True)
    for f in glob.glob(os.path.join(os.fspath(path), "*.db")):
        os.remove(f)


def mark_worker_dead(pid: int, path: str | os.PathLike[str]) -> None:
    """A worker exited: drop its ``live*`` gauges (active connections, queue depth, …).

    Its counters and histograms stay, so totals never go backwards.
    """
    mark_process_dead(pid, os.fspath(path))  # type: ignore[no-untyped-call]


def multiprocess_exposition(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """Every worker's metrics merged from ``path``: (body, content type). For the supervisor.

    Works in any process, whether or not it was itself started in multiprocess mode.
    """
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=os.fspath(path))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE


def _family_names(metrics: Iterable[Metric]) -> set[str]:
    return {m.name + "_total" if m.type == "counter" else m.name for m in metrics}
