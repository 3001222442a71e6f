"""Budget-driven compression: the least reduction whose plan meets a GFLOPs or speedup target.

Every search takes MergeOptions (the method, its schedule and all other settings) and returns the
same options with the schedule's knob chosen: r for a constant or (r, inflect) schedule, the keep
ratio for a keep-ratio schedule (options with `keep` set). An explicit r list has no knob.
"""

from __future__ import annotations

from typing import Callable

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import gflops
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.merge.methods import MERGING
from fastvit_jax.studies import bench  # bench.time_forward looked up per call (tests replace it)
from fastvit_jax.models.vit import init_params


KEEP_STEP = 1e-4  # keep ratios are placed on this grid (plan files and rows stay readable)


def largest_keep(config: ViTConfig, options: MergeOptions, meets: Callable[[MergePlan], bool]) -> MergeOptions:
    """Binary search over the keep ratio for the largest one whose plan meets the budget (cost
    falls as keep falls)."""
    plan = lambda k: make_plan(config, options.replace(keep=k))  # noqa: E731
    if meets(plan(1.0)):
        return options.replace(keep=1.0)
    lo, hi = 1, int(round(1 / KEEP_STEP))  # in steps: meets(lo) True, meets(hi) False
    if not meets(plan(lo * KEEP_STEP)):
        raise FastViTError(f"{options.method}: no keep ratio meets the budget (best plan: "
                           f"{gflops(config, plan(lo * KEEP_STEP)):.3f} GFLOPs)")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(plan(mid * KEEP_STEP)):
            lo = mid
        else:
            hi = mid
    return options.replace(keep=round(lo * KEEP_STEP, 6))


def smallest_r(config: ViTConfig, options: MergeOptions, meets: Callable[[MergePlan], bool],
               r_max: int | None = None) -> MergeOptions:
    """Binary search over r for the first plan with meets(plan) True (cost falls as r grows); with a
    keep-ratio schedule, over the keep ratio instead."""

    if options.method == "none":
        raise FastViTError(f"--target-gflops/--target-speedup need a merging --method ({', '.join(MERGING)})")
    if options.r_list is not None:
        raise FastViTError("an explicit --r-list has no knob for a budget to set; give --r, --keep or --inflect")
    if options.keep is not None:
        return largest_keep(config, options, meets)
    r_max = r_max or config.num_patches // 2
    plan = lambda r: make_plan(config, options.replace(r=r))  # noqa: E731
    if meets(plan(0)):
        return options.replace(r=0)
    if not meets(plan(r_max)):
        raise FastViTError(f"{options.method}: no r <= {r_max} meets the budget (best plan: "
                           f"{gflops(config, plan(r_max)):.3f} GFLOPs)")
    lo, hi = 0, r_max  # meets(lo) False, meets(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(plan(mid)):
            hi = mid
        else:
            lo = mid
    if options.takes_fractional_r:
        return options.replace(r=fractional_r(plan, meets, hi))
    return options.replace(r=hi)


R_STEP = 100  # fractional r on a grid of hundredths (plan files and rows stay readable)


def fractional_r(plan: Callable[[float], MergePlan], meets: Callable[[MergePlan], bool], r: int) -> float:
    """The smallest r in (r - 1, r] on the R_STEP grid whose aligned plan meets the budget, given
    that r meets it and r - 1 does not. A whole r moves every aligned count by a multiple of K at
    once (ToMe r=16 on 197 tokens ends each block 3 over a multiple of 8, so every count rounds the
    same way); a fractional r rounds some blocks up and some down, which fills the budget
    (BENCHMARKS.md section 13). Cost only falls as r grows, so bisection finds it."""
    lo, hi = (r - 1) * R_STEP, r * R_STEP  # in steps: meets(lo) False, meets(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(plan(mid / R_STEP)):
            hi = mid
        else:
            lo = mid
    return hi // R_STEP if hi % R_STEP == 0 else hi / R_STEP


def options_for_gflops(config: ViTConfig, options: MergeOptions, target: float) -> MergeOptions:
    """Analytic: no data, no timing."""
    return smallest_r(config, options, lambda p: gflops(config, p) <= target)


def options_for_speedup(config: ViTConfig, options: MergeOptions, target: float, params=None, *,
                        measured: bool = True, batch_size: int = 32, runs: int = 5) -> MergeOptions:
    """Smallest r with speedup >= target: measured on this machine (jit forward) or by the FLOPs ratio.
    Measuring needs params (random ones do: the time does not depend on the values)."""
    dense = gflops(config)
    if not measured:
        return smallest_r(config, options, lambda p: dense / gflops(config, p) >= target)

    if params is None:

        params = init_params(config)
    base = bench.time_forward(config, params, None, batch_size=batch_size, runs=runs)["images_per_s"]

    def meets(plan):
        return bench.time_forward(config, params, plan, batch_size=batch_size, runs=runs)["images_per_s"] >= target * base

    return smallest_r(config, options, meets)


def options_for_target(config: ViTConfig, options: MergeOptions, *, gflops_target: float | None = None,
                       speedup_target: float | None = None, measured: bool = True, params=None) -> MergeOptions:
    """options unchanged without a target; else r chosen for the GFLOPs or the speedup target."""
    if gflops_target is not None:
        return options_for_gflops(config, options, gflops_target)
    if speedup_target is not None:
        return options_for_speedup(config, options, speedup_target, params, measured=measured)
    return options
