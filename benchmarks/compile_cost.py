"""Where a merged plan's time to first result goes: tracing, lowering and XLA compiling, per method.

    python benchmarks/compile_cost.py --models vit_small_patch16_224,vit_base_patch16_224 --batch-sizes 8,32 \
        --out benchmarks/results/compile_cost_cpu.json

For each (model, batch size, point), with the persistent compilation cache off and a fresh jit:
trace seconds (Python -> jaxpr), lower seconds (jaxpr -> StableHLO), compile seconds (XLA), the
lowered StableHLO's op count by kind (the most frequent kinds, and the total), the optimized HLO's
instruction count, and the number of distinct block shapes (token counts in) the plan has: XLA
compiles each distinct block anew, identical dense blocks once. Ratios are against the dense
model at the same batch. Runs every point round-robin once per repeat (the median is reported).
--token-buckets none,1,2 measures each point with each runtime.token_buckets (merge/buckets.py);
--runs N also times N calls of each compiled forward (after one warm-up call), to show what the
padded slots cost. Ratios are against the dense model at exact counts (always measured).
Prints a table and writes JSON.
"""

from __future__ import annotations

import collections
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from fastvit_jax.cli.arguments import ArgumentParser, positive_int, positive_int_list
from fastvit_jax.errors import report_errors
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.buckets import token_slots
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.vit import init_params
from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.util.report import cold_compiles, format_table, machine, write_json
from fastvit_jax.runtime import Runtime

# A typical budget per method (the methods' own schedules where they have one).
POINTS = {
    "dense": MergeOptions(),
    "tome r=16": MergeOptions("tome", r=16),
    "dfe r=16": MergeOptions("dfe", r=16),
    "lgtm r=16": MergeOptions("lgtm", r=16),
    "pitome keep=0.9125": MergeOptions("pitome", keep=0.9125),
    "mctf r=16": MergeOptions("mctf", r=16),
    "ppt": MergeOptions("ppt", r=16),
    "tofu r=16": MergeOptions("tofu", r=16),
    "atm r=16": MergeOptions("atm", r=16),
}
_OP = re.compile(r"=\s*(?:\"?)(stablehlo|chlo|mhlo|func)\.([a-z_]+)")


def op_counts(stablehlo: str) -> collections.Counter:
    return collections.Counter(f"{m.group(2)}" for m in _OP.finditer(stablehlo))


def measure(config, params, options: MergeOptions, batch: int, runtime: Runtime, runs: int = 0) -> dict:
    plan = make_plan(config, options)
    forward = make_forward.__wrapped__(config, plan, runtime)  # a fresh jit: nothing cached in memory
    images = jnp.zeros((batch, config.image_size, config.image_size, 3), jnp.float32)
    t0 = time.perf_counter()
    traced = forward.trace(params, images)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    ops = op_counts(lowered.as_text())
    optimized = compiled.as_text() or ""
    times = []
    for _ in range(runs + 1 if runs else 0):  # the first call warms up
        s = time.perf_counter()
        jax.block_until_ready(compiled(params, images))
        times.append(time.perf_counter() - s)
    return {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "ops": sum(ops.values()),
            "ops_by_kind": dict(ops.most_common(8)),
            "hlo_instructions": sum(1 for line in optimized.splitlines() if " = " in line),
            "block_shapes": len(set(token_slots(plan, runtime.token_buckets)[:-1])), "label": options.label,
            "run_s": statistics.median(times[1:]) if runs else None}


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    p.add_argument("--batch-sizes", type=positive_int_list, default=[8, 32])
    p.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, from: {', '.join(POINTS)}")
    p.add_argument("--repeats", type=positive_int, default=1, help="round-robin repeats (median)")
    p.add_argument("--examples-per-step", default="auto", help="runtime examples_per_step (auto, none, N)")
    p.add_argument("--token-buckets", default="none",
                   help="comma-separated runtime token_buckets to compare, each a row per point (none, N)")
    p.add_argument("--runs", type=int, default=0, help="also time this many calls of each compiled forward (median)")
    p.add_argument("--out", default="benchmarks/results/compile_cost_cpu.json")
    args = p.parse_args(argv)

    def run():
        with cold_compiles():
            measure_all()

    def measure_all():
        points = [s.strip() for s in args.points.split(",") if s.strip()]
        unknown = [s for s in points if s not in POINTS]
        if unknown:
            from fastvit_jax.errors import FastViTError

            raise FastViTError(f"unknown point {unknown[0]!r}; allowed: {', '.join(POINTS)}")
        steps = None if args.examples_per_step == "none" else args.examples_per_step
        plain = Runtime(examples_per_step=int(steps) if steps not in (None, "auto") else steps)
        settings = [plain.replace(token_buckets=b.strip()) for b in args.token_buckets.split(",")]
        runtime = plain
        rows = []
        for name in args.models.split(","):
            config = get_entry(name).config
            params = init_params(config)
            for batch in args.batch_sizes:
                samples = collections.defaultdict(list)
                for _ in range(args.repeats):
                    for point in points:  # dense at exact counts too: the ratios' baseline
                        for rt in ([plain] + [s for s in settings if s != plain] if point == "dense" else settings):
                            key = point + (f" buckets={rt.token_buckets}" if rt.token_buckets else "")
                            samples[key].append(measure(config, params, POINTS[point], batch, rt, args.runs))
                            print(f"  {name} b={batch} {key}: {samples[key][-1]['compile_s']:.1f} s compile",
                                  file=sys.stderr, flush=True)
                med = {pt: {k: (statistics.median(s[k] for s in ss) if isinstance(ss[0][k], float) else ss[0][k])
                            for k in ss[0]} for pt, ss in samples.items()}
                dense = med.get("dense")
                for pt, m in med.items():
                    first = m["trace_s"] + m["lower_s"] + m["compile_s"]
                    base = dense["trace_s"] + dense["lower_s"] + dense["compile_s"] if dense else None
                    rows.append({"model": name, "batch": batch, "point": pt, **m, "first_s": first,
                                 "vs_dense": first / base if base else None,
                                 "run_vs_dense": m["run_s"] / dense["run_s"] if dense and m["run_s"] else None})
        print(format_table(rows, ["model", "batch", "point", "trace_s", "lower_s", "compile_s", "first_s",
                                  "vs_dense", "run_s", "run_vs_dense", "ops", "hlo_instructions", "block_shapes"]))
        kinds = {f"{r['model']} b={r['batch']} {r['point']}": r["ops_by_kind"] for r in rows}
        for label, by_kind in kinds.items():
            print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in by_kind.items()))
        write_json(args.out, {"machine": machine(), "runtime": runtime.resolved(get_entry(args.models.split(',')[0])
                                                                                   .config).to_dict(),
                              "rows": rows})
        print(f"wrote {args.out}")

    return report_errors(run, "compile_cost")


if __name__ == "__main__":
    sys.exit(main())
