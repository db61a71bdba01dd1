"""Keep the results of a pure function of short bytes: what a peer sends the same on every connection.

A client sees the same server certificate, and a server the same request extensions and
signature_algorithms list, on every connection; parsing them once is enough. ``keep_short`` wraps
such a function (its first argument the bytes, the others hashable) in an LRU memo that

* keeps at most ``maxsize`` results (the least recently used goes first),
* keeps nothing for input longer than ``limit`` bytes (a peer that sends large or ever-different
  input gets it parsed every time, never held), and
* keeps no failure: an input that raises raises again on the next call.

Results are shared between callers, so the wrapped function must return immutable values (or
values no caller changes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class Kept(Protocol[P, R]):
    """The wrapped function, with its memo's ``cache_info`` / ``cache_clear`` (for tests)."""

    def __call__(self, data: bytes, /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def cache_info(self) -> functools._CacheInfo: ...

    def cache_clear(self) -> None: ...


def keep_short(
    limit: int, maxsize: int
) -> Callable[[Callable[Concatenate[bytes, P], R]], Kept[P, R]]:
    def wrap(fn: Callable[Concatenate[bytes, P], R]) -> Kept[P, R]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        # lru_cache types its arguments as Hashable, which P cannot say; they are (module docstring).
        kept = cast("Callable[Concatenate[bytes, P], R]", cached)

        @functools.wraps(fn)
        def call(data: bytes, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if len(data) <= limit:
                return kept(data, *args, **kwargs)
            return fn(data, *args, **kwargs)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap
