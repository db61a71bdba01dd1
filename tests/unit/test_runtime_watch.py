"""The reload watcher's file listing survives a service whose listing fails (a policy being
edited into something that does not parse): the watcher task must not die, or every later change
would go unnoticed (ops/runtime.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from atls_proxy.ops.config import OpsConfig
from atls_proxy.ops.metrics import Metrics
from atls_proxy.ops.runtime import Runtime, Service


class Listing:
    def __init__(self, files: list[Path] | Exception) -> None:
        self.files = files

    def watched_files(self) -> list[Path]:
        if isinstance(self.files, Exception):
            raise self.files
        return self.files


def _runtime(service: Listing, config: Path) -> Runtime:
    return Runtime(cast(Service, cast(Any, service)), OpsConfig(), Metrics(), config_path=config)


def test_the_listing_is_the_services(tmp_path: Path) -> None:
    files = [tmp_path / "a.toml", tmp_path / "policy.toml"]
    assert _runtime(Listing(files), tmp_path / "a.toml")._watched() == files


@pytest.mark.parametrize("error", [TypeError("unhashable"), RecursionError(), ValueError("x")])
def test_a_failing_listing_falls_back_to_the_configuration_file(
    tmp_path: Path, error: Exception
) -> None:
    config = tmp_path / "connect.toml"
    assert _runtime(Listing(error), config)._watched() == [config]


def test_a_listing_that_starts_failing_keeps_the_last_list_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = [tmp_path / "connect.toml", tmp_path / "policy.toml"]
    listing = Listing(files)
    rt = _runtime(listing, files[0])
    assert rt._watched() == files
    listing.files = TypeError("unhashable")
    with caplog.at_level("ERROR", logger="atls_proxy"):
        for _ in range(5):  # five watcher intervals
            assert rt._watched() == files  # unchanged: no false "file change"
    assert caplog.text.count("listing the watched files failed") == 1


async def test_runtime_replays_a_sighup_that_came_while_the_service_was_built(
    tmp_path: Path,
) -> None:
    rt = Runtime(
        cast(Service, cast(Any, Listing([tmp_path / "a.toml"]))),
        OpsConfig(),
        Metrics(),
        config_path=tmp_path / "a.toml",
        early_hup=lambda: True,
    )
    replayed: list[bool] = []
    rt._on_hup_during_start = lambda: replayed.append(True)  # type: ignore[method-assign]

    class Started(Exception):
        pass

    async def no_start(loop: object) -> int:
        raise Started

    rt._run = no_start  # type: ignore[method-assign,assignment]
    with pytest.raises(Started):
        await rt.run()
    assert replayed == [True]
