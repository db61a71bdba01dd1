"""The evidence engine: freshness tiers between the protocol and the attester (DESIGN.md §4).

Theory of operation
-------------------
A hardware quote is slow (~40 ms) and must be serialised (parallel quote requests have crashed
TDs). A quote per connection therefore caps a proxy at ~25 attested connections per second. The
engine turns each connection's ``Binding`` into the CMW carried in its authenticator, in one of
three tiers chosen per listener; every tier still binds the evidence to *this* connection:

``strict``   one quote per connection over its own binder. CMW: the evidence record.

``batched``  requests that arrive while a quote is in flight wait for the next one. The engine
             builds a Merkle tree over the waiting binders (expat/merkle.py) and quotes the root
             with the AIK hash; each connection gets the quote plus its inclusion proof (at most
             ``MAX_TREE`` leaves a quote: the rest wait for the next). One quote in flight at any
             time; latency about two quote times when every connection has
             the same suite hash and AIK (one tree per (hash, AIK) pair: a round with SHA-256 and
             SHA-384 suites, or with two keys around a reload, quotes one tree after the other,
             so a request may wait up to one quote per group more). CMW: a collection
             ``{"evidence": quote record, "merkle": proof record}``.

``cached``   the TEE quotes the AIK once per epoch, over ``epoch_digest`` (below); per connection
             the AIK — the TLS key, which also signs the CertificateVerify over the exporter-bound
             transcript — signs the connection's binder together with the epoch digest. The epoch
             is refreshed ahead of expiry (from ``REFRESH_AHEAD`` of its life before it ends) and
             never served stale: a request that finds the epoch expired, or starting after now
             (the clock was stepped back), waits for a fresh quote, and a fresh epoch that is no
             longer valid when its quote returns fails the waiting connections. A server also
             keeps its epochs warm without traffic (``start(keep_warm=True)``): a background task
             refreshes each epoch of the current key at its refresh point, and retries a failed
             refresh every few seconds, so an idle service's epoch does not expire while the TEE
             works, and one that expired (the TEE failed) comes back without waiting for a
             connection (readiness reads ``epoch_current``). A failed refresh is not retried
             by the connections that follow it: for ``KEEP_WARM_RETRY`` seconds they keep the
             still-valid epoch, or, once it has expired, are refused at once with the TEE's
             error — without that, every connection of a busy service would be one more quote
             attempt against a failing TEE. CMW: ``{"evidence": epoch quote,
             "epoch": epoch record, "binding": AIK signature record}``.

             epoch           = CBOR {1: start (s), 2: expires (s), 3: 16 random bytes}
             epoch_digest    = H("atls-proxy epoch v1" ‖ 0x00 ‖ epoch)
             AIK binding sig = Sign_AIK("atls-proxy aik binding v1" ‖ 0x00 ‖ binder ‖ epoch_digest)
                               encoded CBOR [SignatureScheme, signature]

Every quote goes through one single-flight gate: never two quote operations at once, at most
``max_waiters`` requests waiting in any tier (more are refused at once), each quote under
``quote_timeout``. A TEE failure fails the waiting connections with ``AttestationUnavailable``;
they get no data, and neither do the connections still waiting when the engine closes. A batch
member whose client has gone leaves the queue at once (it takes no place in the next batch) and is
skipped when results are handed out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.attest.base import Attester, Evidence
from atls_proxy.errors import AttestationUnavailable
from atls_proxy.expat import binding as expat_binding
from atls_proxy.expat import merkle, schemes
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import (
    IND_EVIDENCE,
    MAX_CMW_SIZE,
    CMWRecord,
    encode_cmw,
)
from atls_proxy.expat.schemes import SigningKey
from atls_proxy.expat.tiers import (
    AIK_BINDING_MEDIA_TYPE,
    EPOCH_MEDIA_TYPE,
    EPOCH_NONCE_LENGTH,
    Epoch,
    Tier,
    aik_binding_content,
    encode_aik_binding,
    encode_record,
    epoch_digest,
)

log = logging.getLogger(__name__)

__all__ = ["EPOCH_HASHES", "REFRESH_AHEAD", "EngineHooks", "EngineStats", "EvidenceEngine", "Tier"]

# The cached tier starts quoting the next epoch when this fraction of the current one is left.
# ops/config.py requires that window to hold one ``quote_timeout`` per suite hash and a second
# (the epochs of both hashes may come due together and share the gate), so that slow quotes
# still end (or fail) before the epochs they replace expire.
REFRESH_AHEAD = 0.2
# The keep-warm task retries a failed epoch refresh after this many seconds (each attempt is one
# quote through the gate), and never sleeps longer than this between two looks at its epochs: its
# waits are computed from the wall clock, which can jump (a VM resumed, an NTP step) while the
# event loop's monotonic sleep does not see it.
KEEP_WARM_RETRY = 5.0
# Keys a reload replaced that the engine remembers, to refuse (not re-quote) late connections on
# them: two suite hashes per key, so the last 16 reloads.
RETIRED_KEPT = 32
# The cached tier keeps one epoch per suite hash: a connection's cipher suite picks one.
EPOCH_HASHES = ("sha256", "sha384")


class EngineHooks(Protocol):
    """What the engine reports to the metrics layer (``ops.metrics.Metrics`` satisfies it)."""

    def quote(self, attester: str, seconds: float, ok: bool = True) -> None: ...

    def batch(self, size: int) -> None: ...

    def queue_depth(self, waiting: int) -> None: ...


# Leaves per batched quote. Building a tree and handing out its proofs runs on the event loop
# (~13 µs a leaf here): 1024 bounds that to ~15 ms, while one 40 ms quote of 1024 leaves still
# carries ~25,000 connections a second, far above what one proxy process serves. Requests beyond
# it wait for the next quote.
MAX_TREE = 1024


@dataclass(slots=True)
class EngineStats:
    """In-process counters (SIGUSR1 status, tests); the Prometheus names are in docs/METRICS.md."""

    quotes: int = 0
    quote_failures: int = 0
    consecutive_failures: int = 0  # reset by a successful quote; readiness uses it
    quote_seconds_total: float = 0.0
    last_quote_seconds: float = 0.0
    last_batch_size: int = 0
    max_batch_size: int = 0
    waiting: int = 0
    refused_full: int = 0
    epochs: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Epoch:
    hash_name: str
    start: int
    expires: int
    encoded: bytes
    digest: bytes
    evidence: Evidence
    # The CMW collection up to the per-connection member, encoded once per epoch (see _cached).
    cmw_prefix: bytes = b""


class EvidenceEngine:
    def __init__(
        self,
        attester: Attester,
        tier: Tier,
        *,
        aik_key: SigningKey | None = None,
        quote_timeout: float = 10.0,
        max_waiters: int = 4096,
        epoch_seconds: float = 300.0,
        refresh_ahead: float = REFRESH_AHEAD,
        clock: Callable[[], float] = time.time,
        hooks: EngineHooks | None = None,
    ) -> None:
        if tier is Tier.CACHED and aik_key is None:
            raise ValueError("the cached tier needs the AIK (the TLS private key) to sign bindings")
        if not 0 < refresh_ahead < 1:
            raise ValueError("refresh_ahead is a fraction of the epoch, in (0, 1)")
        self.attester = attester
        self.tier = tier
        self.stats = EngineStats()
        self._aik = aik_key
        self._aik_scheme = schemes.schemes_for_key(aik_key)[0] if aik_key is not None else 0
        self._timeout = quote_timeout
        self._max_waiters = max_waiters
        self._epoch_seconds = epoch_seconds
        self._refresh_ahead = refresh_ahead
        self._clock = clock
        self.hooks = hooks
        self._gate = asyncio.Lock()  # single flight: one quote operation at a time
        # batched tier: waiting (binding, future) pairs and the task that drains them
        # (dict: insertion-ordered, and a gone client's entry is removed in O(1))
        self._pending: dict[asyncio.Future[bytes], Binding] = {}
        self._closed = False
        self._batcher: asyncio.Task[None] | None = None
        # cached tier: the current epoch and an in-flight refresh per (hash, AIK hash); the AIK
        # key is part of the key because a reload may replace the TLS key (= the AIK).
        self._epochs: dict[tuple[str, bytes], _Epoch] = {}
        self._refreshing: dict[tuple[str, bytes], asyncio.Task[_Epoch]] = {}
        # cached tier: the last failed refresh per key, (monotonic time, reason); cleared by a
        # successful one. Connections do not start another within KEEP_WARM_RETRY of it.
        self._refresh_failed: dict[tuple[str, bytes], tuple[float, str]] = {}
        # Keys a reload replaced (an ordered set, the latest last, at most RETIRED_KEPT): their
        # epochs are served to the connections accepted before the reload until they expire,
        # never refreshed; after that such a connection is refused — no quote for a key no new
        # connection uses. A reload back to one of them quotes it again.
        self._retired: dict[tuple[str, bytes], None] = {}
        self._keeper: asyncio.Task[None] | None = None  # start(keep_warm=True)

    # -- public ------------------------------------------------------------------------------

    async def evidence_for(self, binding: Binding, aik_key: SigningKey | None = None) -> bytes:
        """The CMW for one connection's binding. Raises ``AttestationUnavailable``.

        ``aik_key``: the private key of the certificate this connection presented (the cached
        tier's AIK); defaults to the key the engine was built with.
        """
        if self._closed:
            raise AttestationUnavailable("evidence engine closed")
        if self.tier is Tier.STRICT:
            self._admit()
            try:
                ev = await self._quote(binding)
            finally:
                self._release()
            try:
                return encode_cmw(CMWRecord(ev.media_type, ev.data, IND_EVIDENCE))
            except ValueError as exc:  # over MAX_CMW_SIZE: as _complete, for the other tiers
                raise AttestationUnavailable(str(exc)) from None
        if self.tier is Tier.BATCHED:
            return await self._batched(binding)
        return await self._cached(binding, aik_key or self._aik)

    async def start(self, aik_key: SigningKey | None = None, *, keep_warm: bool = False) -> None:
        """Warm up: the cached tier quotes its first epochs before the listener accepts; with
        ``keep_warm`` it then keeps them refreshed without traffic (module docstring)."""
        if aik_key is not None:
            self._aik = aik_key
            self._aik_scheme = schemes.schemes_for_key(aik_key)[0]
        if self.tier is Tier.CACHED:
            await self.prepare_key(self._aik)
            if keep_warm and self._keeper is None:
                self._keeper = asyncio.ensure_future(self._keep_warm())

    async def prepare_key(self, aik_key: SigningKey | None) -> None:
        """Quote the epochs of ``aik_key`` now (reload: before connections use the new key)."""
        if self.tier is not Tier.CACHED or aik_key is None:
            return
        for hash_name in EPOCH_HASHES:
            # Not a connection: a start or reload is not refused when the queue is full, and
            # quotes a key even if an earlier reload retired it.
            await self._current_epoch(hash_name, aik_key, admit=False)
        self._aik = aik_key
        self._aik_scheme = schemes.schemes_for_key(aik_key)[0]
        current = {(h, _aik_hash(h, aik_key)) for h in EPOCH_HASHES}
        for k in current:
            self._retired.pop(k, None)
        # Every other key seen so far is retired (an epoch or a quote under way for it).
        for k in (*self._epochs, *self._refreshing):
            if k not in current:
                self._retired.pop(k, None)
                self._retired[k] = None  # the latest last
        while len(self._retired) > RETIRED_KEPT:
            self._retired.pop(next(iter(self._retired)))
        now = self._clock()
        for k in [k for k, ep in self._epochs.items() if k not in current]:
            ep = self._epochs[k]
            if k not in self._retired or not ep.start <= now < ep.expires:
                del self._epochs[k]  # expired, or its key forgotten: nobody is served it
        for k in [k for k in self._refresh_failed if k not in current]:
            del self._refresh_failed[k]

    async def close(self) -> None:
        """Stop: no quote starts after this (requests queued or arriving later are refused with
        ``AttestationUnavailable``), and the engine's own tasks end."""
        self._closed = True
        tasks = [
            t for t in (self._keeper, self._batcher, *self._refreshing.values()) if t is not None
        ]
        for t in tasks:
            t.cancel()
        # Their outcomes are theirs; a cancellation of whoever closes still reaches it.
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(AttestationUnavailable("evidence engine closed"))
        self._pending.clear()

    def _current_key_epochs(self, hash_name: str | None) -> list[_Epoch | None]:
        """The current key's epoch for ``hash_name``, or for every suite hash (None)."""
        aik = self._aik
        assert aik is not None
        names = EPOCH_HASHES if hash_name is None else (hash_name,)
        return [self._epochs.get((h, _aik_hash(h, aik))) for h in names]

    def epoch_current(self, hash_name: str | None = None) -> bool:
        """Whether the current key has an epoch a connection would be served now (cached tier):
        quoted, started, not expired — for ``hash_name``, or for every suite hash (None: a
        client's cipher suite picks one). False outside the cached tier."""
        if self._aik is None or self.tier is not Tier.CACHED:
            return False
        now = self._clock()
        return all(
            ep is not None and ep.start <= now < ep.expires
            for ep in self._current_key_epochs(hash_name)
        )

    def epoch_age(self, hash_name: str | None = None) -> float | None:
        """Age of the current key's epoch (seconds) for ``hash_name``, or the oldest of the
        suite hashes' (None); None outside the cached tier or before there is one."""
        if self._aik is None:
            return None
        epochs = self._current_key_epochs(hash_name)
        if any(ep is None for ep in epochs):
            return None
        return self._clock() - min(ep.start for ep in epochs if ep is not None)

    # -- the single-flight gate ----------------------------------------------------------------

    def _admit(self) -> None:
        if self.stats.waiting >= self._max_waiters:
            self.stats.refused_full += 1
            raise AttestationUnavailable(f"quote queue full ({self._max_waiters} waiting)")
        self.stats.waiting += 1
        self._hook("queue_depth", self.stats.waiting)

    def _release(self) -> None:
        self.stats.waiting -= 1
        self._hook("queue_depth", self.stats.waiting)

    async def _quote(self, binding: Binding) -> Evidence:
        async with self._gate:
            if self._closed:  # queued behind the gate when close() came
                raise AttestationUnavailable("evidence engine closed")
            t0 = time.monotonic()
            try:
                # object: what an attester returns is checked below, whatever its annotation
                ev: object = await asyncio.wait_for(self.attester.attest(binding), self._timeout)
            except TimeoutError:
                self._quote_failed(t0)
                raise AttestationUnavailable(
                    f"attester timed out after {self._timeout:g} s"
                ) from None
            except AttestationUnavailable:
                self._quote_failed(t0)
                raise
            except Exception as exc:  # an attester bug must not escape as anything else
                self._quote_failed(t0)
                raise AttestationUnavailable(
                    f"attester failed: {type(exc).__name__}: {exc}"
                ) from None
            if not isinstance(ev, Evidence):  # the same for what it returns, in every tier
                self._quote_failed(t0)
                raise AttestationUnavailable(
                    f"attester {self.attester.name} returned {type(ev).__name__}, not Evidence"
                )
            dt = time.monotonic() - t0
            self.stats.consecutive_failures = 0
            self._hook("quote", self.attester.name, dt, True)
            self.stats.quotes += 1
            self.stats.quote_seconds_total += dt
            self.stats.last_quote_seconds = dt
            return ev

    def _hook(self, name: str, *args: object) -> None:
        """A metrics hook; its failure is logged, never the connection's (nor the TEE's)."""
        if self.hooks is None:
            return
        try:
            getattr(self.hooks, name)(*args)
        except Exception:
            log.exception("evidence engine metrics hook %s failed", name)

    def _quote_failed(self, t0: float) -> None:
        self.stats.quote_failures += 1
        self.stats.consecutive_failures += 1
        self._hook("quote", self.attester.name, time.monotonic() - t0, False)

    # -- batched -----------------------------------------------------------------------------------

    async def _batched(self, binding: Binding) -> bytes:
        self._admit()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[fut] = binding
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.ensure_future(self._drain_batches())
        try:
            return await fut
        finally:
            self._release()
            if fut.cancelled():
                # The client went away: its place in the next batch goes to a live request.
                self._pending.pop(fut, None)

    async def _drain_batches(self) -> None:
        while self._pending:
            taken = list(itertools.islice(self._pending.items(), MAX_TREE))
            for f, _ in taken:
                del self._pending[f]
            batch = [(b, f) for f, b in taken if not f.done()]  # clients gone meanwhile
            if not batch:
                continue
            groups: dict[tuple[str, bytes], list[tuple[Binding, asyncio.Future[bytes]]]] = {}
            for b, f in batch:
                groups.setdefault((b.hash_name, b.aik_hash), []).append((b, f))
            try:
                for (hash_name, aik_hash), members in groups.items():
                    # Clients that went away while an earlier group was quoted cost no quote.
                    live = [(b, f) for b, f in members if not f.done()]
                    if live:
                        await self._quote_group(hash_name, aik_hash, live)
            except asyncio.CancelledError:
                # close(): the members taken out of the queue get an answer too, not silence.
                _fail([f for _, f in batch], "evidence engine closed")
                raise
            except Exception as exc:  # a bug (a hook, say): answered, and the loop goes on
                log.error("batched evidence failed: %s: %s", type(exc).__name__, exc, exc_info=True)
                _fail([f for _, f in batch], f"evidence engine error: {type(exc).__name__}")

    async def _quote_group(
        self, hash_name: str, aik_hash: bytes, members: list[tuple[Binding, asyncio.Future[bytes]]]
    ) -> None:
        root, proofs = merkle.build(hash_name, [b.binder for b, _ in members])
        n = len(members)
        self.stats.last_batch_size = n
        self.stats.max_batch_size = max(self.stats.max_batch_size, n)
        if len(self.stats.batch_sizes) < 100_000:
            self.stats.batch_sizes.append(n)
        self._hook("batch", n)
        try:
            ev = await self._quote(Binding(hash_name, root, aik_hash))
        except AttestationUnavailable as exc:
            _fail([f for _, f in members], str(exc))
            return
        # Byte-identical to encode_cmw(CMWCollection({"evidence", "merkle"})) per member: the
        # quote is the same for the whole batch, so it is encoded once.
        prefix = _batched_cmw_prefix(ev)
        for (_, f), proof in zip(members, proofs, strict=True):
            if f.done():
                continue  # the client went away while we quoted
            try:
                f.set_result(_complete(prefix, merkle.MERKLE_PROOF_MEDIA_TYPE, proof.encode()))
            except AttestationUnavailable as exc:
                f.set_exception(exc)

    # -- cached ------------------------------------------------------------------------------------

    async def _cached(self, binding: Binding, aik_key: SigningKey | None) -> bytes:
        if aik_key is None:
            raise AttestationUnavailable("the cached tier has no AIK")
        ep = await self._current_epoch(binding.hash_name, aik_key)
        scheme = self._aik_scheme if aik_key is self._aik else schemes.schemes_for_key(aik_key)[0]
        sig = schemes.sign(aik_key, scheme, aik_binding_content(binding.binder, ep.digest))
        # Byte-identical to encode_cmw(CMWCollection({"evidence", "epoch", "binding"})): the
        # first two members are the same for the whole epoch, so they are encoded once
        # (_new_epoch) and only the binding record is encoded per connection.
        return _complete(ep.cmw_prefix, AIK_BINDING_MEDIA_TYPE, encode_aik_binding(scheme, sig))

    async def _current_epoch(
        self, hash_name: str, aik_key: SigningKey, *, admit: bool = True
    ) -> _Epoch:
        key = (hash_name, _aik_hash(hash_name, aik_key))
        now = self._clock()
        ep = self._epochs.get(key)
        if admit and key in self._retired and key not in self._refreshing:
            # A connection accepted before a reload replaced its key: the key's last epoch while
            # it lasts, no new quote for it. (A refresh under way when the reload came is
            # awaited below: its epoch is the last one.)
            if ep is not None and ep.start <= now < ep.expires:
                return ep
            raise AttestationUnavailable(
                "a reload replaced the server key of this connection and that key's last "
                "evidence epoch has expired"
            )
        # An epoch that starts after now means the clock was stepped back since it was quoted:
        # relying parties would see it as issued in the future (appraise.py: EPOCH_CLOCK_SKEW),
        # and its refresh point would be as far away as the step; quote a new one instead.
        if ep is not None and ep.start <= now < ep.expires:
            if (
                now >= self._refresh_at(ep)
                and key not in self._refreshing
                and self._backing_off(key) is None
            ):
                self._spawn_refresh(key, aik_key)  # ahead of expiry, in the background
            return ep
        # No epoch, or it expired: never serve stale evidence — wait for a fresh quote.
        task = self._refreshing.get(key)
        if task is None:
            failed = self._backing_off(key) if admit else None
            if failed is not None:
                # A connection does not retry a TEE that just failed (module docstring); start
                # and reload (admit=False) are an operator's explicit request and do.
                raise AttestationUnavailable(failed)
            task = self._spawn_refresh(key, aik_key)
        if admit:
            self._admit()
        try:
            ep = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or current.cancelling() == 0):
                # The refresh was cancelled (close()), not this caller: say so, like a TEE error.
                raise AttestationUnavailable("evidence engine closed") from None
            raise
        finally:
            if admit:
                self._release()
        # The epoch's times were fixed before its quote: a quote slower than the epoch (or a
        # clock step meanwhile) returns one that is already invalid. Never serve it.
        now = self._clock()
        if not ep.start <= now < ep.expires:
            raise AttestationUnavailable(
                f"the fresh epoch [{ep.start}, {ep.expires}) is not valid at {now:.0f}: the quote "
                f"took longer than the epoch ({self._epoch_seconds:g} s) or the clock moved"
            )
        return ep

    def _backing_off(self, key: tuple[str, bytes]) -> str | None:
        """Why no connection may start a refresh of ``key`` now — the last one failed less than
        ``KEEP_WARM_RETRY`` seconds ago (monotonic: a wall-clock step neither extends nor ends
        the wait) — or None."""
        failed = self._refresh_failed.get(key)
        if failed is None:
            return None
        ago = time.monotonic() - failed[0]
        if ago >= KEEP_WARM_RETRY:
            return None
        return (
            f"no current evidence epoch: its refresh failed {ago:.1f} s ago ({failed[1]}); "
            f"retried in {KEEP_WARM_RETRY - ago:.1f} s"
        )

    def _refresh_at(self, ep: _Epoch) -> float:
        return ep.expires - self._refresh_ahead * (ep.expires - ep.start)

    async def _keep_warm(self) -> None:
        """Refresh the current key's epochs at their refresh points, traffic or not; retry a
        failed refresh after ``KEEP_WARM_RETRY`` seconds (never two quotes at once: a refresh is
        the same task a connection would start, through the same gate). The first failure of a
        run of them is a warning, the rest debug, the recovery info."""
        failing = False
        while True:
            wait = KEEP_WARM_RETRY
            for hash_name in EPOCH_HASHES:
                aik = self._aik  # read per hash: a reload may have replaced it meanwhile
                assert aik is not None
                key = (hash_name, _aik_hash(hash_name, aik))
                now = self._clock()
                ep = self._epochs.get(key)
                if ep is not None and ep.start <= now < self._refresh_at(ep):
                    wait = min(wait, self._refresh_at(ep) - now)
                    continue
                task = self._refreshing.get(key) or self._spawn_refresh(key, aik)
                try:
                    await asyncio.shield(task)  # a connection waiting on it is not cancelled
                except Exception as exc:  # the TEE failed: counted by _quote; try again soon
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "refreshing the %s evidence epoch failed (retried every %g s): %s",
                        hash_name,
                        KEEP_WARM_RETRY,
                        exc,
                    )
                    failing = True
                else:
                    if failing:
                        log.info("the %s evidence epoch is refreshed again", hash_name)
                        failing = False
                    wait = 0.0  # look at the other hash (and this one's next point) again
            await asyncio.sleep(max(wait, 0.05))

    def _spawn_refresh(self, key: tuple[str, bytes], aik_key: SigningKey) -> asyncio.Task[_Epoch]:
        task = asyncio.ensure_future(self._new_epoch(key[0], key[1]))
        self._refreshing[key] = task

        def done(t: asyncio.Task[_Epoch]) -> None:
            self._refreshing.pop(key, None)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is None:
                self._epochs[key] = t.result()
                self._refresh_failed.pop(key, None)
            else:
                self._refresh_failed[key] = (time.monotonic(), str(exc))

        task.add_done_callback(done)
        return task

    async def _new_epoch(self, hash_name: str, aik_hash: bytes) -> _Epoch:
        # Whole seconds (the epoch record's unit): start rounded down, the lifetime rounded up,
        # so the record never says less than configured — and never more than a second more,
        # which a client's max_epoch_age (counted from start) would refuse at the end. From the
        # quote, an epoch may live up to a second less; the refresh window (ops/config.py) has
        # that second.
        start = int(self._clock())
        epoch = Epoch(
            start, start + max(1, math.ceil(self._epoch_seconds)), os.urandom(EPOCH_NONCE_LENGTH)
        )
        encoded = epoch.encode()
        digest = epoch_digest(hash_name, encoded)
        evidence = await self._quote(Binding(hash_name, digest, aik_hash))
        self.stats.epochs += 1
        return _Epoch(
            hash_name,
            epoch.start,
            epoch.expires,
            encoded,
            digest,
            evidence,
            _cached_cmw_prefix(evidence, encoded),
        )


def _fail(futures: list[asyncio.Future[bytes]], reason: str) -> None:
    """Answer every still-waiting connection of a batch with ``AttestationUnavailable``."""
    for f in futures:
        if not f.done():
            f.set_exception(AttestationUnavailable(reason))


# (hash name, id(key)) -> (key, H(SPKI)); the key is kept so that its id cannot be reused.
_AIK_HASHES: dict[tuple[str, int], tuple[SigningKey, bytes]] = {}


def _aik_hash(hash_name: str, key: SigningKey) -> bytes:
    """H(DER SubjectPublicKeyInfo of the AIK), memoised per key object (one per identity)."""
    hit = _AIK_HASHES.get((hash_name, id(key)))
    if hit is not None and hit[0] is key:
        return hit[1]
    h = expat_binding.aik_hash(
        hash_name, key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    if len(_AIK_HASHES) > 64:  # keys replaced by reloads: forget them, never grow without bound
        _AIK_HASHES.clear()
    _AIK_HASHES[(hash_name, id(key))] = (key, h)
    return h


def _collection_prefix(head: dict[str, list[object]], last_label: str) -> bytes:
    """CBOR of a CMW collection whose members are ``head`` (in order) and then ``last_label``,
    without the last member's value: the caller appends that value per connection.

    RFC 8949 §3.1: a map of n < 24 pairs starts with the single byte 0xA0 + n; ``head`` is encoded
    as a map of len(head) pairs and its header rewritten to one pair more. Keys are text strings,
    values CMW record arrays (draft-ietf-rats-msg-wrap §3.1).
    """
    n = len(head)
    enc = cbor2.dumps(head)
    if n + 1 > 23 or enc[0] != 0xA0 + n:
        raise AssertionError("unexpected CBOR map header")
    return bytes([0xA0 + n + 1]) + enc[1:] + cbor2.dumps(last_label)


def _complete(prefix: bytes, media_type: str, value: bytes) -> bytes:
    """``prefix`` (``_collection_prefix``) completed with its last member, the record
    ``[media_type, value]``; a CMW the Certificate cannot carry (over ``MAX_CMW_SIZE``, as
    ``encode_cmw`` refuses) leaves that connection without evidence."""
    cmw = prefix + encode_record(media_type, value)
    if len(cmw) > MAX_CMW_SIZE:
        raise AttestationUnavailable(f"CMW of {len(cmw)} bytes exceeds {MAX_CMW_SIZE}")
    return cmw


def _cached_cmw_prefix(evidence: Evidence, encoded_epoch: bytes) -> bytes:
    """The cached tier's collection up to the value of its last member ("binding")."""
    return _collection_prefix(
        {
            "evidence": [evidence.media_type, evidence.data, IND_EVIDENCE],
            "epoch": [EPOCH_MEDIA_TYPE, encoded_epoch],
        },
        "binding",
    )


def _batched_cmw_prefix(evidence: Evidence) -> bytes:
    """The batched tier's collection up to the value of its last member ("merkle")."""
    return _collection_prefix(
        {"evidence": [evidence.media_type, evidence.data, IND_EVIDENCE]}, "merkle"
    )
