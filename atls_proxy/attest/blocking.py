"""Blocking device calls (a configfs write, a TPM command) from the event loop, one at a time.

Theory of operation
-------------------
A TEE or TPM call can block for seconds or forever (a dead socket, a stuck driver), must never
run twice at once (parallel quote requests have crashed TDs; ESAPI is not thread-safe) and must
not block the event loop. ``SerialThreadCalls.call(fn)`` therefore

* takes an asyncio lock, so callers queue;
* runs ``fn`` in a new *daemon* thread (unlike ``asyncio.to_thread`` it never delays interpreter
  exit when the call hangs) and awaits its outcome through ``asyncio.shield``: a caller that
  times out or is cancelled goes away, but the call is not forgotten;
* makes the next caller wait for such an abandoned call before it starts another one (the device
  is still busy with it). A caller passes its own ``CallPhase``, which names the step *its* call
  is at (waiting for the lock, for an abandoned call, or running), for its time-out message: the
  steps of one caller are never reported as another's.

The caller puts ``call`` under its own ``asyncio.timeout``. A call that ends in a
``BaseException`` that is not an ``Exception`` (or in ``StopIteration``, which a future refuses)
is delivered as ``AttestationUnavailable``, so its future always completes.

``call_with_deadline(fn, timeout, name)`` is the synchronous counterpart for code outside the
event loop (opening a device at start-up): ``fn`` in a daemon thread, waited for at most
``timeout`` seconds, then ``TimeoutError`` while the abandoned call runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from atls_proxy.errors import AttestationUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread; the returned future (of the running loop) gets its
    outcome."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            if isinstance(error, StopIteration) or not isinstance(error, Exception):
                # set_exception raises TypeError for StopIteration (the future would never
                # complete and SerialThreadCalls would wait for it forever), and a
                # KeyboardInterrupt/SystemExit set on a future escapes from the event loop when
                # awaited: both become an ordinary failure of this call.
                wrapped = AttestationUnavailable(
                    f"{name}: the device call raised {type(error).__name__}"
                )
                wrapped.__cause__ = error
                error = wrapped
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        # RuntimeError: the loop closed while the call was running; nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def call_with_deadline(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` in a new daemon thread named ``name``, waited for at most ``timeout`` seconds
    (blocking): its result, or its exception re-raised; ``TimeoutError`` on expiry, while ``fn``
    runs on in its thread (a daemon: it never delays interpreter exit)."""
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []  # (True, result) or (False, exception)

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{name}: no outcome within {timeout:g} s")
    ok, value = outcome[0]
    if not ok:
        raise cast(BaseException, value)
    return cast(T, value)


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # A call abandoned by its caller still finishes; read its exception so asyncio does not log
    # "exception was never retrieved".
    if not future.cancelled():
        future.exception()


RUNNING_PHASE = "quoting"


class CallPhase:
    """The step one ``SerialThreadCalls.call`` is at, for its caller's time-out message."""

    __slots__ = ("value",)

    def __init__(self, value: str = "") -> None:
        self.value = value


class SerialThreadCalls:
    """One blocking call at a time, each in a daemon thread (module docstring)."""

    def __init__(self, what: str, thread_name: str, lock_phase: str, abandoned_phase: str) -> None:
        self.what = what  # prefix of error messages, e.g. "tpm"
        self.thread_name = thread_name
        self._lock_phase = lock_phase
        self._abandoned_phase = abandoned_phase
        self._lock: asyncio.Lock | None = None  # made on first use, in the caller's loop
        self._inflight: asyncio.Future[Any] | None = None

    async def call(
        self,
        fn: Callable[[], T],
        on_abandon: Callable[[], None] | None = None,
        phase: CallPhase | None = None,
    ) -> T:
        """``fn()`` in a daemon thread. ``on_abandon`` runs when this caller leaves (time-out,
        cancellation) while the call still runs — e.g. to tell it to stop retrying. ``phase``,
        when given, follows this call's step: the lock phase, the abandoned-call phase, then
        ``RUNNING_PHASE``."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if phase is None:
            phase = CallPhase()
        phase.value = self._lock_phase
        async with self._lock:
            previous = self._inflight
            if previous is not None and not previous.done():
                if previous.get_loop() is not asyncio.get_running_loop():
                    raise AttestationUnavailable(
                        f"{self.what}: a call started on another event loop is still running"
                    )
                phase.value = self._abandoned_phase
                log.warning(
                    "%s: a previous call (its caller gave up) is still running; waiting for it "
                    "rather than starting a second one",
                    self.what,
                )
                await asyncio.wait({previous})
            phase.value = RUNNING_PHASE
            future = run_in_daemon_thread(fn, self.thread_name)
            future.add_done_callback(_consume_outcome)
            self._inflight = future
            try:
                # shield: a time-out or cancellation of this caller must not forget the call.
                return await asyncio.shield(future)
            except BaseException:
                if on_abandon is not None and not future.done():
                    on_abandon()
                raise
