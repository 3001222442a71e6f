"""A persistent compilation cache, on by default: every compiled forward is written to disk and a
later process that compiles the same program (a sweep, tune or bench rerun; the same plan in
another command) reads it back instead of compiling.

Where: `--compile-cache DIR`, else $FASTVIT_COMPILE_CACHE, else `$FASTVIT_CACHE/xla` (default
~/.cache/fastvit_jax/xla); "off" disables it. A cache directory JAX was already given (the
JAX_COMPILATION_CACHE_DIR environment variable, jax.config) is left as it is. On GPUs XLA's own
caches (autotuning results, kernels) go to the same folder, so a merged model's new GEMM shapes
are autotuned once.

`counts()` says how many compilations were served from the cache and how many were not, per
thread (benchmarks compile several plans in threads), so results can say whether a compile_s came
from the cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax

from fastvit_jax.util.cache import cache_dir

ENV = "FASTVIT_COMPILE_CACHE"
MIN_COMPILE_SECONDS = 0.2  # smaller programs compile faster than they load
_local = threading.local()
_listening = False


def folder(choice: str | None = None) -> Path | None:
    """The cache folder for `choice` (a path, "off" or None = the environment's / the default)."""
    choice = choice or os.environ.get(ENV)
    if choice == "off":
        return None
    return Path(choice) if choice else cache_dir() / "xla"


def enable(choice: str | None = None) -> Path | None:
    """Turn the cache on (idempotent); returns the folder in use, or None when off."""
    _listen()
    if jax.config.jax_compilation_cache_dir:  # set by the user or the environment: theirs
        return Path(jax.config.jax_compilation_cache_dir)
    path = folder(choice)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # XLA's GPU autotune and kernel caches too; CPU compilers ignore these options. (Asking for the
    # backend here would initialise it before a multi-process run's jax.distributed.initialize.)
    jax.config.update("jax_persistent_cache_enable_xla_caches", "all")
    return path


def _listen() -> None:
    global _listening
    if _listening:
        return
    _listening = True

    def count(event: str, **_):
        if event in ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"):
            key = "hits" if event.endswith("hits") else "misses"
            setattr(_local, key, getattr(_local, key, 0) + 1)

    jax.monitoring.register_event_listener(count)


def counts() -> dict:
    """{"hits", "misses"} of this thread's compilations so far (both 0 while the cache is off)."""
    return {"hits": getattr(_local, "hits", 0), "misses": getattr(_local, "misses", 0)}


def served(before: dict) -> str:
    """What happened since `before` (a `counts()`): "cache" when everything came from the cache,
    "compiled" when something was compiled, "off" when the cache saw nothing."""
    now = counts()
    hits, misses = now["hits"] - before["hits"], now["misses"] - before["misses"]
    return "compiled" if misses else "cache" if hits else "off"
