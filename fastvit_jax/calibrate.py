"""Similarity thresholds calibrated on images into a static schedule (ATM's thresholds, static).

ATM merges, in block l, every pair whose similarity reaches theta_l, a number that varies per image
and per batch. A compiled forward needs static token counts, so the counts are measured here on
calibration images, block after block: block l's count on each image is taken from the model with
the r already chosen for blocks 0 .. l-1 (its tokens as they would be), and r_l is a quantile
(default the median) of the counts over the images. The result is an explicit schedule (`r_list`)
that plan files store and every command runs.

For a GFLOPs budget, the threshold level alpha is bisected: the most conservative thresholds (the
highest alpha) whose calibrated plan stays within the budget.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from fastvit_jax.errors import FastViTError
from fastvit_jax.flops import gflops
from fastvit_jax.merge.bipartite import best_partners, max_merges
from fastvit_jax.merge.methods import atm
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.runtime import Runtime


def pair_counts(metric: jax.Array, size: jax.Array, threshold: float, *, num_prefix: int, distill_token: bool,
                size_distinctive: bool) -> jax.Array:
    """(B,) how many A tokens of each example have a partner with cosine >= threshold, matched as
    the block matches: ToMe's A/B (prefix protected) or ATM's size-distinctive halves."""
    def one(m, s):
        if size_distinctive:
            is_a, _, _, cos = atm.size_distinctive_pairs(m[num_prefix:], s[num_prefix:].astype(jnp.float32))
            return jnp.sum(is_a & (cos >= threshold))
        best, _ = best_partners(m, class_token=num_prefix > 0, distill_token=distill_token)
        return jnp.sum(best >= threshold)
    return jax.vmap(one)(metric, size)


@functools.lru_cache(maxsize=64)
def _block_runner(config, plan, block: int, runtime: Runtime):
    """A compiled forward returning block `block`'s metric and token sizes (plans repeat across the
    blocks of one calibration and across the thresholds of a budget search: compiled once)."""
    from fastvit_jax.models.vit import VisionTransformer

    model = VisionTransformer(config, plan, runtime)

    @jax.jit
    def run(p, x):
        _, inter = model.apply({"params": p}, x, mutable=["intermediates"])
        b = inter["intermediates"]["Transformer"][f"encoderblock_{block}"]
        return b["metric"][0], b["size"][0]

    return run


def _block_inputs(config, params, images, options: MergeOptions, block: int, batch_size: int, runtime: Runtime):
    """The metric and token sizes block `block` merges with (r = 1 there, the schedule so far before it)."""
    run = _block_runner(config, make_plan(config, options), block, runtime)
    for i in range(0, len(images), batch_size):
        yield run(params, jnp.asarray(images[i:i + batch_size]))


def calibrate_schedule(config, params, images: np.ndarray, options: MergeOptions, *,
                       thresholds: tuple[float, float, float] = atm.DEFAULT_THRESHOLDS, quantile: float = 0.5,
                       batch_size: int = 32, runtime: Runtime = Runtime(), progress: bool = False) -> MergeOptions:
    """`options` (an ATM or ToMe-family method) with r_list calibrated from (alpha, beta, theta_min)."""
    if options.method not in ("atm", "tome", "dfe"):
        raise FastViTError(f"threshold calibration schedules atm (or tome, dfe), not {options.method!r}")
    if not 0.0 <= quantile <= 1.0:
        raise FastViTError(f"quantile must be in [0, 1], got {quantile}")
    depth = config.depth
    theta = atm.thresholds(depth, *thresholds)
    split = atm.size_split(options, depth) if options.method == "atm" else depth
    skip = options.resolved_skip(depth)
    base = options.replace(r=0, inflect=0.0, keep=None, r_list=None)
    r_list: list[int] = []
    for block in tqdm(range(depth), desc="calibrate", disable=not progress, leave=False):
        if block < skip:
            r_list.append(0)
            continue
        probe = base.replace(r_list=tuple(r_list) + (1,))
        counts = []
        for metric, size in _block_inputs(config, params, images, probe, block, batch_size, runtime):
            counts.append(np.asarray(pair_counts(metric, size, theta[block], num_prefix=config.num_prefix,
                                                 distill_token=config.distilled, size_distinctive=block >= split)))
        tokens = make_plan(config, probe).ops[block].tokens_in
        r = int(np.quantile(np.concatenate(counts), quantile, method="lower"))
        r_list.append(min(r, max_merges(tokens, config.num_prefix)))
    while r_list and r_list[-1] == 0:
        r_list.pop()
    return base.replace(r_list=tuple(r_list) or (0,))


def calibrate_to_budget(config, params, images: np.ndarray, options: MergeOptions, target_gflops: float, *,
                        beta: float = atm.DEFAULT_THRESHOLDS[1], floor: float = atm.DEFAULT_THRESHOLDS[2],
                        steps: int = 8, quantile: float = 0.5, batch_size: int = 32, runtime: Runtime = Runtime(),
                        progress: bool = False) -> tuple[MergeOptions, float]:
    """(calibrated options, alpha): the highest alpha in [floor, 1] whose plan has <= target GFLOPs."""
    fit = lambda alpha: calibrate_schedule(config, params, images, options, thresholds=(alpha, beta, floor),
                                           quantile=quantile, batch_size=batch_size, runtime=runtime)
    lo, hi = floor, 1.0  # alpha = floor merges the most; 1.0 the least
    best = fit(lo)
    if gflops(config, make_plan(config, best)) > target_gflops:
        raise FastViTError(f"even the lowest thresholds (alpha = theta_min = {floor}) give "
                           f"{gflops(config, make_plan(config, best)):.4f} GFLOPs > {target_gflops}: lower theta_min")
    best_alpha = lo
    for _ in tqdm(range(steps), desc="calibrate: thresholds", disable=not progress, leave=False):
        mid = (lo + hi) / 2
        candidate = fit(mid)
        if gflops(config, make_plan(config, candidate)) <= target_gflops:
            best, best_alpha, lo = candidate, mid, mid
        else:
            hi = mid
    return best, best_alpha
