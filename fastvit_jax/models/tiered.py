"""A forward that answers before its exact program is compiled: tiered compilation, as JIT VMs do it.

At exact token counts every merging block has its own shape, and XLA compiles each anew: a merged
plan takes several times the dense model's compile (BENCHMARKS.md section 20). One token bucket
with its blocks scanned (merge/buckets.py) compiles about as fast as the dense model, but runs
every block at the full token count. `Runtime(tiered=True)` gets both: calls answer with the
bucketed program while the exact program is traced and compiled in a background thread (started
once the first answer is out, so it does not slow that one down), and use the exact one as soon as
it is ready. The two give the same merges and logits within float rounding
(tests/test_buckets.py), so what a call returns does not depend on which answered it beyond that.

`lower` and `trace` are the exact program's: ahead-of-time users and benchmarks get what runs at
steady state. The exact compile runs one at a time, in one worker thread; a process that exits
while one is in flight waits for it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import jax

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exact-compile")


def signature(args) -> tuple:
    """What an executable is specific to: the arguments' tree, shapes and dtypes."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (tree,) + tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x)))) for x in leaves)


class TieredForward:
    """forward(params, images[, merge_key]) -> logits: `quick` until `exact` is compiled for these
    shapes, then `exact`. Both are jitted functions of the same arguments."""

    def __init__(self, quick, exact):
        self.quick, self.exact = quick, exact
        self._compiled: dict[tuple, Future] = {}
        self._lock = threading.Lock()

    def __call__(self, *args):
        key = signature(args)
        future = self._compiled.get(key)
        if future is not None and future.done() and future.exception() is None:
            return future.result()(*args)
        out = self.quick(*args)
        if future is None:  # after the first answer: a compile beside it would slow it down on a few cores
            jax.block_until_ready(out)
            self.compiling(*args)
        return out

    def compiling(self, *args) -> Future:
        """The exact program's compile for these arguments' shapes, started on first sight."""
        key = signature(args)
        with self._lock:
            if key not in self._compiled:
                shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
                self._compiled[key] = _WORKER.submit(lambda: self.exact.lower(*shapes).compile())
            return self._compiled[key]

    def lower(self, *args, **kw):
        return self.exact.lower(*args, **kw)

    def trace(self, *args, **kw):
        return self.exact.trace(*args, **kw)
