"""Does sharpness-aware training make a ViT more compressible? The AdamW / SAM pair on CIFAR-10.

    python benchmarks/cifar_sam_vs_adamw.py --data ../shared/data/cifar10/test \
        --out benchmarks/results/cifar_sam_vs_adamw

For both models (bundled `vit_cifar_adamw` and `vit_cifar_sam`, or --adamw/--sam files):
  <model>/sweep/       top-1, GFLOPs, images/s for tome, dfe, lgtm at each --r on the whole test split
  <model>/sharpness.json  lambda_max (Lanczos) dense and ToMe at each --sharp-r with skip 0 and 2,
                          on --sharp-images test images spread over the classes
then summary.json, summary.md and accuracy_drop_vs_r.{png,svg}. Every part is resumable.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from fastvit_jax.cli.arguments import ArgumentParser, add_merge_args, merge_points
from fastvit_jax.data import image_folder, load_arrays, spread
from fastvit_jax.errors import report_errors
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.util.report import pyplot, save_figure
from fastvit_jax.studies.sharpness import lambda_max
from fastvit_jax.studies.sweep import run_sweep

METHODS = ("tome", "dfe", "lgtm")


def sharpness_rows(params, config, images, labels, rs: list[int], out: Path, iters: int) -> list[dict]:
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {(row["method"], row["r"], row["skip"]) for row in rows}
    for method, rr, skip in [("none", 0, 0)] + [("tome", r, skip) for r in rs for skip in (0, 2)]:
        if (method, rr, skip) in done:
            continue
        t0 = time.perf_counter()
        plan = make_plan(config, MergeOptions(method, rr, skip=skip))
        res = lambda_max(config, params, images, labels, plan=plan, micro_batch=math.gcd(len(images), 256), iters=iters,
                         method="lanczos", progress=False)
        rows.append({"method": method, "r": rr, "skip": skip, "lambda_max": res.lambda_max,
                     "hvps": res.hvps, "converged": res.converged, "images": len(images),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        out.write_text(json.dumps(rows, indent=2))
    return rows


def plot_drop(summary: dict, out: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    for (name, s), style in zip(summary.items(), ("-", "--")):
        for method in METHODS:
            pts = sorted((r for r in s["sweep"] if r["method"] == method or r["r"] == 0), key=lambda r: r["gflops"])
            ax.plot([r["gflops"] for r in pts], [100 * (s["dense_top1"] - r["top1"]) for r in pts], "o" + style,
                    ms=4, label=f"{name} {method}")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("top-1 lost vs dense (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("CIFAR-10 test: accuracy lost to merging, AdamW vs SAM")
    save_figure(fig, out, "accuracy_drop_vs_r")


def md(summary: dict) -> str:
    names = list(summary)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| dense top-1 | " + " | ".join(f"{summary[n]['dense_top1']:.4f}" for n in names) + " |")
    for key in summary[names[0]]["lambda"]:
        lines.append(f"| lambda_max {key} | " + " | ".join(f"{summary[n]['lambda'][key]:.2f}" for n in names) + " |")
    for row in summary[names[0]]["sweep"]:
        m, r = row["method"], row["r"]
        others = [next((x for x in summary[n]["sweep"] if x["method"] == m and x["r"] == r), None) for n in names]
        if r == 0 or None in others:  # only points measured for every model
            continue
        cells = [f"{o['top1']:.4f} ({100 * (o['top1'] - summary[n]['dense_top1']):+.2f})" for n, o in zip(names, others)]
        lines.append(f"| {m} r={r} ({row['gflops']:.4f} GFLOPs) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10/test")
    p.add_argument("--adamw", help="AdamW checkpoint (default: bundled vit_cifar_adamw)")
    p.add_argument("--sam", help="SAM checkpoint (default: bundled vit_cifar_sam)")
    p.add_argument("--model", default="vit_cifar_patch2_28", help="architecture of --adamw/--sam files")
    p.add_argument("--models", default="adamw,sam", help="which of the pair to measure now (each part resumes)")
    add_merge_args(p, several=True, r="0,8,16,24,32", targets=False)  # the accuracy sweep
    p.add_argument("--sharp-r", default="16,32", help="r values of the merged lambda_max (skip 0 and 2 each)")
    p.add_argument("--sharp-images", type=int, default=256)
    p.add_argument("--lanczos-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256, help="evaluation and images/s batch")
    p.add_argument("--bench-runs", type=int, default=5, help="timed runs per point for images/s")
    p.add_argument("--out", default="benchmarks/results/cifar_sam_vs_adamw")
    args = p.parse_args(argv)
    out = Path(args.out)
    ds = image_folder(args.data)
    summary = {}
    for name, path in (("adamw", args.adamw), ("sam", args.sam)):
        if name not in args.models.split(","):
            continue
        params, config, pre = load_model(f"vit_cifar_{name}" if path is None else args.model, path)
        grid = merge_points(args)  # r = 0 is dense: measured once
        points = [grid[0].replace(method="tome", r=0)] + [o for o in grid if o.r > 0]
        rows = run_sweep(config, params, pre, ds, out / name / "sweep", points, batch_size=args.batch_size,
                         bench_runs=args.bench_runs,
                         title=f"CIFAR-10 ViT ({name})")
        images, labels = load_arrays(spread(ds, args.sharp_images), pre, require_labels=True)
        sharp = sharpness_rows(params, config, images, labels, [int(r) for r in args.sharp_r.split(",")], out / name / "sharpness.json",
                               args.lanczos_steps)
        dense = next(r["top1"] for r in rows if r["method"] == "tome" and r["r"] == 0)
        summary[name] = {"dense_top1": dense, "sweep": sorted(rows, key=lambda r: (r["method"], r["r"])),
                         "lambda": {("dense" if s["method"] == "none" else f"tome r={s['r']} skip {s['skip']}"):
                                    s["lambda_max"] for s in sharp}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = md(summary)
    (out / "summary.md").write_text(table + "\n")
    plot_drop(summary, out)
    print(table)
    print(f"wrote {out}/summary.json, summary.md, accuracy_drop_vs_r.png/.svg")


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
