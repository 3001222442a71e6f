"""What merging itself costs, and LGTM vs ToMe images/s at equal GFLOPs, timed interleaved.

    python benchmarks/merge_overhead.py --model vit_small_patch16_224 --rounds 7 \
        --out benchmarks/results/merge_overhead_vit_s16_cpu.json

For each (method, r) two jit-compiled forwards are timed: the real plan, and its "free merging"
copy (`fastvit_jax.merge.plan.free_merging`: every merging block keeps its first tokens_out tokens
instead -- same token counts, so the same GFLOPs, but merging costs nothing). overhead =
t_real / t_free - 1 is the cost of matching, sorting, window partition, the merge itself and
proportional attention's log-size bias (the free copy adds none: its sizes stay 1). Every variant, dense included, is timed in
round-robin rounds, so a drift in machine speed (frequent on shared CPUs) hits all of them alike;
each variant reports its median.

For every LGTM (and DFE) point, ToMe is timed at the two r whose GFLOPs bracket it, and ToMe's time
per image is interpolated linearly in GFLOPs: `vs_tome` = images/s / ToMe images/s at the same
GFLOPs. `vs_tome_free` is the same ratio for the free-merging variants: what the token schedule alone
gives, with no merging cost on either side.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from fastvit_jax.cli.arguments import ArgumentParser, add_merge_args, add_speed_args, merge_points
from fastvit_jax.studies.bench import time_round_robin
from fastvit_jax.errors import report_errors
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import free_merging, make_plan
from fastvit_jax.models.vit import init_params
from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.runtime import Runtime, resolve_examples_per_step
from fastvit_jax.util.report import format_table, machine, write_json


def tome_bracket(config, target: float) -> tuple[int, int]:
    """Adjacent ToMe r whose GFLOPs bracket `target` (GFLOPs fall as r grows)."""
    r = 0
    while gflops(config, make_plan(config, MergeOptions("tome", r + 1))) > target:
        r += 1
    return r, r + 1


def all_points(config, points: list[MergeOptions]) -> list[MergeOptions]:
    """Dense, the asked points, and for every non-ToMe point the two ToMe r that bracket its GFLOPs."""
    out = {MergeOptions()}
    for o in points:
        out.add(o)
        if o.method != "tome":
            out.update(MergeOptions("tome", rr) for rr in tome_bracket(config, gflops(config, make_plan(config, o))))
    order = ("none", "tome", "dfe", "lgtm", "drop")
    return sorted(out, key=lambda o: (order.index(o.method), o.r, str(o)))


def compile_variants(config, points, args, params, images) -> dict:
    """{(options, free): compiled forward}: the real plan and, for merging points, its free-merging copy."""
    variants = {}
    for o in points:
        plan = make_plan(config, o)
        for free in ((False,) if plan.is_dense else (False, True)):
            fn = make_forward(config, free_merging(plan) if free else plan, Runtime.from_args(args))
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, images))
            variants[(o, free)] = fn
            print(f"compiled {o.label}{' (free merging)' if free else ''} in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)
    return variants


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    add_merge_args(p, several=True, r="8,13,16", targets=False)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7, help="round-robin timing rounds (median taken)")
    add_speed_args(p)
    p.add_argument("--out", default="benchmarks/results/merge_overhead.json")
    args = p.parse_args(argv)

    config = get_entry(args.model).config
    params = init_params(config)
    images = jax.device_put(np.random.default_rng(0).standard_normal(
        (args.batch_size, config.image_size, config.image_size, 3)).astype(np.float32))
    points = all_points(config, merge_points(args))
    variants = compile_variants(config, points, args, params, images)
    runners = {key: (lambda fn=fn: jax.block_until_ready(fn(params, images))) for key, fn in variants.items()}
    times = time_round_robin(runners, args.rounds, warmup=2, warmup_s=0,
                             progress=lambda i: print(f"round {i + 1}/{args.rounds} done", file=sys.stderr))
    rows = overhead_rows(config, points, times, args.batch_size)
    print(format_table(rows, ["method", "r", "gflops", "images_per_s", "free_images_per_s", "overhead_pct",
                              "speedup", "ideal_speedup", "vs_tome", "vs_tome_free"]))
    out = write_json(args.out, {"machine": machine(), "args": vars(args), "model": args.model,
                                "examples_per_step": resolve_examples_per_step(args.examples_per_step, config),
                                "times_s": {f"{o.label}{' free' if f else ''}": t for (o, f), t in times.items()},
                                "rows": rows})
    print(f"wrote {out}")


def overhead_rows(config, points, times, batch_size) -> list[dict]:
    """Per point: images/s real and free, the overhead, speedups, and (DFE/LGTM) images/s vs ToMe at equal GFLOPs."""
    def ips(o, free=False):  # a dense point has no free copy
        return batch_size / statistics.median(times[(o, free) if (o, free) in times else (o, False)])

    def tome_at(g: float, free: bool) -> float:
        """ToMe images/s at GFLOPs g: time per image interpolated between the bracketing r."""
        lo, hi = (MergeOptions("tome", rr) for rr in tome_bracket(config, g))
        g_lo, g_hi = (gflops(config, make_plan(config, o)) for o in (lo, hi))
        t_lo, t_hi = 1 / ips(lo, free), 1 / ips(hi, free)
        return 1 / (t_lo + (g_lo - g) / (g_lo - g_hi) * (t_hi - t_lo))

    dense_gflops, rows = gflops(config, None), []
    for o in points:
        g = gflops(config, make_plan(config, o))
        real, free = ips(o), ips(o, True)
        row = {"method": o.method, "r": o.r, "gflops": g, "images_per_s": real, "free_images_per_s": free,
               "overhead_pct": 100 * (free / real - 1), "speedup": real / ips(MergeOptions()),
               "ideal_speedup": dense_gflops / g, "options": o.to_dict()}
        if o.method in ("dfe", "lgtm"):
            row["vs_tome"] = real / tome_at(g, False)
            row["vs_tome_free"] = free / tome_at(g, True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
