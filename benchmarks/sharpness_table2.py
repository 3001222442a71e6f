"""lambda_max of a model, dense and merged (paper Table 2 protocol), one resumable JSON per model.

    # genuine DeiT-Tiny, 64 real images, dense and ToMe r = 8 with skip 0 and 2
    python benchmarks/sharpness_table2.py --data ../shared/data/imagenet-samples \
        --configs none:0:0,tome:8:0,tome:8:2 --out benchmarks/results/sharpness/deit_tiny.json
    # a ViT-S/16-shaped checkpoint in the SAM file layout (random weights: no download here)
    python benchmarks/sharpness_table2.py --model vit_small_patch16_224_sam --random-weights --num-images 16 \
        --configs none:0:0,tome:16:0,tome:16:2 --out benchmarks/results/sharpness/vit_s16_random.json

Each config (method:r:skip) is written to --out as soon as it finishes; a rerun skips finished ones.
Images are spread over the classes; labels come from the file names.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.data import load_arrays, open_dataset, spread
from fastvit_jax.errors import report_errors
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.util.report import format_table
from fastvit_jax.studies.sharpness import lambda_max


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="registry name (default: the bundled DeiT-Tiny)")
    p.add_argument("--checkpoint")
    p.add_argument("--random-weights", action="store_true", help="the --model architecture, randomly initialised")
    p.add_argument("--data", default="../shared/data/imagenet-samples")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--configs", default="none:0:0,tome:8:0,tome:8:2", help="method:r:skip,...")
    p.add_argument("--solver", choices=["power", "lanczos"], default="lanczos")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    params, config, pre = load_model(args.model, args.checkpoint, random_weights=args.random_weights)
    images, labels = load_arrays(spread(open_dataset(args.data), args.num_images), pre, require_labels=True)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {(r["method"], r["r"], r["skip"]) for r in rows}
    for spec in args.configs.split(","):
        method, r, skip = spec.split(":")
        key = (method, int(r), int(skip))
        if key in done:
            continue
        plan = make_plan(config, MergeOptions(method, int(r), skip=int(skip)))
        t0 = time.perf_counter()
        res = lambda_max(config, params, images, labels, plan=plan, micro_batch=args.micro_batch,
                         iters=args.iters, method=args.solver, seed=0)
        rows.append({"method": method, "r": int(r), "skip": int(skip), "lambda_max": res.lambda_max,
                     "iterations": res.iterations, "hvps": res.hvps, "converged": res.converged,
                     "solver": args.solver, "images": len(images), "wall_s": round(time.perf_counter() - t0, 1),
                     "model": args.model or "deit_tiny_patch16_224 (bundled)", "random_weights": args.random_weights,
                     "device": jax.devices()[0].device_kind})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
    print(format_table(rows, ["method", "r", "skip", "lambda_max", "iterations", "hvps", "converged", "wall_s"]))


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
