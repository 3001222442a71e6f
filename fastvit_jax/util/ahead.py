"""Compile what a command runs next while it runs the current one.

A sweep or a tune runs a known list of plans, one after another, and a new plan's first call is
mostly XLA compiling (BENCHMARKS.md section 18). XLA compiles outside the GIL, so a worker thread can
build the next plans' executables while the main thread evaluates the current one. At most `depth`
compiles are in flight (each finished executable holds memory until it is used); depth 0 compiles
in the calling thread, exactly as it would without this. The results do not depend on the depth:
the same program runs either way.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterable


def default_depth() -> int:
    """Plans compiled ahead: $FASTVIT_COMPILE_AHEAD, else one (XLA already spreads one compile over
    the cores it has; one ahead overlaps compiling with evaluating)."""
    value = os.environ.get("FASTVIT_COMPILE_AHEAD", "1")
    return max(0, int(value)) if value.isdigit() else 1


class CompileAhead:
    """build(key) -> executable, for `keys` in the order they will be asked for (`get`)."""

    def __init__(self, build: Callable, keys: Iterable[Hashable], depth: int | None = None):
        self.build, self.keys = build, list(dict.fromkeys(keys))
        self.depth = default_depth() if depth is None else depth
        self.pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="compile") if self.depth else None
        self.futures: dict[Hashable, Future] = {}
        self.started = 0  # keys[:started] have been submitted

    def in_flight(self) -> int:
        return sum(not f.done() for f in self.futures.values())

    def get(self, key: Hashable):
        """The executable for `key`, starting the compiles of the next `depth` keys."""
        if self.pool is None or key not in self.keys:
            return self.build(key)
        upto = self.keys.index(key) + self.depth
        while self.started < len(self.keys) and self.started <= upto:
            k = self.keys[self.started]
            self.futures[k] = self.pool.submit(self.build, k)
            self.started += 1
        future = self.futures.pop(key, None)
        return self.build(key) if future is None else future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.futures.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
