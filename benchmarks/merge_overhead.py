"""What merging itself costs, and LGTM vs ToMe images/s at equal GFLOPs, timed interleaved.

    python benchmarks/merge_overhead.py --model vit_small_patch16_224 --rounds 7 \
        --out benchmarks/results/merge_overhead_vit_s16_cpu.json

For each (method, r) two jit-compiled forwards of the same plan are timed: the real one, and a
"free merging" one whose blocks keep the first tokens_out tokens instead of merging (same token
counts, so the same GFLOPs, but merging costs nothing). overhead = t_real / t_free - 1 is the cost of
matching, sorting, window partition, the merge itself and proportional attention's log-size bias
(sizes stay 1 in the free copy, so XLA folds that bias away). Every variant, dense included, is timed in
round-robin rounds, so a drift in machine speed (frequent on shared CPUs) hits all of them alike;
each variant reports its median.

For every LGTM (and DFE) point, ToMe is timed at the two r whose GFLOPs bracket it, and ToMe's time
per image is interpolated linearly in GFLOPs: `vs_tome` = images/s / ToMe images/s at the same
GFLOPs. `vs_tome_free` is the same ratio for the free-merging variants: what the token schedule alone
gives, with no merging cost on either side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merging import machine  # noqa: E402

import fastvit_jax.models.vit as vit_module  # noqa: E402
from fastvit_jax.bench import time_round_robin  # noqa: E402
from fastvit_jax.cli import add_examples_per_step_arg, format_table  # noqa: E402
from fastvit_jax.errors import report_errors  # noqa: E402
from fastvit_jax.flops import gflops  # noqa: E402
from fastvit_jax.forward import DTYPES, make_forward, resolve_examples_per_step  # noqa: E402
from fastvit_jax.merge.plan import make_plan  # noqa: E402
from fastvit_jax.models.vit import init_params  # noqa: E402
from fastvit_jax.registry import get_entry  # noqa: E402


def keep_first(op, plan, state, metric):
    """Free merging: the block's token count drops as the plan says, at the cost of a slice."""
    return jax.tree_util.tree_map(lambda t: t[:, :op.tokens_out], state), None


@contextmanager
def free_merging():
    real = vit_module.apply_op
    vit_module.apply_op = keep_first
    try:
        yield
    finally:
        vit_module.apply_op = real


def compiled_forward(config, plan, dtype, params, images, free: bool, per_step="auto"):
    """The project's jitted forward, traced now (under free_merging if asked), so later calls reuse
    that trace. The free one is built uncached (`__wrapped__`) so it never shares the real one's trace."""
    args = (config, plan, dtype, per_step)
    fn = make_forward.__wrapped__(*args) if free else make_forward(*args)
    with free_merging() if free else nullcontext():
        jax.block_until_ready(fn(params, images))
    return fn


def tome_bracket(config, target: float) -> tuple[int, int]:
    """Adjacent ToMe r whose GFLOPs bracket `target` (GFLOPs fall as r grows)."""
    r = 0
    while gflops(config, make_plan(config.depth, config.grid, "tome", r + 1)) > target:
        r += 1
    return r, r + 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--methods", default="tome,dfe,lgtm")
    p.add_argument("--r", default="8,13,16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7, help="round-robin timing rounds (median taken)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    add_examples_per_step_arg(p)
    p.add_argument("--out", default="benchmarks/results/merge_overhead.json")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)

    config = get_entry(args.model).config
    params = init_params(config)
    images = jax.device_put(np.random.default_rng(0).standard_normal(
        (args.batch_size, config.image_size, config.image_size, 3)).astype(np.float32))

    points = {("none", 0)}
    for method in args.methods.split(","):
        for r in map(int, args.r.split(",")):
            points.add((method, r))
            if method != "tome":
                g = gflops(config, make_plan(config.depth, config.grid, method, r))
                points.update(("tome", rr) for rr in tome_bracket(config, g))
    points = sorted(points, key=lambda mr: (("none", "tome", "dfe", "lgtm").index(mr[0]), mr[1]))

    variants = {}
    for method, r in points:
        plan = make_plan(config.depth, config.grid, method, r)
        for free in ((False,) if method == "none" else (False, True)):
            t0 = time.perf_counter()
            variants[(method, r, free)] = compiled_forward(config, plan, args.dtype, params, images, free,
                                                          args.examples_per_step)
            print(f"compiled {method} r={r}{' (free merging)' if free else ''} in {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)

    runners = {key: (lambda fn=fn: jax.block_until_ready(fn(params, images))) for key, fn in variants.items()}
    times = time_round_robin(runners, args.rounds, warmup=2, warmup_s=0,
                             progress=lambda i: print(f"round {i + 1}/{args.rounds} done", file=sys.stderr))

    def ips(method, r, free=False):
        return args.batch_size / statistics.median(times[(method, r, free and method != "none")])

    dense_gflops = gflops(config, None)
    rows = []
    for method, r in points:
        g = gflops(config, make_plan(config.depth, config.grid, method, r))
        real, free = ips(method, r), ips(method, r, True)
        rows.append({"method": method, "r": r, "gflops": g, "images_per_s": real, "free_images_per_s": free,
                     "overhead_pct": 100 * (free / real - 1), "speedup": real / ips("none", 0),
                     "ideal_speedup": dense_gflops / g})

    def tome_at(g: float, free: bool) -> float:
        """ToMe images/s at GFLOPs g: time per image interpolated between the bracketing r."""
        lo, hi = tome_bracket(config, g)
        g_lo, g_hi = (gflops(config, make_plan(config.depth, config.grid, "tome", rr)) for rr in (lo, hi))
        t_lo, t_hi = 1 / ips("tome", lo, free), 1 / ips("tome", hi, free)
        return 1 / (t_lo + (g_lo - g) / (g_lo - g_hi) * (t_hi - t_lo))

    for row in rows:
        if row["method"] in ("dfe", "lgtm"):
            row["vs_tome"] = row["images_per_s"] / tome_at(row["gflops"], False)
            row["vs_tome_free"] = row["free_images_per_s"] / tome_at(row["gflops"], True)
    print(format_table(rows, ["method", "r", "gflops", "images_per_s", "free_images_per_s", "overhead_pct",
                              "speedup", "ideal_speedup", "vs_tome", "vs_tome_free"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "model": args.model,
                               "examples_per_step": resolve_examples_per_step(args.examples_per_step, config),
                               "times_s": {f"{m} r={r}{' free' if f else ''}": t for (m, r, f), t in times.items()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
