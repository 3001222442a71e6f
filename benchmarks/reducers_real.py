"""Token reducers side by side on real images: the bundled DeiT-Tiny, every method at matched GFLOPs,
paired differences against ToMe, and the plan `fastvit tune` picks on one set scored on the other.

    python benchmarks/reducers_real.py --out benchmarks/results/reducers_real

Sets: ../shared/data/imagenet-samples (1000 images, one per class) and imagenet-val-1300 (1300
ILSVRC2012 validation images); "union" is both (2300). Every (method, budget) point is the method's
smallest r whose plan has at most the budget's GFLOPs (our counter, matching cost included).
Per-image results are stored as they finish (OUT/points/results.jsonl; OUT/tune_*/), so a rerun
resumes. Writes OUT/summary.json, OUT/summary.md and OUT/top1_vs_gflops.png/.svg.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from fastvit_jax.search import budget
from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.studies.bench import time_forwards
from fastvit_jax.data import image_folder, load_arrays
from fastvit_jax.studies.demo import bundled_model
from fastvit_jax.errors import FastViTError, report_errors
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.util.report import format_table, markdown_table
from fastvit_jax.util.stats import paired_difference, wilson_interval
from fastvit_jax.studies.sweep import sweep_settings
from fastvit_jax.checkpoints.plan_file import save_plan
from fastvit_jax.search.tune import Results, correct_per_image, describe, tune, tune_summary

SETS = {"samples": "imagenet-samples", "val1300": "imagenet-val-1300"}
METHODS = {  # label -> options (r, or the keep ratio, set per budget); the released methods on their own schedules
    "tome": MergeOptions("tome", skip=0), "tome-decreasing": MergeOptions("tome", inflect=-0.5),
    "dfe": MergeOptions("dfe"), "lgtm": MergeOptions("lgtm"),
    "pitome": MergeOptions("pitome", keep=1.0), "tofu": MergeOptions("tofu"), "mctf": MergeOptions("mctf", skip=1),
    "ppt": MergeOptions("ppt"),
}
TUNED_AT = (13, 16)  # the budgets of ToMe r=13 and r=16, where the tuner is judged


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results/reducers_real")
    p.add_argument("--budgets", default="0.6,0.8,1.0,1.1",
                   help="GFLOPs, besides ToMe r=13 and r=16 (the default is what BENCHMARKS section 11 measured)")
    p.add_argument("--limit", type=int, help="images per set (quick runs)")
    p.add_argument("--bench-runs", type=int, default=10, help="timed rounds for images/s (0: no timing)")
    p.add_argument("--no-tune", action="store_true")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--part", choices=["imagenet", "cifar", "all"], default="all",
                   help="imagenet: DeiT-Tiny on the 2300 images; cifar: the bundled AdamW/SAM pair on CIFAR-10 test")
    p.add_argument("--cifar-images", type=int, default=2000)
    args = p.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    if "tome" not in names or any(m not in METHODS for m in names):
        raise FastViTError(f"--methods must include tome (the reference) and be from {', '.join(METHODS)}")
    methods = {m: METHODS[m] for m in names}
    if not methods:
        raise FastViTError(f"--methods must include tome (the reference) and be from {', '.join(METHODS)}")
    out = Path(args.out)
    if args.part in ("cifar", "all"):
        cifar(args, out / "cifar", methods)
    if args.part == "cifar":
        return
    params, config, pre = bundled_model()
    sets = {k: image_folder(Path(args.shared) / v).limit(args.limit) for k, v in SETS.items()}
    union = dataclasses.replace(sets["samples"], items=sets["samples"].items + sets["val1300"].items, name="union")
    images, labels = load_arrays(union, pre, require_labels=True)
    part = {"samples": slice(0, len(sets["samples"])), "val1300": slice(len(sets["samples"]), None),
            "union": slice(None)}

    tome_at = {r: gflops(config, make_plan(config, MergeOptions("tome", r))) for r in TUNED_AT}
    budgets = sorted(set([float(b) for b in args.budgets.split(",") if b] + list(tome_at.values())))
    points = {(b, label): o for b in budgets for label, o in at_budget(config, methods, b).items()}
    results = Results(out / "points", sweep_settings(config, params, pre, union, 32))
    todo = list(dict.fromkeys(o for o in points.values() if results.get("union", o) is None))
    for o in tqdm(todo, desc="points", unit="plan"):
        forward = make_forward(config, make_plan(config, o))
        results.put("union", o, correct_per_image(forward, params, images, labels, 32))
    dense = results.get("union", MergeOptions())
    if dense is None:
        dense = correct_per_image(make_forward(config, make_plan(config, MergeOptions())), params, images, labels, 32)
        results.put("union", MergeOptions(), dense)

    def stats(o, ref, where):
        c, t = results.get("union", o)[part[where]], results.get("union", ref)[part[where]]
        lo, hi = wilson_interval(int(c.sum()), len(c))
        d = paired_difference(c, t)
        return {f"{where}_top1": float(c.mean()), f"{where}_lo": lo, f"{where}_hi": hi,
                f"{where}_vs_tome": d["diff"], f"{where}_vs_tome_lo": d["lo"], f"{where}_vs_tome_hi": d["hi"],
                f"{where}_p_mcnemar": d["p_mcnemar"]}

    rows = []
    for (b, label), o in points.items():
        ref = points[(b, "tome")]
        row = {"budget": b, "method": label, "plan": describe(o), "r": o.r,
               "gflops": gflops(config, make_plan(config, o)), "options": o.to_dict()}
        for where in part:
            row.update(stats(o, ref, where))
        rows.append(row)

    tuned = []
    if not args.no_tune:
        for r in TUNED_AT:
            for cal, held in (("samples", "val1300"), ("val1300", "samples")):
                res = tune(config, params, pre, sets[cal], target_gflops=tome_at[r], out=out / f"tune_{cal}_r{r}.json",
                           # tune's tome covers DFE's skips and the decreasing schedule; its space holds the rest
                           methods=sorted({o.method for o in methods.values()} - {"dfe"}), progress=True)
                best = res["best"]
                save_plan(out / f"tune_{cal}_r{r}.json", config, make_plan(config, best), model_name="deit_tiny_patch16_224",
                          command=f"fastvit tune --data {args.shared}/{SETS[cal]} --target-gflops {tome_at[r]} "
                                  f"--methods {','.join(m for m in methods if m != 'dfe')} --out {out}/tune_{cal}_r{r}.json",
                          extra={"tune": tune_summary(res)})
                if results.get("union", best) is None:
                    forward = make_forward(config, make_plan(config, best))
                    results.put("union", best, correct_per_image(forward, params, images, labels, 32))
                ref = points[(tome_at[r], "tome")]
                s = stats(best, ref, held)
                tuned.append({"budget": tome_at[r], "tome_r": r, "calibrated_on": cal, "scored_on": held,
                              "best": describe(best), "gflops": gflops(config, make_plan(config, best)),
                              "top1": s[f"{held}_top1"], "vs_tome": s[f"{held}_vs_tome"],
                              "vs_tome_lo": s[f"{held}_vs_tome_lo"], "vs_tome_hi": s[f"{held}_vs_tome_hi"],
                              "p_mcnemar": s[f"{held}_p_mcnemar"],
                              "tune_top": [x["plan"] for x in res["rows"]]})

    # images/s at batch 32 on this machine, each method at the ToMe r=13 budget, timed round-robin
    at = tome_at[13]
    plans = {"dense": None, **{label: make_plan(config, points[(at, label)]) for label in methods if (at, label) in points}}
    speed = time_forwards(config, params, plans, batch_size=32, runs=args.bench_runs) if args.bench_runs else {}
    speed_rows = [{"method": k, "plan": describe(plans[k].options) if plans[k] else "dense",
                   "gflops": v["gflops"], "images_per_s": v["images_per_s"]} for k, v in speed.items()]

    summary = {"model": "deit_tiny_patch16_224 (bundled)", "images": {k: len(v) for k, v in sets.items()},
               "dense_top1": {w: float(dense[part[w]].mean()) for w in part}, "rows": rows, "tuned": tuned,
               "speed_batch32": speed_rows, "tome_budgets": {str(k): v for k, v in tome_at.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    cols = ["budget", "method", "plan", "gflops", "samples_top1", "val1300_top1", "union_top1", "union_vs_tome",
            "union_vs_tome_lo", "union_vs_tome_hi", "union_p_mcnemar"]
    md = ["## Every method at matched GFLOPs (union of 2300 images; vs ToMe: paired, 95% interval, McNemar's "
          "exact p; 2300 images resolve about +-1 point)\n",
          markdown_table(rows, cols), "\n## fastvit tune: calibrated on one set, scored on the other\n",
          markdown_table(tuned, ["tome_r", "budget", "calibrated_on", "scored_on", "best", "gflops", "top1", "vs_tome",
                                 "vs_tome_lo", "vs_tome_hi", "p_mcnemar"]),
          "\n## images/s at batch 32 (this machine), ToMe r=13 budget\n",
          markdown_table(speed_rows, ["method", "plan", "gflops", "images_per_s"], 2)]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    plot(rows, out)
    print(format_table(rows, cols))
    if tuned:
        print(format_table(tuned, ["tome_r", "calibrated_on", "scored_on", "best", "top1", "vs_tome", "vs_tome_lo",
                                   "vs_tome_hi"]))
    print(format_table(speed_rows, ["method", "plan", "gflops", "images_per_s"]))
    print(f"wrote {out}/summary.json, summary.md, top1_vs_gflops.png/.svg")


def at_budget(config, methods: dict, gflops_budget: float) -> dict:
    """{label: options at the smallest r within the budget}, leaving out methods that cannot meet it."""
    points = {}
    for label, base in methods.items():
        try:
            points[label] = budget.options_for_gflops(config, base, gflops_budget)
        except FastViTError:
            pass
    return points


def cifar(args, out: Path, methods: dict) -> None:
    """Each method at the budgets of ToMe r=13 and r=16 on the bundled CIFAR-10 pair (same images)."""
    from fastvit_jax.checkpoints.hub import load_model

    rows = []
    for name in ("vit_cifar_adamw", "vit_cifar_sam"):
        params, config, pre = load_model(name)
        ds = image_folder(Path(args.shared) / "cifar10" / "test").limit(args.cifar_images)
        images, labels = load_arrays(ds, pre, require_labels=True)
        results = Results(out / name, sweep_settings(config, params, pre, ds, 32))
        for r in TUNED_AT:
            at = gflops(config, make_plan(config, MergeOptions("tome", r)))
            points = at_budget(config, methods, at)
            for o in [MergeOptions()] + list(points.values()):
                if results.get("all", o) is None:
                    results.put("all", o, correct_per_image(make_forward(config, make_plan(config, o)), params,
                                                            images, labels, 32))
            ref = results.get("all", points["tome"])
            for label, o in points.items():
                c = results.get("all", o)
                d = paired_difference(c, ref)
                rows.append({"model": name, "tome_r": r, "method": label, "plan": describe(o),
                             "gflops": gflops(config, make_plan(config, o)), "top1": float(c.mean()),
                             "vs_tome": d["diff"], "vs_tome_lo": d["lo"], "vs_tome_hi": d["hi"],
                             "p_mcnemar": d["p_mcnemar"], "dense_top1": float(results.get("all", MergeOptions()).mean())})
    cols = ["model", "tome_r", "method", "plan", "gflops", "top1", "vs_tome", "vs_tome_lo", "vs_tome_hi", "p_mcnemar"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"images": args.cifar_images, "rows": rows}, indent=1))
    (out / "summary.md").write_text(markdown_table(rows, cols) + "\n")
    print(format_table(rows, cols))


def plot(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in METHODS:
        pts = sorted((r["gflops"], r["union_top1"]) for r in rows if r["method"] == label)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("top-1, 2300 real ImageNet images")
    ax.set_title("DeiT-Tiny, training-free token reducers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"top1_vs_gflops.{ext}")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(report_errors(main, "reducers_real"))
