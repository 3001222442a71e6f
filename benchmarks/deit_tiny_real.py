"""Real accuracy of every method with the genuine DeiT-Tiny on the 1000 shared ImageNet samples.

    python benchmarks/deit_tiny_real.py --data ../shared/data/imagenet-samples --out benchmarks/results/deit_tiny

Runs (each resumable, in its own sub-directory of --out):
  sweep/            tome, dfe, lgtm at r = 0..16 step 2            (paper Figure 5)
  metric_<m>/       merge (tome) vs drop at r = 8 for each feature (paper Table 3)
  skip_<s>/         dfe and lgtm at r = 10 with skip s = 0..3      (paper Tables 6-7)
and writes summary.json plus markdown tables (summary.md), including ToMe / DFE / DFE+LGTM at matched
GFLOPs (paper Table 8) picked from the sweep. The bundled model is used; 1000 images give about
+-1.3 points of standard error on top-1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.data import image_folder
from fastvit_jax.studies.demo import bundled_model
from fastvit_jax.errors import report_errors
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.util.report import markdown_table as md_table
from fastvit_jax.studies.sweep import run_sweep

METRICS = ("random", "x_pre", "x_attn", "k", "q", "v")


def matched(rows, targets):
    """For each GFLOPs target, each method's point with the closest GFLOPs (Table 8)."""
    out = []
    for t in targets:
        line = {"target_gflops": t}
        for m in ("tome", "dfe", "lgtm"):
            best = min((r for r in rows if r["method"] == m), key=lambda r: abs(r["gflops"] - t))
            line[f"{m}_r"], line[f"{m}_gflops"], line[f"{m}_top1"] = best["r"], best["gflops"], best["top1"]
        out.append(line)
    return out


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/imagenet-samples")
    p.add_argument("--out", default="benchmarks/results/deit_tiny")
    p.add_argument("--limit", type=int)
    p.add_argument("--bench-runs", type=int, default=5)
    p.add_argument("--remeasure-speed", action="store_true",
                   help="re-time images/s of all recorded points (quiet machine), keep accuracies")
    args = p.parse_args(argv)
    out = Path(args.out)
    params, config, pre = bundled_model()
    ds = image_folder(args.data).limit(args.limit)
    kw = dict(bench_runs=args.bench_runs, title="DeiT-Tiny/16, 1000 ImageNet samples")
    if args.remeasure_speed:
        from fastvit_jax.studies.sweep import remeasure_speed

        for d in sorted(p for p in out.iterdir() if (p / "results.jsonl").exists()):
            remeasure_speed(config, params, d, runs=args.bench_runs, plot=d.name == "sweep", title=kw["title"])
    summary = {}
    grid = [MergeOptions(m, r) for m in ("tome", "dfe", "lgtm") for r in range(0, 17, 2)]
    summary["sweep"] = run_sweep(config, params, pre, ds, out / "sweep", grid, **kw)
    summary["metrics"] = []
    for m in METRICS:
        rows = run_sweep(config, params, pre, ds, out / f"metric_{m}",
                         [MergeOptions(method, 8, metric=m) for method in ("tome", "drop")], plot=False, **kw)
        summary["metrics"] += rows
    summary["skip"] = []
    for s in range(4):
        summary["skip"] += run_sweep(config, params, pre, ds, out / f"skip_{s}",
                                     [MergeOptions(method, 10, skip=s) for method in ("dfe", "lgtm")], plot=False, **kw)
    dense = next(r for r in summary["sweep"] if r["r"] == 0)
    for r in summary["skip"]:
        r["acc_loss"] = dense["top1"] - r["top1"]
        r["speedup"] = r["images_per_s"] / dense["images_per_s"]
    summary["matched"] = matched(summary["sweep"], [1.1, 1.0, 0.9, 0.8, 0.7])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sweep_rows = sorted(summary["sweep"], key=lambda r: (r["method"], r["r"]))
    md = ["## Sweep (Figure 5)", md_table(sweep_rows, ["method", "r", "top1", "top5", "gflops", "images_per_s"]),
          "", "## Drop vs merge at r = 8 (Table 3)",
          md_table([{"feature": m, **{f"{k}_{x}": r[x] for k in ("merge", "drop") for r in summary["metrics"]
                                        if r["metric"] == m and r["method"] == ("tome" if k == "merge" else "drop")
                                        for x in ("top1", "images_per_s")}} for m in METRICS],
                   ["feature", "drop_top1", "drop_images_per_s", "merge_top1", "merge_images_per_s"]),
          "", "## Skip ablation at r = 10 (Tables 6-7)",
          md_table(summary["skip"], ["method", "skip", "top1", "acc_loss", "speedup", "gflops"]),
          "", "## Matched GFLOPs (Table 8)",
          md_table(summary["matched"], ["target_gflops", "tome_r", "tome_gflops", "tome_top1", "dfe_r", "dfe_gflops",
                                        "dfe_top1", "lgtm_r", "lgtm_gflops", "lgtm_top1"])]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
