"""Throughput of dense vs merged ViTs (random weights), as `fastvit bench` but over a grid.

    python benchmarks/bench_merging.py --models vit_small_patch16_224,vit_base_patch16_224 \
        --methods tome,dfe,lgtm --r 8,13,16 --batch-size 32 --runs 5 --out benchmarks/results/merging_cpu.json

--merge-impls gather,dense times both merge implementations of every point in the same rounds.

Prints a table (images/s, GFLOPs, measured and ideal speedup) and writes JSON with the machine.
All variants of a model, the peer's included, are compiled first and then timed in round-robin
rounds (`--runs` of them), so a drift in machine speed hits them all alike.
When torch and timm import, the same points are timed for the peer -- timm's ViT dense and with
facebookresearch-style ToMe (benchmarks/timm_tome.py; DFE = ToMe with the first blocks skipped;
LGTM has no peer) -- and `vs_peer` = our images/s / peer images/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastvit_jax.cli.arguments import ArgumentParser, add_merge_args, add_speed_args, merge_points
from fastvit_jax.studies.bench import time_forwards
from fastvit_jax.errors import report_errors
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.runtime import MERGE_IMPLS, Runtime, resolve_merge_impl
from fastvit_jax.models.vit import init_params
from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.util.report import format_table, machine, write_json

try:
    import timm  # noqa: F401 (the peer needs it, beside torch)

    import timm_tome  # needs torch + timm (beside this script)
except ImportError:
    timm_tome = None


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    add_merge_args(p, several=True, r="8,13,16", targets=False)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="round-robin rounds; each variant's median is reported")
    p.add_argument("--warmup-s", type=float, default=3.0, help="seconds of warm-up calls per variant before timing")
    add_speed_args(p)
    p.add_argument("--out", default="benchmarks/results/merging.json")
    p.add_argument("--no-peer", action="store_true", help="skip timm even when installed")
    p.add_argument("--merge-impls", default="auto", help="comma list of merge implementations to time side by side "
                   f"({', '.join(MERGE_IMPLS)}); --merge-impl is ignored here")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        config = get_entry(name).config
        params = init_params(config)
        use_peer = timm_tome is not None and not args.no_peer and args.dtype == "float32"
        impls = list(dict.fromkeys(resolve_merge_impl(i) for i in args.merge_impls.split(",")))
        runtime = Runtime.from_args(args)
        plans = {("none", 0, None): None} | {(o.method, o.r, impl): make_plan(config, o)
                                             for o in merge_points(args) for impl in impls}
        runtimes = {key: runtime.replace(merge_impl=key[2]) for key in plans if key[2]}
        peers = {}
        for (method, r, impl), plan in plans.items():
            if impl not in (None, impls[0]):
                continue
            if use_peer and method in ("none", "tome", "dfe"):
                model = timm_tome.make_model(name.replace("_in21k", ""), r, skip=plan.skip if plan else 0,
                                             prop_attn=plan.prop_attn if plan else True)
                peers[("peer", method, r)] = timm_tome.model_runner(model, args.batch_size, config.image_size)
        print(f"{name}: compiling {len(plans)} variants", file=sys.stderr)
        res = time_forwards(config, params, plans, batch_size=args.batch_size, runs=args.runs, warmup_s=args.warmup_s,
                            runtime=runtime, runtimes=runtimes, others=peers,
                            progress=lambda i: print(f"{name}: round {i + 1}/{args.runs}", file=sys.stderr))
        dense = res[("none", 0, None)]
        for (method, r, impl), plan in plans.items():
            ours, peer = res[(method, r, impl)], res.get(("peer", method, r))
            rows.append({"model": name, "method": method, "r": r, **ours, "clamped": bool(plan and plan.clamped),
                         "options": plan.options.to_dict() if plan else None,
                         "speedup": ours["images_per_s"] / dense["images_per_s"],
                         "ideal_speedup": dense["gflops"] / ours["gflops"],
                         "peer_images_per_s": peer["images_per_s"] if peer else None})
    for row in rows:
        row["speedup_vs_ideal"] = row["speedup"] / row["ideal_speedup"]
        peer_ips = row.get("peer_images_per_s")
        row["vs_peer"] = row["images_per_s"] / peer_ips if peer_ips else None
    print(format_table(rows, ["model", "method", "r", "merge_impl", "images_per_s", "gflops", "speedup", "ideal_speedup",
                              "speedup_vs_ideal", "peer_images_per_s", "vs_peer", "compile_s"]))
    print(f"wrote {write_json(args.out, {'machine': machine(), 'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
