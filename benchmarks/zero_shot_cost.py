"""What zero-shot classification costs on this machine: the SigLIP B/16 image tower dense and merged
(images/s, GFLOPs), its text tower (prompts/s, GFLOPs per prompt), and so the class-embedding
computation for ImageNet-1k (once per model, class set and templates; then read from the cache) against
the image side of an evaluation.

Random weights at SigLIP B/16's shapes (registry `siglip_base_patch16_224`; text: B, 32k vocabulary,
64 tokens, 768-d head): speed does not depend on the values. All forwards are timed round-robin in
the same rounds on the same batch size.

    python benchmarks/zero_shot_cost.py --runs 5 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--r", default="8,13,16", help="ToMe r values for the image tower")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zero_shot_cost.json"))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from fastvit_jax.studies.bench import time_forwards
    from fastvit_jax.merge.flops import text_gflops
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.models.text import TextConfig, TextTransformer, init_text_params
    from fastvit_jax.models.vit import init_params
    from fastvit_jax.checkpoints.registry import REGISTRY
    from fastvit_jax.zero_shot import read_templates

    config = REGISTRY["siglip_base_patch16_224"].config
    params = init_params(config)
    plans = {"dense": None, **{f"tome r={r}": make_plan(config, MergeOptions("tome", int(r)))
                               for r in args.r.split(",")}}

    text = TextConfig(vocab_size=32_000, width=768, depth=12, heads=12, mlp_dim=3072, max_len=64, embed_dim=768)
    tparams = init_text_params(text)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32_000, (args.batch_size, 64)), jnp.int32)
    text_fn = jax.jit(lambda p, t: TextTransformer(text).apply({"params": p}, t))
    per_prompt = text_gflops(text)  # MACs / 1e9, as the image towers' GFLOPs
    text_fn(tparams, tokens).block_until_ready()
    res = time_forwards(config, params, plans, batch_size=args.batch_size, runs=args.runs,
                        others={"text tower": lambda: text_fn(tparams, tokens).block_until_ready()})

    # the cache: what a rerun pays instead of the text tower (read 1000 x 768 sums, build the head)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.npz"
        np.savez(path, key=np.asarray("k" * 400), sums=np.zeros((1000, 768)), done=np.asarray(81_000))
        t0 = time.perf_counter()
        for _ in range(10):
            with np.load(path) as z:
                np.asarray(z["sums"]), str(z["key"])
        cache_s = (time.perf_counter() - t0) / 10

    prompts_per_s = res["text tower"]["images_per_s"]
    rows = []
    for name in plans:
        rows.append({"part": f"image tower, {name}", "per_s": res[name]["images_per_s"], "unit": "images/s",
                     "gflops": res[name]["gflops"], "imagenet_val_s": 50_000 / res[name]["images_per_s"],
                     "shared_2300_s": 2300 / res[name]["images_per_s"]})
    for tname in ("clip", "clip-best"):
        n = 1000 * len(read_templates(tname)[0])
        rows.append({"part": f"class embeddings, {tname} ({n} prompts)", "per_s": prompts_per_s, "unit": "prompts/s",
                     "gflops": per_prompt, "imagenet_val_s": n / prompts_per_s, "shared_2300_s": n / prompts_per_s})
    rows.append({"part": "class embeddings from the cache", "per_s": None, "unit": "", "gflops": 0.0,
                 "imagenet_val_s": cache_s, "shared_2300_s": cache_s})
    print(f"{'part':45s} {'per s':>9s} {'':9s} {'GFLOPs':>8s} {'50k val s':>10s} {'2300 imgs s':>11s}")
    for r in rows:
        per = f"{r['per_s']:9.1f}" if r["per_s"] else " " * 9
        print(f"{r['part']:45s} {per} {r['unit']:9s} {r['gflops']:8.2f} {r['imagenet_val_s']:10.1f} "
              f"{r['shared_2300_s']:11.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": f"{platform.node()} ({os.cpu_count()} cores, {jax.default_backend()})",
                                          "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
                                          "runs": args.runs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
