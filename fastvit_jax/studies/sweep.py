"""Accuracy/FLOPs/speed over (method, r) points, appended as each finishes so a sweep resumes.

DIR/results.jsonl is the record (one JSON object per finished point); DIR/results.csv mirrors it.
Every row stores the MergeOptions that produced it, and DIR/settings.json everything else that
changes the numbers (weights, images, preprocessing, batch size): a rerun with other settings is
refused, and on restart points whose options are already in results.jsonl are skipped.
Remeasuring rebuilds each plan from its stored options. A corrupt (half-written) last line is
ignored with a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from fastvit_jax.studies.bench import time_forward
from fastvit_jax.data import Dataset, batches, check_labels
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.ahead import CompileAhead
from fastvit_jax.util.lock import exclusive
from fastvit_jax.studies.evaluate import evaluate
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions, parse_r  # noqa: F401  (parse_r: the --r syntax)
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.util.plots import plot_sweep
from fastvit_jax.studies.recorded import check_settings, fingerprint, weights_fingerprint
from fastvit_jax.runtime import Runtime

CSV_COLUMNS = [
    "method", "r", "top1", "top5", "gflops", "images_per_s", "images", "skip", "metric", "tokens_final", "clamped"]
CACHE_BYTES = 1.5e9  # preprocessed float32 images kept in memory across points (2500 at 224 px, all CIFAR)


def read_done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: ignoring a corrupt last line (interrupted write); that point is redone")
            else:
                raise FastViTError(f"{path}: line {i + 1} is not valid JSON; fix or remove it") from None
    return rows


def _append(out_dir: Path, row: dict) -> None:
    with open(out_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = out_dir / "results.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _rewrite(out_dir: Path, rows: list[dict]) -> None:
    """Rewrite both files from the rows that are known good (drops a torn tail from either)."""
    (out_dir / "results.jsonl").unlink(missing_ok=True)
    (out_dir / "results.csv").unlink(missing_ok=True)
    for row in rows:
        _append(out_dir, row)


def point_row(config, plan: MergePlan, measured: dict) -> dict:
    """One finished point: accuracy, cost, and the options that produced it (stored whole)."""
    return {"method": plan.method, "r": plan.r, "schedule": plan.options.schedule, "top1": measured["top1"],
            "top5": measured["top5"],
            "gflops": gflops(config, plan), "images_per_s": measured["images_per_s"], "images": measured["images"],
            "skip": plan.skip, "metric": plan.metric, "tokens_final": plan.final_tokens, "clamped": plan.clamped,
            "options": plan.options.to_dict(), "plan": plan.summary()}


def row_options(row: dict, path: Path) -> MergeOptions:
    if "options" not in row:
        raise FastViTError(f"{path}: a row for {row.get('method')} r={row.get('r')} has no 'options' (written by "
                           f"an older fastvit); sweep into a new --out, or add the options to each row")
    return MergeOptions.from_dict(row["options"])


def same_numbers(plan: MergePlan) -> tuple:
    """Plans with equal keys give equal numbers (every dense plan is the same model), so each key is measured once."""
    return (plan.ops,) if plan.is_dense else (plan.ops, plan.metric, plan.prop_attn)


def sweep_settings(config, params, preprocess, ds: Dataset, batch_size: int, runtime: Runtime = Runtime()) -> dict:
    """Everything besides the merge options that changes a sweep's numbers: the weights, the images
    (which files, with which labels), their preprocessing, the batch size images/s is timed at, the
    dtype, and how merging and attention run (their images/s)."""
    rt = runtime.resolved(config)
    weights = weights_fingerprint(params)
    # Files by their last two path parts (class folder, file name), so the same set read from another
    # place or machine is still the same; decoded-on-the-fly sets (tfds, packed) by position.
    items = fingerprint(*(f"{i if callable(src) else '/'.join(Path(src).parts[-2:])}:{label}"
                          for i, (src, label) in enumerate(ds.items)))
    return {"model": {"config": dataclasses.asdict(config), "weights": weights},
            "data": {"images": len(ds), "items": items},
            "preprocess": dataclasses.asdict(preprocess), "batch_size": batch_size,
            **({"dtype": rt.dtype} if rt.dtype != "float32" else {}),  # float32 sweeps predate the key,
            **({"merge_impl": rt.merge_impl} if rt.merge_impl != "gather" else {}),  # gather ones this key
            **({"attention": rt.attention} if rt.attention != "einsum" else {}),  # and einsum ones this
            **({"token_buckets": rt.token_buckets} if rt.token_buckets else {})}


SWEEP = {"what": "a sweep measured", "advice": "use another --out for these settings"}


def run_sweep(config, params, preprocess, ds: Dataset, out_dir: str | Path, points: list[MergeOptions], *,
              batch_size: int = 32, bench_runs: int = 5, progress: bool = True, plot: bool = True,
              title: str = "", runtime: Runtime = Runtime(), stats: dict | None = None) -> list[dict]:
    """Evaluate and time each MergeOptions point; points already in out_dir (same options, same
    settings) are kept, duplicates run once, and plans that give the same numbers are measured once.
    Rows come in the order the points were asked (then earlier rows not asked now); stats["reused"]
    counts asked points read back. One sweep writes a folder at a time (a second is refused while
    the first runs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir, folder=True, remove=True):
        return _sweep(config, params, preprocess, ds, out_dir, points, batch_size=batch_size,
                      bench_runs=bench_runs, progress=progress, plot=plot, title=title, runtime=runtime,
                      stats={} if stats is None else stats)


def _sweep(config, params, preprocess, ds, out_dir: Path, points, *, batch_size, bench_runs, progress, plot, title,
           runtime, stats) -> list[dict]:
    check_labels([label for _, label in ds.items], config.num_classes, ds.name)
    done = read_done(out_dir / "results.jsonl")
    check_settings(out_dir, sweep_settings(config, params, preprocess, ds, batch_size, runtime),
                   results_without_record=bool(done), **SWEEP)
    _rewrite(out_dir, done)  # drops a corrupt tail so appends stay valid
    finished = {row_options(row, out_dir / "results.jsonl"): row for row in done}
    asked = list(dict.fromkeys(points))
    todo = [o for o in asked if o not in finished]
    stats.update(asked=len(asked), reused=len(asked) - len(todo))
    measured = {same_numbers(make_plan(config, o)): row for o, row in finished.items()}
    rows = list(done)
    fits = len(ds) * config.image_size ** 2 * 3 * 4 <= CACHE_BYTES
    cache = list(batches(ds, preprocess, batch_size)) if todo and fits else None
    with compiling_ahead(config, params, runtime, batch_size, [o for o in todo if same_numbers(make_plan(config, o))
                                                                 not in measured]) as ahead:
        return _run_points(config, params, preprocess, ds, out_dir, todo, asked, finished, measured, rows, cache,
                           ahead, batch_size=batch_size, bench_runs=bench_runs, progress=progress, plot=plot,
                           title=title, runtime=runtime)


def compiling_ahead(config, params, runtime: Runtime, batch_size: int, todo: list[MergeOptions]) -> CompileAhead:
    """The next points' programs compiled in a worker thread while one is evaluated (util/ahead.py):
    JAX keeps what `lower(...).compile()` built for a jitted function, and the point's first call
    (evaluate, then the timing) runs it without compiling again (measured: 0.5 s against 10 s)."""
    example = jax.ShapeDtypeStruct((batch_size, config.image_size, config.image_size, 3), jnp.float32)
    build = lambda o: make_forward(config, make_plan(config, o), runtime).lower(params, example).compile()
    return CompileAhead(build, todo)


def _run_points(config, params, preprocess, ds, out_dir, todo, asked, finished, measured, rows, cache, ahead, *,
                batch_size, bench_runs, progress, plot, title, runtime) -> list[dict]:
    bar = tqdm(todo, desc="sweep", unit="point", disable=not progress)
    for options in bar:
        plan = make_plan(config, options)
        if same_numbers(plan) not in measured:
            bar.set_postfix_str(f"compiling {options.label}")
            ahead.get(options)  # its program is in the cache now (or compiles with its first batch)
            bar.set_postfix_str(f"evaluating {options.label}"
                                + (f" (compiling {ahead.in_flight()} ahead)" if ahead.in_flight() else ""))
            res = evaluate(make_forward(config, plan, runtime), params, ds, preprocess, cached=cache,
                           batch_size=batch_size, desc=options.label, progress=progress, data_parallel=False)
            speed = time_forward(config, params, plan, batch_size=batch_size, runs=bench_runs, runtime=runtime)
            measured[same_numbers(plan)] = {"top1": res["top1"], "top5": res["top5"], "images": res["labelled"],
                                            "images_per_s": speed["images_per_s"]}
        row = point_row(config, plan, measured[same_numbers(plan)])
        _append(out_dir, row)
        rows.append(row)
        finished[options] = row
    if plot and rows:
        plot_sweep(rows, out_dir, title)
    first = [finished[o] for o in asked]
    return first + [row for row in rows if not any(row is f for f in first)]


def remeasure_speed(config, params, out_dir: str | Path, *, batch_size: int = 32, runs: int = 5,
                    progress: bool = True, plot: bool = True, title: str = "",
                    runtime: Runtime = Runtime()) -> list[dict]:
    """Re-time images/s of every recorded point (e.g. after a sweep shared the machine) and rewrite
    results.jsonl/.csv and the plots; accuracy columns are kept. Plans come from the stored options."""
    out_dir = Path(out_dir)
    with exclusive(out_dir, folder=True, remove=True):
        return _remeasure(config, params, out_dir, batch_size=batch_size, runs=runs, progress=progress, plot=plot,
                          title=title, runtime=runtime)


def _remeasure(config, params, out_dir: Path, *, batch_size, runs, progress, plot, title, runtime) -> list[dict]:
    rows = read_done(out_dir / "results.jsonl")
    check_settings(out_dir, {"model": {"config": dataclasses.asdict(config)}}, only_given=True,
                   results_without_record=bool(rows), **SWEEP)
    for row in tqdm(rows, desc="remeasure", unit="point", disable=not progress):
        plan = make_plan(config, row_options(row, out_dir / "results.jsonl"))
        row["images_per_s"] = time_forward(config, params, plan, batch_size=batch_size, runs=runs,
                                           runtime=runtime)["images_per_s"]
    _rewrite(out_dir, rows)
    if plot and rows:
        plot_sweep(rows, out_dir, title)
    return rows
