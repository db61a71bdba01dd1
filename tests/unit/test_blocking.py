"""Blocking device calls (atls_proxy/attest/blocking.py): the synchronous deadline helper and the
delivery of every outcome of a daemon-thread call to its future."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from atls_proxy.attest.blocking import SerialThreadCalls, call_with_deadline, run_in_daemon_thread
from atls_proxy.errors import AttestationUnavailable

# --- call_with_deadline ------------------------------------------------------------------------


def test_call_with_deadline_returns_the_result_in_a_daemon_thread() -> None:
    seen: list[threading.Thread] = []

    def fn() -> int:
        seen.append(threading.current_thread())
        return 42

    assert call_with_deadline(fn, 5, "dev-call") == 42
    (thread,) = seen
    assert thread is not threading.current_thread()
    assert thread.daemon and thread.name == "dev-call"


def test_call_with_deadline_re_raises_the_exception() -> None:
    def fn() -> int:
        raise ValueError("device said no")

    with pytest.raises(ValueError, match="device said no"):
        call_with_deadline(fn, 5, "dev-call")

    def stop() -> int:
        raise StopIteration  # re-raised as it is: no future is involved here

    with pytest.raises(StopIteration):
        call_with_deadline(stop, 5, "dev-call")


def test_call_with_deadline_times_out_and_leaves_the_call_running() -> None:
    release = threading.Event()
    finished = threading.Event()

    def hang() -> None:
        release.wait(10)
        finished.set()

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"dev-call: no outcome within 0.2 s"):
        call_with_deadline(hang, 0.2, "dev-call")
    assert 0.15 < time.monotonic() - t0 < 2
    assert not finished.is_set()  # abandoned, not interrupted
    release.set()
    assert finished.wait(5)


# --- run_in_daemon_thread / SerialThreadCalls: every outcome completes the future -------------


def _raising(exc: BaseException) -> Callable[[], int]:
    def fn() -> int:
        raise exc

    return fn


@pytest.mark.parametrize("exc", [StopIteration(), KeyboardInterrupt(), SystemExit(3)])
async def test_a_base_exception_is_delivered_as_attestation_unavailable(
    exc: BaseException,
) -> None:
    # Before the fix, StopIteration made set_exception raise TypeError in the loop callback (the
    # future never completed: this wait_for timed out), and KeyboardInterrupt/SystemExit escaped
    # from the awaiting task.
    future = run_in_daemon_thread(_raising(exc), "dev-call")
    with pytest.raises(AttestationUnavailable) as e:
        await asyncio.wait_for(future, 5)
    name = type(exc).__name__
    assert str(e.value) == f"dev-call: the device call raised {name}"
    assert e.value.__cause__ is exc


async def test_an_ordinary_exception_is_delivered_unchanged() -> None:
    error = OSError("gone")
    with pytest.raises(OSError) as e:
        await asyncio.wait_for(run_in_daemon_thread(_raising(error), "dev-call"), 5)
    assert e.value is error


async def test_serial_calls_go_on_after_a_call_raising_stop_iteration() -> None:
    """/tmp/review_engine/r7_blocking_stopiteration.py: the wedge this fixes."""
    calls = SerialThreadCalls("x", "dev-call", "waiting for the lock", "waiting for an abandoned")
    with pytest.raises(AttestationUnavailable, match="raised StopIteration"):
        async with asyncio.timeout(5):
            await calls.call(_raising(StopIteration()))
    async with asyncio.timeout(5):  # before the fix: "waiting for an abandoned" call forever
        assert await calls.call(lambda: 42) == 42
        assert await calls.call(lambda: 43) == 43
