"""Accuracy/FLOPs/speed over (method, r) points, appended as each finishes so a sweep resumes.

DIR/results.jsonl is the record (one JSON object per finished point); DIR/results.csv mirrors it.
On restart, points already in results.jsonl are skipped; a corrupt (half-written) last line is
ignored with a warning.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

from tqdm import tqdm

from fastvit_jax.bench import time_forward
from fastvit_jax.data import Dataset, batches
from fastvit_jax.errors import FastViTError
from fastvit_jax.evaluate import evaluate
from fastvit_jax.flops import gflops
from fastvit_jax.forward import make_forward
from fastvit_jax.merge.plan import make_plan

CSV_COLUMNS = ["method", "r", "top1", "top5", "gflops", "images_per_s", "images", "skip", "metric", "tokens_final"]
CACHE_BYTES = 1.5e9  # preprocessed float32 images kept in memory across points (2500 at 224 px, all CIFAR)


def parse_r(spec: str) -> list[int]:
    """'0:24:2' -> 0, 2, ..., 24 (end inclusive); '8,13,16' -> [8, 13, 16]."""
    try:
        if ":" in spec:
            parts = [int(x) for x in spec.split(":")]
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            if step <= 0:
                raise ValueError
            return list(range(start, stop + 1, step))
        return [int(x) for x in spec.split(",")]
    except ValueError:
        raise FastViTError(f"bad --r {spec!r}: use START:STOP[:STEP] (inclusive) or a comma list") from None


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


def run_sweep(params, config, preprocess, ds: Dataset, out_dir: str | Path, methods: list[str], rs: list[int], *,
              batch_size: int = 32, bench_runs: int = 5, plan_kw: dict | None = None, progress: bool = True,
              plot: bool = True, title: str = "") -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_done(out_dir / "results.jsonl")
    _rewrite(out_dir, done)  # drops a corrupt tail so appends stay valid
    finished = {(r["method"], r["r"]) for r in done}
    points = [(m, r) for m in methods for r in rs if (m, r) not in finished]
    rows = list(done)
    fits = len(ds) * config.image_size ** 2 * 3 * 4 <= CACHE_BYTES
    cache = list(batches(ds, preprocess, batch_size)) if points and fits else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clamping is reported in each row's plan
        for method, r in tqdm(points, desc="sweep", unit="point", disable=not progress):
            plan = make_plan(config.depth, config.grid, method, r, **(plan_kw or {}))
            forward = make_forward(config, plan)
            res = evaluate(forward, params, ds, preprocess, batch_size=batch_size, cached=cache,
                           desc=f"{method} r={r}", progress=progress, data_parallel=False)
            speed = time_forward(config, params, plan, batch_size=batch_size, runs=bench_runs)
            row = {"method": method, "r": r, "top1": res["top1"], "top5": res["top5"],
                   "gflops": gflops(config, plan), "images_per_s": speed["images_per_s"], "images": res["labelled"],
                   "skip": plan.skip, "metric": plan.metric, "tokens_final": plan.final_tokens,
                   "plan": plan.summary()}
            _append(out_dir, row)
            rows.append(row)
    if plot and rows:
        from fastvit_jax.plots import plot_sweep

        plot_sweep(rows, out_dir, title)
    return rows


def remeasure_speed(params, config, out_dir: str | Path, *, batch_size: int = 32, runs: int = 5,
                    progress: bool = True, plot: bool = True, title: str = "") -> list[dict]:
    """Re-time images/s of every recorded point (e.g. after a sweep shared the machine) and rewrite
    results.jsonl/.csv and the plots; accuracy columns are kept."""
    out_dir = Path(out_dir)
    rows = read_done(out_dir / "results.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for row in tqdm(rows, desc="remeasure", unit="point", disable=not progress):
            p = row.get("plan", {})
            plan = make_plan(config.depth, config.grid, row["method"], row["r"], skip=row.get("skip"),
                             window=p.get("window") or 7, metric=row.get("metric", "k"),
                             prop_attn=p.get("prop_attn", True))
            row["images_per_s"] = time_forward(config, params, plan, batch_size=batch_size, runs=runs)["images_per_s"]
    _rewrite(out_dir, rows)
    if plot and rows:
        from fastvit_jax.plots import plot_sweep

        plot_sweep(rows, out_dir, title)
    return rows
