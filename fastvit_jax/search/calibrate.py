"""Similarity thresholds calibrated on images into a static schedule (ATM's thresholds, static).

ATM merges, in block l, every pair whose similarity reaches theta_l, a number that varies per image
and per batch. A compiled forward needs static token counts, so the counts are measured here on
calibration images: block l's count on each image is taken with the r of blocks 0 .. l-1 in place
(its tokens as they would be), and r_l is a quantile (default the median) of the counts over the
images. Since block l's count does not depend on r_l or later blocks, one forward gives every
block's count for a guessed schedule, and iterating schedule -> counts -> schedule reaches the
block-after-block result exactly (block l is settled after l + 1 passes; usually 2-4 passes in all).
The result is an explicit schedule (`r_list`) that plan files store and every command runs.

For a GFLOPs budget, the threshold level alpha is bisected: the most conservative thresholds (the
highest alpha) whose calibrated plan stays within the budget. Each finished calibration of the
bisection is appended to a journal in the cache, keyed by everything that produced it (weights,
images, options, thresholds, quantile, batch, runtime), so an interrupted search resumes where it
stopped and ends in the same plan.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import gflops
from fastvit_jax.merge import buckets
from fastvit_jax.merge.bipartite import best_partners, max_merges
from fastvit_jax.merge.methods import atm
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.studies.recorded import fingerprint, weights_fingerprint
from fastvit_jax.runtime import Runtime
from fastvit_jax.models.vit import VisionTransformer, observe

CALIBRATED = ("atm", "tome", "dfe")


def check_method(method: str) -> None:
    if method not in CALIBRATED:
        raise FastViTError(f"threshold calibration schedules atm (or tome, dfe), not {method!r}")


def pair_counts(metric: jax.Array, size: jax.Array, threshold: float, *, num_prefix: int, distill_token: bool,
                size_distinctive: bool) -> jax.Array:
    """(B,) how many A tokens of each example have a partner with cosine >= threshold, matched as
    the block matches: ToMe's A/B (prefix protected) or ATM's size-distinctive halves. Slots of
    size 0 (padding: merge/buckets.py) are in neither half."""
    def one(m, s):
        valid = s > 0
        if size_distinctive:
            patches = valid[num_prefix:]
            is_a, _, _, cos = atm.size_distinctive_pairs(m[num_prefix:], s[num_prefix:].astype(jnp.float32),
                                                         patches, jnp.sum(patches.astype(jnp.int32)))
            return jnp.sum(is_a & (cos >= threshold))
        best, _ = best_partners(m, class_token=num_prefix > 0, distill_token=distill_token, valid=valid)
        return jnp.sum(valid[0::2] & (best >= threshold))
    return jax.vmap(one)(metric, size)


def counting_plan(config, base: MergeOptions) -> tuple:
    """(plan, layout) of the one program that counts for every schedule of `base`: each block from
    its skip on merges (r = 1 here; the schedule's r, 0 included, comes as data: merge/buckets.py),
    every block at the full token count."""
    skip = base.resolved_skip(config.depth)
    plan = make_plan(config, base.replace(r_list=tuple(int(b >= skip) for b in range(config.depth))))
    n = plan.ops[0].tokens_in
    slots = (n,) * (config.depth + 1)
    padded = tuple(plan.merged_before(b) for b in range(config.depth + 1))
    return plan, buckets.Layout(slots, padded, (max_merges(n, config.num_prefix),) * config.depth)


@functools.lru_cache(maxsize=32)
def _count_runner(config, base: MergeOptions, split: int, runtime: Runtime):
    """A compiled forward returning (depth, B) pair counts above each block's threshold, for any
    schedule of `base`. The schedule and the thresholds are arguments, not constants: every pass of
    the fixed point and every step of a bisection runs the one program (counts within rounding of
    the exact model's, whose merges it makes: tests/test_calibrate.py)."""

    plan, layout = counting_plan(config, base)
    model = VisionTransformer(config, plan, runtime, layout)

    @jax.jit
    def run(p, x, theta, r_list):
        schedule = {**buckets.schedule(plan), "r": r_list}
        _, blocks = observe(model, p, x, schedule)
        return jnp.stack([pair_counts(blocks[i]["metric"], blocks[i]["size"], theta[i],
                                      num_prefix=config.num_prefix, distill_token=config.distilled,
                                      size_distinctive=i >= split) for i in range(config.depth)])

    return run


def calibrate_schedule(config, params, images: np.ndarray, options: MergeOptions, *,
                       thresholds: tuple[float, float, float] = atm.DEFAULT_THRESHOLDS, quantile: float = 0.5,
                       batch_size: int = 32, runtime: Runtime = Runtime(), start: tuple[int, ...] | None = None,
                       stats: dict | None = None) -> MergeOptions:
    """`options` (atm, tome or dfe) with r_list calibrated from (alpha, beta, theta_min). start: a
    guessed schedule (a neighbouring threshold's) to begin the iteration from."""
    check_method(options.method)
    if not 0.0 <= quantile <= 1.0:
        raise FastViTError(f"quantile must be in [0, 1], got {quantile}")
    if options.metric == "random":
        raise FastViTError("threshold calibration needs a similarity feature, not the random metric")
    depth = config.depth
    theta = jnp.asarray(atm.thresholds(depth, *thresholds), jnp.float32)
    split = atm.size_split(options, depth) if options.method == "atm" else depth
    skip = options.resolved_skip(depth)
    base = options.replace(r=0, inflect=0.0, keep=None, r_list=None)
    r_list = tuple(start) if start else (0,) * depth
    for passes in range(1, depth + 2):
        plan = make_plan(config, base.replace(r_list=r_list))
        run = _count_runner(config, base, split, runtime)
        schedule = jnp.asarray(r_list, jnp.int32)
        counts = np.concatenate([np.asarray(run(params, jnp.asarray(images[i:i + batch_size]), theta, schedule))
                                 for i in range(0, len(images), batch_size)], axis=1)
        new = tuple(0 if block < skip else
                    min(int(np.quantile(counts[block], quantile, method="lower")),
                        max_merges(plan.ops[block].tokens_in, config.num_prefix))
                    for block in range(depth))
        if new == r_list:
            break
        r_list = new
    if stats is not None:
        stats["passes"] = passes
    return base.replace(r_list=r_list)


class Journal:
    """Finished calibrations of one budget search, one JSON line each, appended as they finish."""

    def __init__(self, file: Path | None):
        self.file, self.done = file, {}
        if file is not None and file.exists():
            for line in file.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.done[(row["alpha"], tuple(row["start"] or ()))] = tuple(row["r_list"])
                except (ValueError, KeyError, TypeError):
                    break  # a line cut short by a kill: what follows it is recomputed

    def get(self, alpha: float, start) -> tuple[int, ...] | None:
        return self.done.get((alpha, tuple(start or ())))

    def put(self, alpha: float, start, r_list) -> None:
        self.done[(alpha, tuple(start or ()))] = tuple(r_list)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "a") as f:
                f.write(json.dumps({"alpha": alpha, "start": list(start or ()), "r_list": list(r_list)}) + "\n")


def journal_file(config, params, images: np.ndarray, options: MergeOptions, settings: dict, folder: Path) -> Path:
    """Where a budget search's journal lives: named by a hash of every setting that shapes its result."""

    key = fingerprint(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str), weights_fingerprint(params),
                      np.ascontiguousarray(images).tobytes(), json.dumps(options.to_dict(), sort_keys=True),
                      json.dumps(settings, sort_keys=True, default=str))
    return folder / f"{key}.jsonl"


def calibrate_to_budget(config, params, images: np.ndarray, options: MergeOptions, target_gflops: float, *,
                        beta: float = atm.DEFAULT_THRESHOLDS[1], floor: float = atm.DEFAULT_THRESHOLDS[2],
                        steps: int = 8, quantile: float = 0.5, batch_size: int = 32, runtime: Runtime = Runtime(),
                        progress: bool = False, resume: Path | None = None,
                        stats: dict | None = None) -> tuple[MergeOptions, float]:
    """(calibrated options, alpha): the highest alpha in [floor, 1] (bisected `steps` times) whose
    plan has <= target GFLOPs. resume: a folder for the search's journal (the CLI's: the cache), so
    a rerun after an interrupt continues where it stopped; stats["resumed"] counts reused steps."""
    settings = {"beta": beta, "floor": floor, "steps": steps, "quantile": quantile, "batch_size": batch_size,
                "runtime": dataclasses.asdict(runtime.resolved(config))}
    journal = Journal(journal_file(config, params, images, options, settings, resume) if resume else None)
    stats = {} if stats is None else stats
    stats.update(resumed=0, computed=0)
    cost = lambda o: gflops(config, make_plan(config, o))

    def fit(alpha, start):
        known = journal.get(alpha, start)
        if known is not None:
            stats["resumed"] += 1
            return options.replace(r=0, inflect=0.0, keep=None, r_list=known)
        got = calibrate_schedule(config, params, images, options, thresholds=(alpha, beta, floor), quantile=quantile,
                                 batch_size=batch_size, runtime=runtime, start=start)
        journal.put(alpha, start, got.r_list)
        stats["computed"] += 1
        return got

    lo, hi = floor, 1.0  # alpha = floor merges the most; 1.0 the least
    best = fit(lo, None)
    if cost(best) > target_gflops:
        raise FastViTError(f"even the lowest thresholds (alpha = theta_min = {floor}) give {cost(best):.4f} "
                           f"GFLOPs > {target_gflops}: lower theta_min (--thresholds)")
    best_alpha = lo
    with tqdm(total=steps, desc="calibrate: thresholds", disable=not progress, leave=False) as bar:
        for _ in range(steps):
            mid = (lo + hi) / 2
            candidate = fit(mid, best.r_list)
            if cost(candidate) <= target_gflops:
                best, best_alpha, lo = candidate, mid, mid
            else:
                hi = mid
            bar.set_postfix_str(f"alpha={mid:.4f}" + (f", {stats['resumed']} resumed" if stats["resumed"] else ""))
            bar.update(1)
    return best, best_alpha
