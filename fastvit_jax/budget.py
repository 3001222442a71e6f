"""Budget-driven compression: the smallest r whose plan meets a GFLOPs or speedup target."""

from __future__ import annotations

import warnings

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.flops import gflops
from fastvit_jax.merge.plan import MergePlan, make_plan


def _plan(config: ViTConfig, method: str, r: int, plan_kw: dict) -> MergePlan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make_plan(config.depth, config.grid, method, r, **plan_kw)


def smallest_r(config: ViTConfig, method: str, meets, plan_kw: dict | None = None, r_max: int | None = None) -> MergePlan:
    """Binary search over r for the first plan with meets(plan) True (cost falls as r grows)."""
    plan_kw = plan_kw or {}
    r_max = r_max or config.num_patches // 2
    if meets(_plan(config, method, 0, plan_kw)):
        return _plan(config, method, 0, plan_kw)
    if not meets(_plan(config, method, r_max, plan_kw)):
        raise FastViTError(f"{method}: no r <= {r_max} meets the budget (best plan: "
                           f"{gflops(config, _plan(config, method, r_max, plan_kw)):.3f} GFLOPs)")
    lo, hi = 0, r_max  # meets(lo) False, meets(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(_plan(config, method, mid, plan_kw)):
            hi = mid
        else:
            lo = mid
    return _plan(config, method, hi, plan_kw)


def plan_for_gflops(config: ViTConfig, method: str, target: float, plan_kw: dict | None = None) -> MergePlan:
    """Analytic: no data, no timing."""
    return smallest_r(config, method, lambda p: gflops(config, p) <= target, plan_kw)


def plan_for_speedup(config: ViTConfig, method: str, target: float, params=None, *, measured: bool = True,
                     plan_kw: dict | None = None, batch_size: int = 32, runs: int = 5) -> MergePlan:
    """Smallest r with speedup >= target: measured on this machine (jit forward) or by the FLOPs ratio."""
    dense = gflops(config)
    if not measured:
        return smallest_r(config, method, lambda p: dense / gflops(config, p) >= target, plan_kw)
    from fastvit_jax.bench import time_forward

    base = time_forward(config, params, None, batch_size=batch_size, runs=runs)["images_per_s"]

    def meets(plan):
        return time_forward(config, params, plan, batch_size=batch_size, runs=runs)["images_per_s"] >= target * base

    return smallest_r(config, method, meets, plan_kw)
