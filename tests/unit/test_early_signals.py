"""ops/early_signals.py: SIGHUP and SIGUSR1 before the runtime's handlers are remembered."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from atls_proxy.ops.early_signals import remember_early_hup, remember_early_usr1


@pytest.mark.parametrize(
    ("sig", "remember"),
    [(signal.SIGHUP, remember_early_hup), (signal.SIGUSR1, remember_early_usr1)],
    ids=["SIGHUP", "SIGUSR1"],
)
def test_a_signal_while_the_service_is_built_is_remembered_not_fatal(
    sig: signal.Signals, remember: Callable[[], Callable[[], bool]]
) -> None:
    previous = signal.getsignal(sig)
    try:
        early = remember()
        assert not early()
        os.kill(os.getpid(), sig)  # the default action would end this process
        assert early()
    finally:
        signal.signal(sig, previous)
