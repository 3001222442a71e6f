"""`fastvit` command line: a thin layer over the library. Every command has --json."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastvit_jax import __version__
from fastvit_jax.cli import arguments
from fastvit_jax.util import compile_cache, parallel, supervise
from fastvit_jax.studies.analysis import run_analysis
from fastvit_jax.studies.bench import compare_sizes
from fastvit_jax.checkpoints.checkpoint import convert, describe
from fastvit_jax.data import image_folder, load_arrays, load_image, open_dataset, pack_dataset, spread
from fastvit_jax.studies.demo import run_demo
from fastvit_jax.studies.embed import embed_files
from fastvit_jax.errors import FastViTError, report_errors
from fastvit_jax.merge import methods
from fastvit_jax.studies.evaluate import evaluate, predict
from fastvit_jax.merge.flops import gflops
from fastvit_jax.merge.options import MergeOptions, parse_points
from fastvit_jax.merge.plan import CLAMPED_NOTE, make_plan
from fastvit_jax.util.parallel import maybe_initialize_distributed
from fastvit_jax.checkpoints.plan_file import save_plan
from fastvit_jax.checkpoints.registry import model_rows
from fastvit_jax.util.report import format_table
from fastvit_jax.studies.sharpness import measure
from fastvit_jax.studies.sweep import remeasure_speed, run_sweep
from fastvit_jax.studies.train import train
from fastvit_jax.search.tune import SEARCH_SPACE, tune, tune_summary, tune_token_buckets
from fastvit_jax.studies.visualize import paint_plans
from fastvit_jax.checkpoints.augreg import COLUMNS, index
from fastvit_jax.search import calibrate
from fastvit_jax.merge.methods import atm
from fastvit_jax.checkpoints.sources import cache_dir

COMMANDS: list = []  # (name, help, fn, argument adders), in `fastvit --help` order


def command(name: str, help: str, *adders):
    """Register fn as `fastvit NAME`; each adder is called with the command's parser."""
    def register(fn):
        COMMANDS.append((name, help, fn, adders))
        return fn
    return register


def arg(*names, **kw):
    return lambda p: p.add_argument(*names, **kw)


MODEL, MERGE, MERGE_GRID = arguments.add_model_args, arguments.add_merge_args, partial(arguments.add_merge_args, several=True)
DATA = arguments.add_data_args
BATCH = arg("--batch-size", type=arguments.positive_int, default=32)
LIMIT = arg("--limit", type=arguments.positive_int, help="use N images spread evenly over the data set")


def emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=2, default=float) if args.json else text)


def merged(args, model, method: str | None = None):
    """The model with the merge flags' plan (r chosen by --target-* when given); notes a clamped plan."""
    model = model.merge(arguments.merge_options(args, model.config, model.params, method))
    if arguments.has_target(args) and not args.json:
        print(f"chosen: r={model.plan.r} ({model.gflops:.3f} GFLOPs)\n{model.plan.describe()}", file=sys.stderr)
    note_clamped([model.plan] if model.plan.clamped else [])
    return model


def note_clamped(plans: list) -> None:
    """One note naming the plans whose r was clamped, and the r each block used."""
    if plans:
        used = "; ".join(f"{p.options.label}: r per block {[op.r for op in p.ops]}" for p in plans[:3])
        arguments.note(f"{', '.join(p.options.label for p in plans)}: {CLAMPED_NOTE} (used: {used})")


# ---------------------------------------------------------------- commands
@command("models", "list registered models",
         arg("--augreg", action="store_true", help="list the AugReg index instead (every file in gs://vit_models/augreg "
                                                   "with pretraining, fine-tuning and recorded top-1); any FILE "
                                                   "loads as --checkpoint FILE"))
def cmd_models(args):
    if args.augreg:

        notes: list[str] = []
        rows = index(notes=notes)
        for note in notes:
            print(f"fastvit: note: {note}", file=sys.stderr)
        emit(args, rows, format_table(rows, list(COLUMNS)))
        return
    rows = model_rows()
    shown = [{**r, "classes": "zero-shot" if r["tokenizer"] else r["classes"]} for r in rows]  # two-tower files
    emit(args, rows, format_table(shown, ["name", "family", "variant", "res", "classes", "preprocessing", "file"]))


@command("demo", "offline demo: the bundled real DeiT-Tiny on bundled images, dense vs merged",
         arg("--configs", default="none:0,tome:8,tome:13,dfe:8,dfe:13,lgtm:8,lgtm:13", help="comma-separated METHOD:R"),
         arg("--runs", type=arguments.positive_int, default=3, help="timed rounds (median)"),
         arg("--show", type=int, default=8, help="predictions to print"))
def cmd_demo(args):
    res = run_demo(parse_points(args.configs), runs=args.runs, progress=not args.json)
    lines = ["bundled DeiT-Tiny/16 (real ImageNet-1k weights) on %d bundled ImageNet images" % res["images"], ""]
    for p in res["predictions"][: args.show]:
        t = p["top5"][0]
        lines.append(f"  {Path(p['image']).name:40s} -> {t['label']} ({t['prob']:.2f})  true: {p['true_label']}")
    lines += ["", format_table(res["rows"], ["method", "r", "top1", "gflops", "images_per_s", "speedup"])]
    emit(args, res["rows"], "\n".join(lines))


@command("inspect", "show the inferred family, config and key/shape table of a checkpoint", arg("file"),
         arg("--tower", help="image tower of a two-tower checkpoint"))
def cmd_inspect(args):
    d = describe(args.file, args.tower)
    keys = [{"key": k, "shape": str(tuple(shape)), "dtype": dtype} for k, (shape, dtype) in d["keys"].items()]
    desc = d["description"]
    said = "\n".join(f"    {k}: {desc['preprocess'].get(k, desc.get(k))}  <- {src}" for k, src in desc["sources"].items())
    head = (f"{args.file}\n  family: {d['config']['family']} ({d['config']['variant']}), {d['layout']} layout"
            + (f", read from {d['local']}" if d["local"] != args.file else "") + "\n  ")
    emit(args, d, head + "  ".join(f"{k}={v}" for k, v in d["config"].items() if k not in ("family", "variant"))
         + f"\n  parameters: {d['parameters']:,}\n  what the file says (and where):\n{said}\n\n"
         + format_table(keys, ["key", "shape", "dtype"]))


@command("convert", "convert a checkpoint (timm/DeiT .safetensors/.pth, .npz, orbax) to .npz or orbax",
         arg("src"), arg("dst", help="OUT.npz, or a folder for orbax (a name without an extension, or OUT.orbax)"),
         arg("--format", choices=["npz", "orbax"], help="default: npz if DST ends in .npz, else orbax"),
         arg("--overwrite", action="store_true", help="replace DST if it exists (refused otherwise)"),
         arg("--model", help="registered model the file is (its GELU and preprocessing are written into DST)"))
def cmd_convert(args):
    res = convert(args.src, args.dst, args.format, meta=arguments.model_meta(args), overwrite=args.overwrite)
    emit(args, res, f"wrote {res['dst']} ({res['format']}, {res['variant']}, {res['image_size']}px, "
                    f"{res['num_classes']} classes; {res['meta']['gelu']} GELU, {res['meta']['preprocessing']} "
                    f"preprocessing{'; assumed ' + ', '.join(res['assumed']) + ': pass --model to say what it is' if res['assumed'] else ''})")


@command("predict", "top-5 classes of images", arg("images", nargs="+"), MODEL, MERGE)
def cmd_predict(args):
    arguments.check_images_exist(args.images)
    model = merged(args, arguments.load_model(args))
    results, failed = predict(model.forward, model.params, args.images, model.preprocessing, model.labels,
                              pair_sigmoid=model.config.l2_normalize)
    sig = lambda t: f"  (sigmoid {t['sigmoid']:.4f})" if "sigmoid" in t else ""
    lines = [line for r in results for line in
             [r["image"], *(f"  {t['prob']:.4f}  {t['index']:5d}  {t['label']}{sig(t)}" for t in r["top5"])]]
    if failed and not results:
        raise FastViTError("no readable image: " + "; ".join(f"{p}: {why}" for p, why in failed))
    said = {"options": model.options.to_dict(), "gflops": model.gflops}  # what produced each row
    rows = [{**r, **said} for r in results] + [{"image": p, "error": why} for p, why in failed]
    emit(args, rows,
         "\n".join(lines + [f"skipped {p}: {why}" for p, why in failed]))


@command("embed", "image features (pooled; --tokens adds per-token features and sources), dense or merged",
         arg("images", nargs="+"), MODEL, MERGE, BATCH,
         arg("--tokens", action="store_true", help="also the final tokens, their sizes and the patches each holds"),
         arg("--out", required=True, help="OUT.npz: features (B, D), paths[, tokens, sizes, sources]"))
def cmd_embed(args):
    arguments.check_images_exist(args.images)
    model = merged(args, arguments.load_model(args, need_head=False))
    config, plan = model.config, model.plan
    out, failed = embed_files(config, model.params, args.images, model.preprocessing, plan, tokens=args.tokens,
                              batch_size=args.batch_size, runtime=model.runtime)
    if not len(out["paths"]):
        raise FastViTError("no readable image: " + "; ".join(f"{p}: {why}" for p, why in failed))
    np.savez(args.out, **out)
    shapes = {k: list(v.shape) for k, v in out.items() if k != "paths"}
    emit(args, {"out": args.out, "images": len(out["paths"]), "shapes": shapes, "gflops": gflops(config, plan),
                "plan": plan.summary(), "failed": [{"image": p, "error": why} for p, why in failed]},
         "\n".join([f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
                    + f" ({gflops(config, plan):.2f} GFLOPs per image)"] + [f"skipped {p}: {why}" for p, why in failed]))


@command("eval", "top-1/top-5 accuracy and images/s on a data set", MODEL, MERGE, DATA, BATCH, LIMIT,
         arg("--no-progress", action="store_true"))
def cmd_eval(args):
    maybe_initialize_distributed()
    model = merged(args, arguments.load_model(args))
    plan = model.plan
    res = evaluate(model.forward, model.params, arguments.open_data(args).limit(args.limit), model.preprocessing,
                   batch_size=args.batch_size, progress=not args.no_progress, num_classes=model.config.num_classes)
    res.update({"gflops": model.gflops, "method": plan.method, "r": plan.r, "clamped": plan.clamped,
                "schedule": plan.options.schedule,
                "reducer": plan.summary()["reducer"] if methods.get(plan.method).kind == "global" else "-",
                "options": plan.options.to_dict(), "plan": plan.summary()})
    if args.zero_shot:
        res["zero_shot"] = arguments.zero_shot_summary(args)
    text = format_table([res], ["method", "reducer", "schedule", "top1", "top5", "images", "images_per_s", "gflops",
                                "clamped"])
    emit(args, res, "\n".join([text] + [f"skipped {p}: {why}" for p, why in res["failed"]]))


@command("sweep", "accuracy, GFLOPs and images/s over methods x r; resumable; Pareto plots", MODEL, DATA,
         MERGE_GRID, LIMIT, BATCH, arg("--bench-runs", type=arguments.positive_int, default=5, help="timed runs per point for images/s"),
         arg("--out", required=True, help="directory for results.csv, results.jsonl and plots"),
         arg("--remeasure-speed", action="store_true",
             help="only re-time images/s of the points already in --out (run on a quiet machine)"))
def cmd_sweep(args):
    model = arguments.load_model(args)
    params, config = model.params, model.config
    kw = dict(batch_size=args.batch_size, progress=not args.json, title=f"{model_name(args)} on {args.data}",
              runtime=model.runtime)
    if args.remeasure_speed:
        rows = remeasure_speed(config, params, args.out, runs=args.bench_runs, **kw)
    else:
        stats: dict = {}
        rows = run_sweep(config, params, model.preprocessing, arguments.open_data(args).limit(args.limit), args.out,
                         arguments.merge_points(args, config), bench_runs=args.bench_runs, stats=stats, **kw)
        if stats.get("reused"):
            arguments.note(f"{args.out}: {stats['reused']} of {stats['asked']} points read back from an earlier run "
                           f"(same settings); {stats['asked'] - stats['reused']} measured now")
    clamped = [make_plan(config, MergeOptions.from_dict(r["options"])) for r in rows if r.get("clamped")]
    note_clamped(clamped)
    text = format_table(rows, ["method", "schedule", "top1", "top5", "gflops", "images_per_s", "clamped"]) + \
        f"\nresults: {args.out}/results.csv, results.jsonl; plots: top1_vs_gflops.png/.svg, top1_vs_throughput.png/.svg"
    emit(args, [{k: v for k, v in r.items() if k != "plan"} for r in rows], text)


@command("sharpness", "dominant Hessian eigenvalue lambda_max of the loss (dense or merged)", MODEL, MERGE,
         arguments.add_sharpness_args)
def cmd_sharpness(args):
    model = merged(args, arguments.load_model(args))
    out = measure(model.config, model.params, model.preprocessing, arguments.open_data(args), model.plan,
                  num_images=args.num_images, micro_batch=args.micro_batch, iters=args.iters, tol=args.tol,
                  seed=args.seed, solver=args.solver, progress=not args.json, runtime=model.runtime)
    emit(args, out, format_table([out], ["method", "r", "skip", "lambda_max", "iterations", "hvps", "wall_s"]))


@command("train", "train --model's architecture from scratch (resumable); writes a native checkpoint", arguments.add_train_args)
@command("finetune", "fine-tune with AdamW or SAM (resumable); writes a native checkpoint", arguments.add_train_args)
def cmd_finetune(args):
    from_scratch = args.command == "train"
    if from_scratch and not args.model:
        raise FastViTError("fastvit train needs --model (the architecture), e.g. vit_cifar_patch4_32")
    model = arguments.load_model(args, need_weights=not from_scratch or args.checkpoint is not None)
    images, labels = load_arrays(arguments.open_data(args).limit(args.limit), model.preprocessing.for_training(),
                                 require_labels=True)
    res = train(model.config, model.params, images, labels, arguments.train_config(args), args.out, progress=not args.json,
                keep_checkpoints=args.keep_checkpoints)
    emit(args, res, f"wrote {res['out']} after {res['steps']} steps ({res['wall_s']:.0f} s"
                    + (f", resumed from step {res['resumed_from']}" if res["resumed_from"] else "") + ")")


@command("pack", "pack an image folder into one .npz (encoded bytes, labels) usable as --data",
         arg("folder"), arg("out", help="OUT.npz"))
def cmd_pack(args):
    ds = image_folder(args.folder)
    out = pack_dataset(ds, args.out)
    emit(args, {"out": str(out), "images": len(ds), "bytes": out.stat().st_size},
         f"wrote {out}: {len(ds)} images, {out.stat().st_size / 2**20:.1f} MiB (use it as --data {out})")


VISUALIZE_COLUMNS = ("columns: tokens = final tokens; merged_tokens = those holding more than one patch; "
                     "connected_share = share of those whose patches form one 4-connected region; mean_extent = "
                     "their mean bounding-box side, in patches")
COMPARE_NOTE = ("--compare uses the same r for both, not the same cost: LGTM's local blocks merge fewer tokens, so it "
                "keeps more tokens (and GFLOPs) than ToMe; compare at equal cost with --target-gflops")


@command("visualize", "paint the patches each final token holds (Figure 7 style)", arg("image"), MODEL, MERGE,
         arg("--compare", action="store_true", help="ToMe and LGTM side by side (same r)"),
         arg("--out", required=True, help="output image (.png)"))
def cmd_visualize(args):
    model = arguments.load_model(args)
    plans = [merged(args, model, method=m).plan for m in (("tome", "lgtm") if args.compare else (None,))]
    out, stats = paint_plans(model.config, model.params, load_image(args.image), model.preprocessing, plans, args.out,
                             model.runtime)
    rows = [{"method": m, **s} for m, s in stats.items()]
    emit(args, {"out": str(out), "regions": stats},
         format_table(rows, ["method", "r", "skip", "tokens", "merged_tokens", "connected_share", "mean_extent"])
         + f"\n{VISUALIZE_COLUMNS}" + (f"\n{COMPARE_NOTE}" if args.compare else "") + f"\nwrote {out}")


ANALYZE_COLUMNS = ("columns: mean pairwise cosine similarity of a block's tokens (over the images): x_pre = the "
                   "attention input (after the first LayerNorm), x_attn = the attention output before its projection, "
                   "x_post = after the attention residual; 'METHOD r=R' = mean cosine of the pairs that plan merged "
                   "in that block (empty where it merges nothing)")


@command("analyze", "token similarity per block, merged-pair similarity, posemb maps", MODEL, DATA,
         arg("--num-images", type=arguments.positive_int, default=32, help="images analysed, spread over --data"),
         partial(MERGE_GRID, methods="tome", r="10,20", targets=False),
         arg("--out", required=True, help="folder for analysis.json/.csv and the figures (.png/.svg)"))
def cmd_analyze(args):
    model = arguments.load_model(args)
    images, _ = load_arrays(spread(arguments.open_data(args), args.num_images), model.preprocessing)
    plans = [make_plan(model.config, o) for o in arguments.merge_points(args, model.config)]
    result, rows = run_analysis(model.config, model.params, images, plans, args.out, model.runtime)
    emit(args, result, format_table(rows, list(rows[0])) + "\n" + ANALYZE_COLUMNS + f"\nwrote {args.out}/analysis.json, "
         "analysis.csv, token_similarity, merged_similarity, posemb_similarity (.png/.svg)")


@command("bench", "time the jit-compiled forward, dense vs merged (random weights without --checkpoint)",
         MODEL, MERGE, BATCH, arg("--runs", type=arguments.positive_int, default=50),
         arg("--batch-sizes", type=arguments.positive_int_list, metavar="N,N,...",
             help="time at each batch size (dense and merged round-robin within each); replaces --batch-size"))
def cmd_bench(args):
    if args.model is None and args.checkpoint is None:
        args.model = "vit_small_patch16_224"
    random = args.checkpoint is None
    model = merged(args, arguments.load_model(args, need_weights=not random))
    params, config, plan = model.params, model.config, model.plan
    sizes, runtime = args.batch_sizes or [args.batch_size], model.runtime
    with tqdm(total=args.runs * len(sizes), desc=f"bench: compiling {2 * len(sizes)} programs", disable=args.json,
              leave=False) as bar:
        results = compare_sizes(config, params, plan, sizes, runs=args.runs, runtime=runtime, bar=bar)
    rows = [row for r in results for row in (dict(name="dense", **r["dense"], speedup=1.0),
                                             dict(name=plan.options.label, **r["merged"], speedup=r["speedup"]))]
    text = (format_table(rows, ["name", "batch_size", "images_per_s", "speedup", "gflops", "trace_s", "compile_s",
                                "compiled_from"])
            + f"\nideal speedup (by FLOPs): {results[0]['ideal_speedup']:.2f}x\n{plan.describe()}\nweights: "
            + ("random (timing needs only the architecture; --checkpoint times a file's)" if random else model.source))
    for r in results:
        r["weights"] = "random" if random else model.source
    emit(args, results[0] if not args.batch_sizes else results, text)


@command("plan", "show the merge plan of the flags (blocks, tokens, GFLOPs); --out saves it for --plan", MODEL, MERGE,
         arg("--out", help="write the plan file here (JSON), with the command that made it"),
         arg("--calibrate", metavar="DATA", help="atm (or tome, dfe): calibrate the per-block r on these images from "
                                                 "similarity thresholds (with --target-gflops: the thresholds that "
                                                 "meet it)"),
         arg("--thresholds", default=None, metavar="ALPHA,BETA,MIN",
             help="ATM's theta_l = max(ALPHA - (exp(BETA (l-1)) - 1), MIN); default 0.9,0.03,0.5 (with "
                  "--target-gflops, ALPHA is searched)"),
         arg("--quantile", type=float, default=0.5, help="--calibrate: r of a block = this quantile of its per-image "
                                                         "counts (0.5: the median)"),
         arg("--calibration-images", type=arguments.positive_int, default=128,
             help="--calibrate: images used, spread over DATA"))
def cmd_plan(args):
    if args.calibrate:
        return calibrated_plan(args)
    # the plan needs only the architecture (a measured speedup target times random weights as well)
    model = merged(args, arguments.load_model(args, need_weights=args.checkpoint is not None))
    emit_plan(args, model.config, model.plan)


def emit_plan(args, config, plan, extra: dict | None = None):
    out = None
    if args.out:
        out = save_plan(args.out, config, plan, model_name=model_name(args), command=command_line(args), extra=extra)
    emit(args, {"options": plan.options.to_dict(), "plan": plan.summary(), "gflops": gflops(config, plan),
                "out": str(out) if out else None, **(extra or {})},
         f"{plan.describe()}\n{gflops(config, plan):.3f} GFLOPs per image" + (f"\nwrote {out}" if out else ""))


def calibrated_plan(args):
    """`plan --calibrate DATA`: ATM's thresholds measured on images into a static r per block."""

    calibrate.check_method(args.method)  # before the model loads
    if args.r or args.r_list or args.keep or args.inflect or args.target_speedup or args.plan:
        raise FastViTError("--calibrate chooses the schedule: leave out --r, --r-list, --keep, --inflect, "
                           "--target-speedup and --plan")
    try:
        thresholds = tuple(float(v) for v in (args.thresholds or ",".join(map(str, atm.DEFAULT_THRESHOLDS))).split(","))
        if len(thresholds) != 3 or not all(math.isfinite(t) for t in thresholds):
            raise ValueError
    except ValueError:
        raise FastViTError(f"--thresholds {args.thresholds!r}: expected ALPHA,BETA,MIN (three finite numbers)") from None
    model = arguments.load_model(args)
    params, config = model.params, model.config

    images, _ = load_arrays(spread(open_dataset(args.calibrate), args.calibration_images), model.preprocessing)
    options = arguments.point_options(args, args.method, 0)
    kw = dict(quantile=args.quantile, runtime=model.runtime)
    if args.target_gflops is not None:

        stats: dict = {}
        options, alpha = calibrate.calibrate_to_budget(config, params, images, options, args.target_gflops,
                                                       beta=thresholds[1], floor=thresholds[2],
                                                       progress=not args.json, resume=cache_dir() / "calibrate",
                                                       stats=stats, **kw)
        if stats["resumed"]:
            print(f"fastvit: note: resumed an interrupted calibration: {stats['resumed']} of its "
                  f"{stats['resumed'] + stats['computed']} threshold steps read back", file=sys.stderr)
        thresholds = (alpha, *thresholds[1:])
    else:
        options = calibrate.calibrate_schedule(config, params, images, options, thresholds=thresholds, **kw)
    plan = make_plan(config, options)
    emit_plan(args, config, plan, {"calibration": {"data": args.calibrate, "images": len(images),
                                                   "thresholds": list(thresholds), "quantile": args.quantile}})


@command("tune", "search methods and knobs for the most accurate plan under a budget, on your images (resumable)",
         MODEL, DATA, BATCH, LIMIT,
         arg("--target-gflops", type=arguments.positive_float, help="budget: at most X GFLOPs per image"),
         arg("--target-speedup", type=arguments.positive_float, help="budget: at least X times fewer FLOPs than dense"),
         arg("--methods", default=",".join(SEARCH_SPACE), help=f"comma-separated, from {', '.join(SEARCH_SPACE)}"),
         arg("--metrics", default="", help="similarity features tried, comma-separated (e.g. k,x_pre); default: "
                                           "each method's own (k; mctf: x)"),
         arg("--subset", type=arguments.positive_int, default=250, help="images every candidate is scored on first"),
         arg("--finalists", type=arguments.positive_int, default=4, help="best candidates scored on all images"),
         arg("--out", required=True, help="the best plan's file (JSON; use it as --plan); results in OUT.tune/"))
def cmd_tune(args):
    if (args.target_gflops is None) == (args.target_speedup is None):
        raise FastViTError("fastvit tune needs one budget: --target-gflops X or --target-speedup X")
    if args.token_buckets is None:  # scored, never timed: fewer programs to compile beat padded FLOPs
        args.token_buckets = tune_token_buckets()
    model = arguments.load_model(args)
    target = args.target_gflops or model.gflops / args.target_speedup
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] or [None]
    for m in metrics:
        MergeOptions(metric=m)  # one line naming the allowed metrics
    res = tune(model.config, model.params, model.preprocessing, arguments.open_data(args).limit(args.limit),
               target_gflops=target, out=args.out, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
               metrics=metrics, subset=args.subset, finalists=args.finalists, batch_size=args.batch_size,
               runtime=model.runtime, progress=not args.json)
    out = save_plan(args.out, model.config, make_plan(model.config, res["best"]), model_name=model_name(args),
                    command=command_line(args), extra={"tune": tune_summary(res)})
    emit(args, {**tune_summary(res), "best": res["best"].to_dict(), "out": str(out)}, tune_table(res, target, out))


def tune_table(res: dict, target: float, out) -> str:
    rows = [{**r, "top1_95": f"[{r['top1_lo']:.3f}, {r['top1_hi']:.3f}]",
             "vs_tome_95": f"{r['vs_tome']:+.3f} [{r['vs_tome_lo']:+.3f}, {r['vs_tome_hi']:+.3f}]"} for r in res["rows"]]
    return (format_table(rows, ["plan", "gflops", "subset_top1", "top1", "top1_95", "vs_tome_95", "p_mcnemar"])
            + f"\n{res['candidates']} candidates at <= {target:.3f} GFLOPs on {res['subset']} images, the best "
              f"{len(rows)} on all {res['images']}; best: {rows[0]['plan']}\nwrote {out} (use it as --plan {out})")


def model_name(args) -> str:
    return args.model or (Path(args.checkpoint).name if args.checkpoint else "deit_tiny_patch16_224 (bundled)")


def command_line(args) -> str:
    return " ".join(["fastvit"] + [shlex.quote(a) for a in args.argv])


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = arguments.ArgumentParser(prog="fastvit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastvit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, fn, adders in COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        for add in adders:
            add(p)
        p.set_defaults(fn=fn)
    return parser


def out_of_memory(error: BaseException) -> bool:
    """XLA's allocation failures, at compile or run time, on any backend."""
    text = str(error)
    return type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text)


def run_command(args):
    """args.fn(args), with XLA's out-of-memory text turned into one line that says what to change."""
    try:
        return args.fn(args)
    except Exception as e:

        if parallel.lost_peer(e):
            parallel.exit_lost_peer(e)
        if not out_of_memory(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:160]
        size = getattr(args, "batch_sizes", None) or getattr(args, "batch_size", None)
        at = f" at --batch-size {','.join(map(str, size)) if isinstance(size, list) else size}" if size else ""
        per_step = " or --examples-per-step N (a batch run N images at a time)" if hasattr(args, "examples_per_step") else ""
        import jax

        raise FastViTError(f"out of memory on {jax.devices()[0].device_kind}{at} ({first}); pass a smaller "
                           f"--batch-size{per_step}") from None


def main(argv: list[str] | None = None) -> int:
    if supervise.needed():  # a multi-process run: a dead peer must end this one in one line
        return supervise.run(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad command line (already reported in one line)
        return e.code or 0
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in plan files
    compile_cache.enable(getattr(args, "compile_cache", None))
    arguments.new_command()
    plain = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"fastvit: warning: {message}\n"  # one line, no source
    try:
        return report_errors(lambda: run_command(args), "fastvit")
    finally:
        warnings.formatwarning = plain
