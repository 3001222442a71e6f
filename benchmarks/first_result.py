"""Time to first result and steady throughput: dense, a merged plan at exact counts, and the same plan tiered.

    python benchmarks/first_result.py --model vit_base_patch16_224 --batch-sizes 8,32 --runs 5 \
        --out benchmarks/results/first_result_cpu.json

Each (batch, point) runs in a fresh process with the persistent compilation cache off, as a user's
first run does: `first_s` is the wall time of the first call (trace, compile and one run; for the
tiered forward, its bucketed program's, while the exact one compiles behind it), `exact_ready_s`
when the tiered forward's exact program was ready (from the first call), and `run_s` the median of
`runs` calls once everything is compiled (the tiered forward then runs the exact program). Points
run round-robin, `--repeats` times (medians). Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from fastvit_jax.cli.arguments import ArgumentParser, positive_int, positive_int_list
from fastvit_jax.errors import report_errors
from fastvit_jax.util.report import format_table, machine, write_json

POINTS = {"dense": ("none", 0, False), "exact": ("tome", 16, False), "tiered": ("tome", 16, True)}


def one(model: str, batch: int, method: str, r: int, tiered: bool, runs: int) -> dict:
    """In this process: the first call's wall time, when the exact program is ready, steady run time."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)
    from fastvit_jax.checkpoints.registry import get_entry
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.models.vit import init_params
    from fastvit_jax.runtime import Runtime

    config = get_entry(model).config
    params = jax.block_until_ready(init_params(config))
    images = jax.block_until_ready(jnp.zeros((batch, config.image_size, config.image_size, 3)))
    plan = make_plan(config, MergeOptions(method, r=r) if r else MergeOptions())
    t0 = time.perf_counter()
    forward = make_forward(config, plan, Runtime(tiered=tiered))
    jax.block_until_ready(forward(params, images))
    first = time.perf_counter() - t0
    ready = None
    if hasattr(forward, "compiling"):
        forward.compiling(params, images).result()
        ready = time.perf_counter() - t0
    times = []
    for _ in range(runs + 1):  # the first warms the exact program's call path
        s = time.perf_counter()
        jax.block_until_ready(forward(params, images))
        times.append(time.perf_counter() - s)
    return {"first_s": first, "exact_ready_s": ready, "run_s": statistics.median(times[1:])}


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--batch-sizes", type=positive_int_list, default=[8, 32])
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--out", default="benchmarks/results/first_result_cpu.json")
    p.add_argument("--one", help="internal: run one point in this process")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.model, *json.loads(args.one), args.runs)))
        return 0

    def run():
        rows = []
        for batch in args.batch_sizes:
            samples = {k: [] for k in POINTS}
            for _ in range(args.repeats):
                for name, (method, r, tiered) in POINTS.items():
                    cmd = [sys.executable, __file__, "--model", args.model, "--runs", str(args.runs),
                           "--one", json.dumps([batch, method, r, tiered])]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    samples[name].append(json.loads(out.strip().splitlines()[-1]))
                    print(f"  b={batch} {name}: {samples[name][-1]}", file=sys.stderr, flush=True)
            med = {k: {f: (statistics.median(s[f] for s in ss) if ss[0][f] is not None else None) for f in ss[0]}
                   for k, ss in samples.items()}
            for name, m in med.items():
                rows.append({"model": args.model, "batch": batch, "point": name, **m,
                             "first_vs_dense": m["first_s"] / med["dense"]["first_s"],
                             "images_per_s": batch / m["run_s"],
                             "run_vs_exact": m["run_s"] / med["exact"]["run_s"]})
        print(format_table(rows, ["model", "batch", "point", "first_s", "first_vs_dense", "exact_ready_s", "run_s",
                                  "images_per_s", "run_vs_exact"]))
        write_json(args.out, {"machine": machine(), "rows": rows})
        print(f"wrote {args.out}")

    return report_errors(run, "first_result")


if __name__ == "__main__":
    sys.exit(main())
