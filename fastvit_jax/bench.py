"""Throughput of the jit-compiled forward: compile time reported apart, median over runs."""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from fastvit_jax.config import ViTConfig
from fastvit_jax.flops import gflops
from fastvit_jax.forward import make_forward, resolve_examples_per_step
from fastvit_jax.merge.plan import MergePlan


def time_forward(config: ViTConfig, params, plan: MergePlan | None, *, batch_size: int = 32, runs: int = 50,
                 warmup: int = 2, warmup_s: float = 3.0, dtype: str = "float32", seed: int = 0,
                 examples_per_step="auto") -> dict:
    """images_per_s (median run), compile_s (first call), gflops (analytic, per image).

    Warm-up runs at least `warmup` calls and `warmup_s` seconds: on CPU the first seconds of a
    process run measurably slower (thread pools, allocator), which would bias whatever is timed first."""
    forward = make_forward(config, plan, dtype, examples_per_step)
    images = np.random.default_rng(seed).standard_normal(
        (batch_size, config.image_size, config.image_size, 3)).astype(np.float32)
    images = jax.device_put(images)
    t0 = time.perf_counter()
    jax.block_until_ready(forward(params, images))
    compile_s = time.perf_counter() - t0
    t_end, done = time.perf_counter() + warmup_s, 1
    while done < warmup or time.perf_counter() < t_end:
        jax.block_until_ready(forward(params, images))
        done += 1
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(forward(params, images))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"images_per_s": batch_size / med, "gflops": gflops(config, plan), "compile_s": compile_s,
            "median_s": med, "runs": runs, "batch_size": batch_size, "dtype": dtype,
            "examples_per_step": resolve_examples_per_step(examples_per_step, config, dtype)}


def compare(config: ViTConfig, params, plan: MergePlan, **kw) -> dict:
    """Dense vs merged side by side: measured speedup and the ideal (FLOPs ratio) speedup."""
    dense = time_forward(config, params, None, **kw)
    merged = time_forward(config, params, plan, **kw)
    return {"dense": dense, "merged": merged,
            "speedup": merged["images_per_s"] / dense["images_per_s"],
            "ideal_speedup": dense["gflops"] / merged["gflops"],
            "plan": plan.summary()}
