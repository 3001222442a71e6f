"""What a shared program costs to compile and to run against the plan's own programs (tune's trade).

    python benchmarks/shared_program.py --buckets 1,3,6 --batch-size 32 --rounds 3 \
        --out benchmarks/results/shared_program_cpu.json

For one plan (default ToMe r=13 on the bundled DeiT-Tiny, tune's reference at its 0.7352 GFLOPs
budget): the dense model, the plan at exact counts, and the plan on a shared program
(merge/buckets.shared_layout, r as data) with each bucket count. compile_s = lower + XLA compile
(cache off, each once); run_s = one batch, the best of `--rounds` round-robin rounds of 3 calls
each; per_250 = run_s x 250 / batch, the time one tune candidate spends scoring its subset.
Prints a table and writes JSON.
"""

from __future__ import annotations

import sys
import time

from fastvit_jax.cli.arguments import ArgumentParser, positive_int, positive_int_list
from fastvit_jax.errors import report_errors
from fastvit_jax.util.report import cold_compiles, format_table, machine, write_json


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a registry name, random weights (default: the bundled DeiT-Tiny)")
    p.add_argument("--method", default="tome")
    p.add_argument("--r", type=positive_int, default=13)
    p.add_argument("--buckets", type=positive_int_list, default=[1, 3, 6])
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--out", default="benchmarks/results/shared_program_cpu.json")
    args = p.parse_args(argv)

    def run():
        with cold_compiles():
            measure(args)

    return report_errors(run, "shared_program")


def measure(args) -> None:
    import jax
    import numpy as np

    import fastvit_jax
    from fastvit_jax.merge import buckets
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.runtime import Runtime

    if args.model:
        from fastvit_jax.checkpoints.registry import get_entry
        from fastvit_jax.models.vit import init_params

        config = get_entry(args.model).config
        params = init_params(config)
    else:
        model = fastvit_jax.load()
        config, params = model.config, model.params
    plan = make_plan(config, MergeOptions(args.method, r=args.r))
    images = jax.numpy.asarray(np.random.default_rng(0).standard_normal(
        (args.batch_size, config.image_size, config.image_size, 3)), jax.numpy.float32)
    points = [("dense", make_plan(config), Runtime(), None), ("exact", plan, Runtime(), None)]
    points += [(f"shared, {n} bucket{'s' * (n > 1)}", plan, Runtime(token_buckets=n),
                buckets.shared_layout([plan], n)) for n in args.buckets]
    programs, rows = {}, {}
    for name, p_, runtime, layout in points:
        call = (params, images) if layout is None else (params, images, None, buckets.schedule(p_))
        t = time.perf_counter()
        programs[name] = (make_forward(config, p_, runtime, layout).lower(*call).compile(), call)
        rows[name] = {"point": name, "compile_s": time.perf_counter() - t, "runs": []}
        print(f"  compiled {name}: {rows[name]['compile_s']:.2f} s", file=sys.stderr, flush=True)
    for _ in range(args.rounds):
        for name, (program, call) in programs.items():
            jax.block_until_ready(program(*call))
            t = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(program(*call))
            rows[name]["runs"].append((time.perf_counter() - t) / 3)
    best = {name: min(row.pop("runs")) for name, row in rows.items()}
    out = [{**row, "run_s": best[name], "per_250": best[name] * 250 / args.batch_size,
            "run_vs_exact": best[name] / best["exact"]} for name, row in rows.items()]
    print(format_table(out, ["point", "compile_s", "run_s", "per_250", "run_vs_exact"]))
    write_json(args.out, {"machine": machine(), "model": args.model or "deit_tiny_patch16_224 (bundled)",
                          "plan": f"{args.method} r={args.r}", "batch": args.batch_size, "rows": out})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
