"""Which fused kernels a compiled plan shares across blocks: XLA:CPU generates code once per distinct
fusion body (BENCHMARKS.md section 20), so the count of distinct bodies is what a compile pays for.

    python benchmarks/fusion_bodies.py --model vit_base_patch16_224 --batch-size 8 \
        --points "dense,tome r=8,tome r=16" --token-buckets 1 --out benchmarks/results/fusion_bodies.json

For each point: the fusions in the optimized HLO, how many distinct bodies (instruction names and
metadata erased), how those bodies repeat (a body shared by all 12 blocks appears 12 times), and how
many distinct bodies the dense model does not have. Shapes only: no weights, no data.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

import jax
import numpy as np

from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.forward import make_forward
from fastvit_jax.models.vit import init_params
from fastvit_jax.runtime import Runtime
from fastvit_jax.util.report import format_table, machine, write_json

_NAME = re.compile(r"%[\w.\-]+")
_META = re.compile(r"metadata=\{[^}]*\}")


def fusion_bodies(hlo_text: str) -> collections.Counter:
    """{normalised body: how many fused computations have it} of an optimized HLO module's text."""
    bodies = collections.Counter()
    for comp in re.split(r"\n(?=\S)", hlo_text):
        head = comp.split(" ", 1)[0]
        if "fused" not in head and "fusion" not in head:
            continue
        bodies[_META.sub("", _NAME.sub("%v", "\n".join(comp.splitlines()[1:])))] += 1
    return bodies


def parse_point(point: str) -> MergeOptions:
    if point == "dense":
        return MergeOptions()
    method, r = point.split()
    return MergeOptions(method, r=int(r.split("=")[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--points", default="dense,tome r=8,tome r=16", help="dense or 'METHOD r=N', comma-separated")
    p.add_argument("--token-buckets", default="1", help="none or N")
    p.add_argument("--out", default="benchmarks/results/fusion_bodies.json")
    args = p.parse_args(argv)
    cfg = get_entry(args.model).config
    buckets = None if args.token_buckets == "none" else int(args.token_buckets)
    params = jax.eval_shape(lambda: init_params(cfg))
    images = jax.ShapeDtypeStruct((args.batch_size, cfg.image_size, cfg.image_size, 3), np.float32)
    found, rows = {}, []
    for point in args.points.split(","):
        options = parse_point(point.strip())
        plan = None if options.method in (None, "none") else make_plan(cfg, options)
        runtime = Runtime(token_buckets=buckets if plan is not None else None)
        found[point] = fusion_bodies(make_forward(cfg, plan, runtime).lower(params, images).compile().as_text())
    dense = found.get("dense", collections.Counter())
    for point, bodies in found.items():
        repeats = collections.Counter(bodies.values())
        rows.append({"point": point, "fusions": sum(bodies.values()), "distinct": len(bodies),
                     "not_in_dense": sum(b not in dense for b in bodies),
                     "repeats": ", ".join(f"{n}x{k}" for k, n in sorted(repeats.items()))})
    print(format_table(rows, ["point", "fusions", "distinct", "not_in_dense", "repeats"]))
    print("repeats: COUNTxTIMES, e.g. 35x12 = 35 distinct bodies each used 12 times")
    write_json(args.out, {"machine": machine(), "model": args.model, "batch_size": args.batch_size,
                          "token_buckets": buckets, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
