"""What the runtime options cost in accuracy and buy in speed, on the bundled genuine DeiT-Tiny and
the 2300 shared real ImageNet images (issue 27): aligned token counts (--align 8) against exact r
at ToMe r=13's and r=16's GFLOPs, bfloat16 against float32, fused against einsum attention; top-1
with paired differences, and images/s at batch 32 timed round-robin on this machine. A yardstick:
float32 on the same images times (1 + 2^-8 noise), a perturbation of a bfloat16 rounding's size,
and ToMe r=13's schedule moved by one token per block (14, 12, 14, ... and 12, 14, 12, ...).

    python benchmarks/runtime_options.py [--limit N] [--runs 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from fastvit_jax.search import budget
from fastvit_jax.studies.bench import time_forwards
from fastvit_jax.data import image_folder, load_arrays
from fastvit_jax.studies.demo import bundled_model
from fastvit_jax.errors import report_errors
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.util.report import format_table, machine, write_json
from fastvit_jax.runtime import Runtime
from fastvit_jax.util.stats import paired_difference
from fastvit_jax.search.tune import correct_per_image

SETS = {"samples": "imagenet-samples", "val1300": "imagenet-val-1300"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--limit", type=int, help="images per set (quick runs)")
    p.add_argument("--runs", type=int, default=10, help="timed rounds at batch 32 (0: no timing)")
    p.add_argument("--out", default="benchmarks/results/runtime_options_cpu.json")
    args = p.parse_args(argv)
    params, config, pre = bundled_model()
    sets = [image_folder(Path(args.shared) / v).limit(args.limit) for v in SETS.values()]
    union = dataclasses.replace(sets[0], items=sets[0].items + sets[1].items, name="union")
    images, labels = load_arrays(union, pre, require_labels=True)
    # The yardstick: the same images with 2^-8 relative noise (a bfloat16 rounding's size), in float32.
    noisy = images * (1 + 2.0 ** -8 * np.random.default_rng(0).standard_normal(images.shape)).astype(np.float32)
    f32, bf16 = Runtime(), Runtime(dtype="bfloat16")
    variants = {}  # label -> (options, runtime, reference label, images)
    for r in (13, 16):
        target = gflops(config, make_plan(config, MergeOptions("tome", r)))
        aligned = budget.options_for_gflops(config, MergeOptions("tome", align=8), target)
        variants[f"tome r={r}"] = (MergeOptions("tome", r), f32, None, images)
        variants[f"tome align=8 at r={r}'s GFLOPs (r={aligned.r:g})"] = (aligned, f32, f"tome r={r}", images)
    variants["dense"] = (MergeOptions(), f32, None, images)
    variants["dense bf16"] = (MergeOptions(), bf16, "dense", images)
    for r in (13, 16):
        variants[f"tome r={r} bf16"] = (MergeOptions("tome", r), bf16, f"tome r={r}", images)
    variants["tome r=13 fused attention"] = (MergeOptions("tome", 13), Runtime(attention="fused"), "tome r=13", images)
    variants["dense, images x (1 + 2^-8 noise)"] = (MergeOptions(), f32, "dense", noisy)
    for r in (13, 16):
        variants[f"tome r={r}, images x (1 + 2^-8 noise)"] = (MergeOptions("tome", r), f32, f"tome r={r}", noisy)
    # A second yardstick: ToMe r=13's merges moved by one token per block, alternately (same total).
    for pair in ((14, 12), (12, 14)):
        shifted = MergeOptions("tome", r_list=pair * (config.depth // 2))
        variants[f"tome r=[{pair[0]},{pair[1]},...]"] = (shifted, f32, "tome r=13", images)
    correct = {}
    for label, (options, runtime, _, inputs) in variants.items():
        print(f"evaluating {label}", file=sys.stderr)
        forward = make_forward(config, make_plan(config, options), runtime)
        correct[label] = correct_per_image(forward, params, inputs, labels, 32)
    speed = {}
    timed = {label: v for label, v in variants.items() if v[3] is images}  # the noisy rows time nothing new
    if args.runs:
        plans = {label: make_plan(config, o) for label, (o, _, _, _) in timed.items()}
        speed = time_forwards(config, params, plans, batch_size=32, runs=args.runs, warmup_s=1.0,
                              runtimes={label: rt for label, (_, rt, _, _) in timed.items()})
    rows = []
    for label, (options, runtime, ref, _) in variants.items():
        plan = make_plan(config, options)
        row = {"variant": label, "gflops": gflops(config, plan), "top1": float(correct[label].mean()),
               "tokens": [op.tokens_out for op in plan.ops], "runtime": runtime.to_dict(), "options": options.to_dict(),
               "images_per_s": speed[label]["images_per_s"] if label in speed else None}
        if ref:
            d = paired_difference(correct[label], correct[ref])
            row.update(vs=ref, diff=d["diff"], diff_lo=d["lo"], diff_hi=d["hi"], p_mcnemar=d["p_mcnemar"],
                       agree=float((correct[label] == correct[ref]).mean()))
        rows.append(row)
    print(format_table(rows, ["variant", "gflops", "top1", "vs", "diff", "diff_lo", "diff_hi", "p_mcnemar",
                              "images_per_s"]))
    out = write_json(args.out, {"machine": machine(), "images": len(images), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
