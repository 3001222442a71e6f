"""`fastvit` command line: a thin layer over the library. Every command has --json."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from fastvit_jax.errors import FastViTError, report_errors


# ---------------------------------------------------------------- output helpers
def format_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=float) if args.json else text)


# ---------------------------------------------------------------- shared options
def add_model_args(p: argparse.ArgumentParser, checkpoint_required: bool = False) -> None:
    p.add_argument("--checkpoint", required=checkpoint_required,
                   help="checkpoint: Google .npz, orbax directory, or timm .safetensors/.pth")
    p.add_argument("--model", help="registered model name (`fastvit models`); default: inferred from --checkpoint, "
                                    "or the bundled deit_tiny_patch16_224 when no checkpoint is given")
    p.add_argument("--preprocessing", choices=["inception", "deit", "crop"], help="override the model's preprocessing")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction for deit preprocessing (timm 0.9, DeiT paper 0.875)")
    p.add_argument("--gelu", choices=["tanh", "exact"], help="override the MLP activation (exact for DeiT/timm weights)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="activation dtype")
    add_examples_per_step_arg(p)


def add_examples_per_step_arg(p: argparse.ArgumentParser) -> None:
    """--examples-per-step, shared with the benchmark scripts (see fastvit_jax.forward)."""
    p.add_argument("--examples-per-step", default="auto", metavar="auto|none|N",
                   help="examples run at once inside a batch: auto = a cache-sized slice on CPU, the whole batch "
                        "on GPU/TPU; none = the whole batch")


def add_merge_args(p: argparse.ArgumentParser) -> None:
    from fastvit_jax.merge.plan import METHODS, METRICS

    g = p.add_argument_group("token merging")
    g.add_argument("--method", choices=METHODS, default="none")
    g.add_argument("--r", type=int, default=0, help="tokens merged per block (per layer for local: spread over windows)")
    g.add_argument("--skip", type=int, help="blocks without merging at the start (default depth//6 for dfe/lgtm, else 0)")
    g.add_argument("--window", type=int, default=7, help="initial LGTM window size")
    g.add_argument("--transition", type=int, help="number of local LGTM blocks (default: computed as in Algorithm 1)")
    g.add_argument("--metric", choices=METRICS, default="k", help="similarity feature")
    g.add_argument("--no-prop-attn", action="store_true", help="disable proportional attention")
    g.add_argument("--target-gflops", type=float, help="pick the smallest r whose plan has at most X GFLOPs")
    g.add_argument("--target-speedup", type=float, help="pick the smallest r reaching X times the dense speed")
    g.add_argument("--speedup-by", choices=["measured", "flops"], default="measured",
                   help="--target-speedup judged by timing the jit forward here, or by the FLOPs ratio")


def plan_from_args(args, config, params=None):
    from fastvit_jax import budget
    from fastvit_jax.merge.plan import make_plan

    kw = dict(skip=args.skip, window=args.window, transition=args.transition, metric=args.metric,
              prop_attn=not args.no_prop_attn)
    target_gflops, target_speedup = getattr(args, "target_gflops", None), getattr(args, "target_speedup", None)
    if target_gflops is None and target_speedup is None:
        return make_plan(config.depth, config.grid, args.method, args.r, **kw)
    if args.method == "none":
        raise FastViTError("--target-gflops/--target-speedup need --method (tome, dfe, lgtm or drop)")
    if target_gflops is not None:
        plan = budget.plan_for_gflops(config, args.method, target_gflops, kw)
    else:
        plan = budget.plan_for_speedup(config, args.method, target_speedup, params,
                                       measured=args.speedup_by == "measured", plan_kw=kw)
    if not getattr(args, "json", False):
        from fastvit_jax.flops import gflops

        print(f"chosen: r={plan.r} ({gflops(config, plan):.3f} GFLOPs)\n{plan.describe()}", file=sys.stderr)
    return plan


def resolve_model(args, need_weights: bool = True):
    """(params, config, preprocess) from --checkpoint/--model and overrides."""
    from fastvit_jax.hub import load_model

    return load_model(args.model, args.checkpoint, gelu=args.gelu, preprocessing=args.preprocessing,
                      crop_pct=args.crop_pct, random_weights=not need_weights)


# ---------------------------------------------------------------- commands
def cmd_models(args):
    from fastvit_jax.registry import REGISTRY

    rows = [{"name": e.name, "variant": e.config.variant, "res": e.config.image_size,
             "classes": e.config.num_classes, "preprocessing": e.preprocessing,
             "file": "bundled" if e.bundled else (e.filename or "(convert)"), "url": e.url} for e in REGISTRY.values()]
    emit(args, rows, format_table(rows, ["name", "variant", "res", "classes", "preprocessing", "file"]))


def cmd_inspect(args):
    from fastvit_jax import checkpoint

    params = checkpoint.read_params(args.file)
    config = checkpoint.infer_config(params)
    flat = checkpoint.flatten(params)
    n = sum(int(v.size) for v in flat.values())
    cfg = {k: getattr(config, k) for k in ("width", "depth", "heads", "mlp_dim", "patch", "image_size",
                                          "num_classes", "pre_logits")}
    cfg["variant"] = config.variant
    payload = {"file": str(args.file), "config": cfg, "parameters": n,
               "keys": {k: list(v.shape) for k, v in flat.items()}}
    text = (f"{args.file}\n  " + "  ".join(f"{k}={v}" for k, v in cfg.items()) + f"\n  parameters: {n:,}\n\n"
            + format_table([{"key": k, "shape": str(tuple(v.shape))} for k, v in flat.items()], ["key", "shape"]))
    emit(args, payload, text)


def cmd_convert(args):
    from fastvit_jax import checkpoint

    params = checkpoint.read_params(args.src)
    config = checkpoint.infer_config(params)
    checkpoint.check_params(params, config, str(args.src))
    dst = Path(args.dst)
    if args.format == "orbax" or (args.format is None and dst.suffix != ".npz"):
        out = checkpoint.save_orbax(params, dst)
        fmt = "orbax"
    else:
        out = checkpoint.save_npz(params, dst)
        fmt = "npz"
    emit(args, {"src": str(args.src), "dst": str(out), "format": fmt, "variant": config.variant},
         f"wrote {out} ({fmt}, {config.variant}, {config.image_size}px, {config.num_classes} classes)")


def cmd_predict(args):
    import jax
    import numpy as np

    from fastvit_jax.data import Dataset, batches, label_names
    from fastvit_jax.forward import make_forward

    params, config, pre = resolve_model(args)
    plan = plan_from_args(args, config, params)
    forward = make_forward(config, plan, args.dtype, args.examples_per_step)
    names = label_names(config.num_classes)
    ds = Dataset([(Path(p), -1) for p in args.images])
    failed, results = [], []
    for b in batches(ds, pre, min(len(ds), 32), failed=failed):
        probs = np.asarray(jax.nn.softmax(forward(params, b.images)[: b.count]))
        for path, pr in zip(b.paths, probs):
            top = np.argsort(-pr, kind="stable")[:5]
            results.append({"image": path, "top5": [{"index": int(i), "label": names[i], "prob": float(pr[i])} for i in top]})
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {t['prob']:.4f}  {t['index']:5d}  {t['label']}" for t in r["top5"]]
    lines += [f"skipped {p}: {why}" for p, why in failed]
    emit(args, results, "\n".join(lines))
    return 1 if failed and not results else 0


def cmd_eval(args):
    from fastvit_jax.data import open_dataset
    from fastvit_jax.evaluate import evaluate
    from fastvit_jax.flops import gflops
    from fastvit_jax.forward import make_forward
    from fastvit_jax.parallel import maybe_initialize_distributed

    maybe_initialize_distributed()
    params, config, pre = resolve_model(args)
    plan = plan_from_args(args, config, params)
    ds = open_dataset(args.data).limit(args.limit)
    res = evaluate(make_forward(config, plan, args.dtype, args.examples_per_step), params, ds, pre, batch_size=args.batch_size,
                   progress=not args.no_progress)
    res.update({"gflops": gflops(config, plan), "method": plan.method, "r": plan.r, "plan": plan.summary()})
    text = format_table([res], ["method", "r", "top1", "top5", "images", "images_per_s", "gflops"])
    if res["failed"]:
        text += "\n" + "\n".join(f"skipped {p}: {why}" for p, why in res["failed"])
    emit(args, res, text)


def cmd_bench(args):
    from fastvit_jax.bench import compare

    params, config, _ = resolve_model(args, need_weights=args.checkpoint is not None)
    plan = plan_from_args(args, config, params)
    res = compare(config, params, plan, batch_size=args.batch_size, runs=args.runs, dtype=args.dtype,
                  examples_per_step=args.examples_per_step)
    rows = [dict(name="dense", **res["dense"]), dict(name=f"{plan.method} r={plan.r}", **res["merged"])]
    text = (format_table(rows, ["name", "images_per_s", "gflops", "compile_s"])
            + f"\nspeedup {res['speedup']:.2f}x (ideal, by FLOPs: {res['ideal_speedup']:.2f}x)"
            + f"\n{plan.describe()}")
    emit(args, res, text)


def cmd_sweep(args):
    from fastvit_jax.data import open_dataset
    from fastvit_jax.sweep import parse_r, remeasure_speed, run_sweep

    params, config, pre = resolve_model(args)
    ds = open_dataset(args.data).limit(args.limit)
    plan_kw = {"metric": args.metric, "window": args.window, "prop_attn": not args.no_prop_attn}
    if args.skip is not None:
        plan_kw["skip"] = args.skip
    if args.remeasure_speed:
        rows = remeasure_speed(params, config, args.out, batch_size=args.batch_size, runs=args.bench_runs,
                               progress=not args.json, title=args.model or "")
    else:
        rows = run_sweep(params, config, pre, ds, args.out, args.methods.split(","), parse_r(args.r),
                         batch_size=args.batch_size, bench_runs=args.bench_runs, plan_kw=plan_kw,
                         progress=not args.json, title=args.model or "")
    rows = sorted(rows, key=lambda r: (r["method"], r["r"]))
    text = format_table(rows, ["method", "r", "top1", "top5", "gflops", "images_per_s"]) + \
        f"\nresults: {args.out}/results.csv, results.jsonl; plots: top1_vs_gflops.png/.svg, top1_vs_throughput.png/.svg"
    emit(args, [{k: v for k, v in r.items() if k != "plan"} for r in rows], text)


def cmd_sharpness(args):
    import time

    from fastvit_jax.data import load_arrays, open_dataset, spread
    from fastvit_jax.sharpness import lambda_max

    params, config, pre = resolve_model(args)
    plan = plan_from_args(args, config)
    ds = open_dataset(args.data)
    if len(ds) < args.num_images:
        raise FastViTError(f"--num-images {args.num_images} but {args.data} has {len(ds)} images")
    images, labels = load_arrays(spread(ds, args.num_images), pre, require_labels=True)
    if len(images) % args.micro_batch:
        raise FastViTError(f"{len(images)} readable images is not a multiple of --micro-batch {args.micro_batch}")
    t0 = time.perf_counter()
    res = lambda_max(config, params, images, labels, plan=plan, micro_batch=args.micro_batch, iters=args.iters,
                     tol=args.tol, seed=args.seed, method=args.solver, progress=not args.json)
    out = {"lambda_max": res.lambda_max, "iterations": res.iterations, "hvps": res.hvps, "converged": res.converged,
           "method": plan.method, "r": plan.r, "skip": plan.skip, "solver": args.solver,
           "images": args.num_images, "wall_s": time.perf_counter() - t0}
    emit(args, out, format_table([out], ["method", "r", "skip", "lambda_max", "iterations", "hvps", "wall_s"]))


def cmd_finetune(args):
    from fastvit_jax.data import load_arrays, open_dataset
    from fastvit_jax.train import TrainConfig, train

    from_scratch = args.command == "train"
    if from_scratch and not args.model:
        raise FastViTError("fastvit train needs --model (the architecture), e.g. vit_cifar_patch4_32")
    params, config, pre = resolve_model(args, need_weights=not from_scratch or args.checkpoint is not None)
    images, labels = load_arrays(open_dataset(args.data).limit(args.limit), pre.for_training(), require_labels=True)
    tc = TrainConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, rho=args.rho,
                     steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, ckpt_every=args.ckpt_every,
                     seed=args.seed, augment=not args.no_augment)
    res = train(config, params, images, labels, tc, args.out, progress=not args.json)
    emit(args, res, f"wrote {res['out']} after {res['steps']} steps ({res['wall_s']:.0f} s"
                    + (f", resumed from step {res['resumed_from']}" if res["resumed_from"] else "") + ")")


def cmd_pack(args):
    from fastvit_jax.data import image_folder, pack_dataset

    ds = image_folder(args.folder)
    out = pack_dataset(ds, args.out)
    emit(args, {"out": str(out), "images": len(ds), "bytes": out.stat().st_size},
         f"wrote {out}: {len(ds)} images, {out.stat().st_size / 2**20:.1f} MiB (use it as --data {out})")


def cmd_visualize(args):
    from fastvit_jax.data import load_image
    from fastvit_jax.visualize import final_sources, model_rgb, paint, region_stats, render, token_map

    params, config, pre = resolve_model(args)
    plan = plan_from_args(args, config)
    rgb, x = model_rgb(load_image(args.image), pre)
    methods = [plan.method] if not args.compare else ["tome", "lgtm"]
    panels, stats = [("input", rgb)], {}
    for m in methods:
        p = plan if m == plan.method else plan_from_args(argparse.Namespace(**{**vars(args), "method": m}), config)
        ids = token_map(final_sources(config, p, params, x), config.grid)
        stats[m] = {"r": p.r, "skip": p.skip, **region_stats(ids)}
        panels.append((f"{m} r={p.r} skip={p.skip}: {stats[m]['tokens']} tokens", paint(rgb, ids, config.patch)))
    out = render(panels, args.out)
    rows = [{"method": m, **s} for m, s in stats.items()]
    emit(args, {"out": str(out), "regions": stats},
         format_table(rows, ["method", "r", "skip", "tokens", "merged_tokens", "connected_share", "mean_extent"])
         + f"\nwrote {out}")


def cmd_analyze(args):
    import csv

    from fastvit_jax import analysis
    from fastvit_jax.data import load_arrays, open_dataset, spread
    from fastvit_jax.merge.plan import make_plan

    params, config, pre = resolve_model(args)
    images, _ = load_arrays(spread(open_dataset(args.data), args.num_images), pre)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = analysis.block_statistics(config, None, params, images)
    merged = {}
    for r in (int(x) for x in args.r_values.split(",")):
        plan = make_plan(config.depth, config.grid, args.method, r)
        merged[f"{args.method} r={r}"] = analysis.block_statistics(config, plan, params, images)["merged"]
    posemb = analysis.posemb_similarity(params, config.grid)
    result = {"token_similarity": {k: dense[k] for k in analysis.STAGES}, "merged_similarity": merged,
              "posemb_similarity": {f"{i},{j}": m.tolist() for (i, j), m in posemb.items()}, "images": len(images)}
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    with open(out / "analysis.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["block", *analysis.STAGES, *merged])
        for i in range(config.depth):
            w.writerow([i, *(dense[k][i] for k in analysis.STAGES), *(m[i] for m in merged.values())])
    analysis.plot_analysis(dense, merged, posemb, out)
    rows = [{"block": i, **{k: dense[k][i] for k in analysis.STAGES}, **{n: m[i] for n, m in merged.items()}}
            for i in range(config.depth)]
    emit(args, result, format_table(rows, ["block", *analysis.STAGES, *merged]) + f"\nwrote {out}/analysis.json, "
         "analysis.csv, token_similarity, merged_similarity, posemb_similarity (.png/.svg)")


def cmd_demo(args):
    from fastvit_jax.demo import run_demo

    res = run_demo([m.split(":") for m in args.configs.split(",")], runs=args.runs, progress=not args.json)
    lines = ["bundled DeiT-Tiny/16 (real ImageNet-1k weights) on %d bundled ImageNet images" % res["images"], ""]
    for p in res["predictions"][: args.show]:
        t = p["top5"][0]
        lines.append(f"  {Path(p['image']).name:40s} -> {t['label']} ({t['prob']:.2f})  true: {p['true_label']}")
    lines += ["", format_table(res["rows"], ["method", "r", "top1", "gflops", "images_per_s", "speedup"])]
    emit(args, res["rows"], "\n".join(lines))


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="labelled image folder (class folders or synset-named files)")
    p.add_argument("--optimizer", choices=["adamw", "sam", "asam"], default="sam")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=50, help="save resumable state every K steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--out", required=True, help="OUT.npz (Google layout) or a directory (orbax)")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvit", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, fn, help):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(fn=fn)
        return p

    command("models", cmd_models, "list registered models")
    p = command("demo", cmd_demo, "offline demo: the bundled real DeiT-Tiny on bundled images, dense vs merged")
    p.add_argument("--configs", default="none:0,tome:8,tome:13,dfe:8,dfe:13,lgtm:8,lgtm:13",
                   help="comma-separated METHOD:R")
    p.add_argument("--runs", type=int, default=3, help="timed runs per configuration (median)")
    p.add_argument("--show", type=int, default=8, help="predictions to print")
    p = command("inspect", cmd_inspect, "show the inferred config and key/shape table of a checkpoint")
    p.add_argument("file")
    p = command("convert", cmd_convert, "convert a checkpoint (timm/DeiT .safetensors/.pth, .npz, orbax) to .npz or orbax")
    p.add_argument("src")
    p.add_argument("dst", help="OUT.npz, or a directory for orbax")
    p.add_argument("--format", choices=["npz", "orbax"], help="default: npz if DST ends in .npz, else orbax")
    p = command("predict", cmd_predict, "top-5 classes of images")
    p.add_argument("images", nargs="+")
    add_model_args(p)
    add_merge_args(p)
    p = command("eval", cmd_eval, "top-1/top-5 accuracy and images/s on a data set")
    add_model_args(p)
    add_merge_args(p)
    p.add_argument("--data", required=True, help="image folder, or tfds:NAME[:SPLIT]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--no-progress", action="store_true")
    p = command("sweep", cmd_sweep, "accuracy, GFLOPs and images/s over methods x r; resumable; Pareto plots")
    add_model_args(p)
    p.add_argument("--data", required=True, help="image folder, or tfds:NAME[:SPLIT]")
    p.add_argument("--methods", default="tome,dfe,lgtm")
    p.add_argument("--r", default="0:16:2", help="START:STOP[:STEP] (inclusive) or a comma list")
    p.add_argument("--skip", type=int, help="override the methods' default skip")
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--metric", default="k")
    p.add_argument("--no-prop-attn", action="store_true")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bench-runs", type=int, default=5, help="timed runs per point for images/s")
    p.add_argument("--out", required=True, help="directory for results.csv, results.jsonl and plots")
    p.add_argument("--remeasure-speed", action="store_true",
                   help="only re-time images/s of the points already in --out (run on a quiet machine)")
    p = command("sharpness", cmd_sharpness, "dominant Hessian eigenvalue lambda_max of the loss (dense or merged)")
    add_model_args(p)
    add_merge_args(p)
    p.add_argument("--data", required=True, help="labelled image folder, or tfds:NAME[:SPLIT]")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8, help="images per HVP micro-batch (memory)")
    p.add_argument("--iters", type=int, default=20, help="max HVPs per power-iteration run / Lanczos steps")
    p.add_argument("--tol", type=float, default=1e-3, help="relative change to stop power iteration")
    p.add_argument("--solver", choices=["power", "lanczos"], default="power")
    p.add_argument("--seed", type=int, default=0)
    for name, help in (("finetune", "fine-tune with AdamW or SAM (resumable); writes a native checkpoint"),
                       ("train", "train --model's architecture from scratch (resumable); writes a native checkpoint")):
        p = command(name, cmd_finetune, help)
        add_train_args(p)
    p = command("pack", cmd_pack, "pack an image folder into one .npz (encoded bytes, labels) usable as --data")
    p.add_argument("folder")
    p.add_argument("out", help="OUT.npz")
    p = command("visualize", cmd_visualize, "paint the patches each final token holds (Figure 7 style)")
    p.add_argument("image")
    add_model_args(p)
    add_merge_args(p)
    p.add_argument("--compare", action="store_true", help="ToMe and LGTM side by side (same r)")
    p.add_argument("--out", required=True, help="output image (.png)")
    p = command("analyze", cmd_analyze, "token similarity per block, merged-pair similarity, posemb maps")
    add_model_args(p)
    p.add_argument("--data", required=True, help="image folder, or tfds:NAME[:SPLIT]")
    p.add_argument("--num-images", type=int, default=32)
    p.add_argument("--method", default="tome", help="merging method for the merged-pair similarity")
    p.add_argument("--r-values", default="10,20", help="r values compared in the merged-pair plot (Figure 3)")
    p.add_argument("--out", required=True)
    p = command("bench", cmd_bench, "time the jit-compiled forward, dense vs merged (random weights without --checkpoint)")
    add_model_args(p)
    add_merge_args(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=50)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "model", None) is None and args.command == "bench":
        args.model = "vit_small_patch16_224"
    warnings.filterwarnings("once", category=UserWarning)
    return report_errors(lambda: args.fn(args), "fastvit")


if __name__ == "__main__":
    sys.exit(main())
