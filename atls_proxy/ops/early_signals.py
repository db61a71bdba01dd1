"""Signals that arrive before the runtime installs its handlers.

``serve`` and ``connect`` install these first thing, before they read the configuration and
build the service (opening a TPM can take up to its ``open_timeout``): until
``Runtime.run`` replaces them, a SIGHUP or SIGUSR1 is remembered instead of taking its default
action, which would end the process. ``Runtime(early_hup=..., early_usr1=...)`` then honours it:
one reload, one status line. Standard library only, so that installing them costs nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Callable


def _remember_early(sig: signal.Signals) -> Callable[[], bool]:
    """Remember ``sig`` until someone installs another handler; the returned callable says
    whether one arrived."""
    got = [False]

    def on_signal(signum: int, frame: object) -> None:
        got[0] = True

    signal.signal(sig, on_signal)
    return lambda: got[0]


def remember_early_hup() -> Callable[[], bool]:
    """A SIGHUP before the runtime runs: honoured by one reload once the service listens."""
    return _remember_early(signal.SIGHUP)


def remember_early_usr1() -> Callable[[], bool]:
    """A SIGUSR1 before the runtime runs: answered by one status line once it has the service."""
    return _remember_early(signal.SIGUSR1)
