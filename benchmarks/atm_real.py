"""ATM against ToMe at equal GFLOPs on the genuine DeiT-Tiny and the 2300 shared ImageNet images,
its thresholds calibrated on one set and scored on the other.

For each budget (ToMe r=13's and r=16's GFLOPs) and each direction (calibrate on imagenet-samples,
score on imagenet-val-1300, and the reverse), `calibrate.calibrate_to_budget` bisects ATM's
threshold level alpha (beta and theta_min fixed) on --calibration-images images of one set; the plan
is then scored on the other set against ToMe's plan at that budget (paired difference with a 95%
interval, McNemar's exact p). Variants: atm (thresholds + size-distinctive matching in the last
quarter), atm-thresholds (ToMe's matching on the calibrated schedule: the thresholds alone). CPU
images/s of every plan at batch 32, round-robin.

    python benchmarks/atm_real.py --calibration-images 128 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = {"samples": "imagenet-samples", "val1300": "imagenet-val-1300"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--calibration-images", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="bisection steps on alpha")
    p.add_argument("--beta", type=float, default=0.03)
    p.add_argument("--floor", type=float, default=0.0, help="theta_min")
    p.add_argument("--bench-runs", type=int, default=8)
    p.add_argument("--limit", type=int, help="images per set (quick runs)")
    p.add_argument("--variants", default="atm", help="comma-separated: atm, atm-thresholds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "atm_real.json"))
    args = p.parse_args(argv)

    from fastvit_jax.studies.bench import time_forwards
    from fastvit_jax.search.calibrate import calibrate_to_budget
    from fastvit_jax.data import image_folder, load_arrays
    from fastvit_jax.studies.demo import bundled_model
    from fastvit_jax.merge.flops import gflops
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.util.stats import paired_difference
    from fastvit_jax.search.tune import correct_per_image

    params, config, pre = bundled_model()
    data = {}
    for name, folder in SETS.items():
        ds = image_folder(Path(args.shared) / folder).limit(args.limit)
        data[name] = load_arrays(ds, pre, require_labels=True)
    correct_cache = {}

    def correct(options, where):
        key = (options, where)
        if key not in correct_cache:
            forward = make_forward(config, make_plan(config, options))
            correct_cache[key] = correct_per_image(forward, params, *data[where], 32)
        return correct_cache[key]

    rows, plans = [], {}
    variants = {k: v for k, v in {"atm": MergeOptions("atm"), "atm-thresholds": MergeOptions("tome")}.items()
                if k in args.variants.split(",")}
    for r in (13, 16):
        tome = MergeOptions("tome", r)
        budget = gflops(config, make_plan(config, tome))
        plans[f"tome r={r}"] = tome
        for cal, test in (("samples", "val1300"), ("val1300", "samples")):
            cal_images = spread_images(data[cal][0], args.calibration_images)
            for label, base in variants.items():
                t0 = time.perf_counter()
                options, alpha = calibrate_to_budget(config, params, cal_images, base, budget, beta=args.beta,
                                                     floor=args.floor, steps=args.steps)
                cal_s = time.perf_counter() - t0
                plans[f"{label} at r={r} calibrated on {cal}"] = options
                d = paired_difference(correct(options, test), correct(tome, test))
                rows.append({"budget": f"ToMe r={r}", "budget_gflops": budget, "variant": label,
                             "calibrated_on": cal, "scored_on": test, "alpha": alpha, "r_list": list(options.r_list),
                             "gflops": gflops(config, make_plan(config, options)),
                             "top1": float(correct(options, test).mean()), "tome_top1": float(correct(tome, test).mean()),
                             "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "p_mcnemar": d["p_mcnemar"],
                             "calibration_s": cal_s})
                print(json.dumps(rows[-1]), flush=True)
    speed = {}
    if args.bench_runs:
        timed = {name: make_plan(config, o) for name, o in plans.items()}
        timed["dense"] = None
        res = time_forwards(config, params, timed, batch_size=32, runs=args.bench_runs)
        speed = {name: r["images_per_s"] for name, r in res.items()}
    print(f"{'budget':10s} {'variant':16s} {'cal':8s} {'GFLOPs':>7s} {'top-1':>7s} {'ToMe':>7s} {'diff [95%]':>22s} {'p':>6s}")
    for r in rows:
        print(f"{r['budget']:10s} {r['variant']:16s} {r['calibrated_on']:8s} {r['gflops']:7.4f} {r['top1']:7.4f} "
              f"{r['tome_top1']:7.4f} {100 * r['diff']:+6.2f} [{100 * r['lo']:+5.2f}, {100 * r['hi']:+5.2f}] "
              f"{r['p_mcnemar']:6.3f}")
    for name, v in speed.items():
        print(f"images/s {name:32s} {v:7.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": f"{platform.node()} ({os.cpu_count()} cores)",
                                          "date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows,
                                          "images_per_s": speed,
                                          "plans": {k: o.to_dict() for k, o in plans.items()}}, indent=2))


def spread_images(images: np.ndarray, n: int) -> np.ndarray:
    """n images spread evenly over the set (classes are in order: every part of the label range)."""
    if n >= len(images):
        return images
    return images[np.linspace(0, len(images) - 1, n).round().astype(int)]


if __name__ == "__main__":
    main()
