"""``bench attest``'s closed loop: what it counts and when it refuses to report (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from atls_proxy.bench import attest


async def test_a_worker_dying_of_an_unexpected_error_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that died silently would lower the concurrency and the reported rate with it."""

    async def broken(opener: Any, request: bytes) -> int:
        raise ValueError("a bug in the generator")

    monkeypatch.setattr(attest, "request_close", broken)
    result = attest.Result("off", 2, 0.2, 0)
    with pytest.raises(RuntimeError, match="worker failed") as e:
        await attest._load("off", None, 2, 0.0, 0.2, result, lambda: None)  # type: ignore[arg-type]
    assert isinstance(e.value.__cause__, ValueError)


async def test_connection_errors_are_counted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def refused(opener: Any, request: bytes) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(attest, "request_close", refused)
    result = attest.Result("off", 2, 0.2, 0)
    await attest._load("off", None, 2, 0.0, 0.2, result, lambda: None)  # type: ignore[arg-type]
    assert calls > 0 and result.errors > 0 and result.connections == 0
    assert result.error_samples[0].startswith("ConnectionRefusedError")
