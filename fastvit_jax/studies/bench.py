"""Throughput of the jit-compiled forward: compile time reported apart, median over runs.

`time_forward` times one configuration. `time_round_robin` times several in interleaved rounds, so
a change in machine speed during the run (frequent on shared CPUs) hits all of them alike and the
ratios between them stay sound.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import jax
import numpy as np

from fastvit_jax.util import compile_cache
from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.runtime import Runtime


def forward_runner(config: ViTConfig, params, plan: MergePlan | None, *, batch_size: int = 32,
                   runtime: Runtime = Runtime(), seed: int = 0) -> tuple[Callable, dict]:
    """(run, how): run() does one blocking forward of a random batch, compiled already; how =
    {"trace_s": tracing and lowering to XLA, "compile_s": XLA compiling it (or reading it from the
    persistent cache), "compiled_from": "cache" | "compiled" | "off" (no cache)}."""
    images = jax.device_put(np.random.default_rng(seed).standard_normal(
        (batch_size, config.image_size, config.image_size, 3)).astype(np.float32))
    t0, before = time.perf_counter(), compile_cache.counts()
    lowered = make_forward(config, plan, runtime).lower(params, images)
    t1 = time.perf_counter()
    forward = lowered.compile()
    how = {"trace_s": t1 - t0, "compile_s": time.perf_counter() - t1, "compiled_from": compile_cache.served(before)}

    def run():
        jax.block_until_ready(forward(params, images))

    run()
    return run, how


def warm_up(run: Callable, warmup: int = 2, warmup_s: float = 3.0) -> None:
    """At least `warmup` calls and `warmup_s` seconds: on CPU the first seconds of a process run
    measurably slower (thread pools, allocator), which would bias whatever is timed first."""
    t_end, done = time.perf_counter() + warmup_s, 0
    while done < warmup or time.perf_counter() < t_end:
        run()
        done += 1


def time_round_robin(runners: dict, rounds: int, warmup: int = 2, warmup_s: float = 3.0,
                     progress: Callable[[int], None] | None = None) -> dict:
    """{name: [seconds per call, one per round]}: each round calls every runner once, in order."""
    for run in runners.values():
        warm_up(run, warmup, warmup_s)
    times = {name: [] for name in runners}
    for i in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
        if progress:
            progress(i)
    return times


def speed_result(config: ViTConfig, plan: MergePlan | None, times: list, compiled: dict, *,
                 batch_size: int, runtime: Runtime = Runtime()) -> dict:
    """One timed forward's row; compiled: forward_runner's trace_s, compile_s and compiled_from."""
    med = statistics.median(times)
    rt = runtime.resolved(config)
    return {"images_per_s": batch_size / med, "gflops": gflops(config, plan), **compiled,
            "median_s": med, "runs": len(times), "batch_size": batch_size, "dtype": rt.dtype,
            "examples_per_step": rt.examples_per_step, "attention": rt.attention,
            "merge_impl": rt.merge_impl if plan is not None and not plan.is_dense else None}


def build_runners(config: ViTConfig, params, jobs: dict, *, seed: int = 0, compile_threads: int | None = None) -> dict:
    """{key: forward_runner's (run, how)} for {key: (plan, batch_size, runtime)}, compiled in threads:
    XLA compiles outside the GIL, and a grid of merged ViTs compiles for minutes one at a time on a
    GPU machine. compile_s then includes waiting for a core. Everything is compiled before anything
    is timed, so no compile competes with a timed round."""
    build = lambda key: forward_runner(config, params, jobs[key][0], batch_size=jobs[key][1], runtime=jobs[key][2],
                                       seed=seed)
    with ThreadPoolExecutor(max(1, min(len(jobs), compile_threads or os.cpu_count() or 1))) as pool:
        return dict(zip(jobs, pool.map(build, jobs)))


def time_forwards(config: ViTConfig, params, plans: dict, *, batch_size: int = 32, runs: int = 50,
                  warmup: int = 2, warmup_s: float = 3.0, runtime: Runtime = Runtime(), seed: int = 0,
                  runtimes: dict | None = None, others: dict | None = None, progress=None,
                  compile_threads: int | None = None, built: dict | None = None) -> dict:
    """{name: speed_result} for {name: plan or None}, timed round-robin on the same random batch,
    each run as `runtime` says (or as runtimes[name], to time implementations side by side).

    others: {name: run()} timed in the same rounds (a peer library's model); each gets
    {"images_per_s", "median_s", "runs"} in the result. built: {name: (run, how)} compiled already
    (build_runners), for a caller that compiles several batch sizes at once."""
    runtimes = {name: (runtimes or {}).get(name, runtime) for name in plans}
    if built is None:
        built = build_runners(config, params, {n: (plans[n], batch_size, runtimes[n]) for n in plans}, seed=seed,
                              compile_threads=compile_threads)
    runners = {name: run for name, (run, _) in built.items()}
    runners.update(others or {})
    times = time_round_robin(runners, runs, warmup, warmup_s, progress)
    results = {name: speed_result(config, plan, times[name], built[name][1], batch_size=batch_size,
                                  runtime=runtimes[name])
               for name, plan in plans.items()}
    for name in others or {}:
        med = statistics.median(times[name])
        results[name] = {"images_per_s": batch_size / med, "median_s": med, "runs": len(times[name])}
    return results


def time_forward(config: ViTConfig, params, plan: MergePlan | None, **kw) -> dict:
    """images_per_s (median run), compile_s (first call), gflops (analytic, per image).
    Keywords as `time_forwards`."""
    return time_forwards(config, params, {"forward": plan}, **kw)["forward"]


def compare(config: ViTConfig, params, plan: MergePlan, **kw) -> dict:
    """Dense vs merged, timed round-robin: measured speedup and the ideal (FLOPs ratio) speedup."""
    res = time_forwards(config, params, {"dense": None, "merged": plan}, **kw)
    dense, merged = res["dense"], res["merged"]
    return {"dense": dense, "merged": merged,
            "speedup": merged["images_per_s"] / dense["images_per_s"],
            "ideal_speedup": dense["gflops"] / merged["gflops"],
            "clamped": plan.clamped, "options": plan.options.to_dict(), "plan": plan.summary()}


def compare_sizes(config: ViTConfig, params, plan: MergePlan, sizes: list[int], *, runs: int,
                  runtime: Runtime = Runtime(), bar=None) -> list[dict]:
    """`compare` at each batch size. Every size's dense and merged programs compile together first,
    then the timed rounds run alone: a compile in the background would slow the rounds it overlapped.
    bar: a tqdm bar, told when compiling ends and advanced once per timed round."""
    jobs = {(size, name): (p, size, runtime) for size in sizes for name, p in (("dense", None), ("merged", plan))}
    built = build_runners(config, params, jobs)
    if bar is not None:
        bar.set_description("bench: timed rounds")
    return [compare(config, params, plan, batch_size=size, runs=runs, runtime=runtime,
                    progress=None if bar is None else (lambda i: bar.update(1)),
                    built={name: built[(size, name)] for name in ("dense", "merged")}) for size in sizes]
