"""`fastvit tune`: the most accurate merge plan under a budget, chosen on the user's own images.

Candidates are every method in the search space with each combination of its knobs; each gets the
smallest r whose plan meets the budget (analytic GFLOPs, so a candidate costs nothing to place).
Stage 1 scores every candidate on an evenly spread subset of the calibration images; stage 2 scores
the best few (and ToMe, the reference) on all of them, running only the images stage 1 did not (an
image's result does not depend on the batch it ran in). The winner has the highest stage-2 top-1.

Per-image results are appended to OUT.tune/results.jsonl as each candidate finishes, next to
OUT.tune/settings.json (weights, images, preprocessing, runtime): a rerun with the same settings
reuses them, so an interrupted tune resumes where it stopped; other settings are refused.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fastvit_jax.search import budget
from fastvit_jax.data import Dataset, load_arrays
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.ahead import CompileAhead
from fastvit_jax.util.lock import exclusive
from fastvit_jax.studies.evaluate import topk_correct
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge import buckets, methods
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.studies.recorded import check_settings
from fastvit_jax.runtime import Runtime
from fastvit_jax.util.stats import paired_difference, wilson_interval
from fastvit_jax.studies.sweep import read_done, same_numbers, sweep_settings

def search_space() -> dict:
    """method -> knob -> values tried, from each method's record; every combination is one candidate
    (its r, or its keep ratio, is then set by the budget)."""
    return {name: m.search for name, m in methods.REGISTRY.items() if m.search}


SEARCH_SPACE = search_space()  # the built-in methods' (the CLI's default --methods)


def tune_token_buckets(backend: str | None = None) -> int:
    """The CLI's default runtime.token_buckets for tune: candidates are scored, never timed, and
    those differing only in r share one program (Programs). On CPU, where scoring dominates, three
    buckets (fewer padded FLOPs) beat one; on accelerators compiling dominates: one (BENCHMARKS.md
    section 23)."""
    return 3 if (backend or jax.default_backend()) == "cpu" else 1


REFERENCE = MergeOptions("tome", skip=0)  # the paired differences are against ToMe at the same budget


def candidates(config, methods: list[str], metrics: list[str], target_gflops: float) -> tuple[list[MergeOptions], list[str]]:
    """(options meeting the budget, one line per combination that cannot meet it)."""
    spaces = search_space()
    unknown = [m for m in methods if m not in spaces]
    if unknown:
        raise FastViTError(f"tune cannot search {', '.join(unknown)}; allowed: {', '.join(spaces)}")
    found, skipped = [], []
    for method in dict.fromkeys(["tome"] + methods):
        space = spaces[method]
        for values in itertools.product(*space.values()):
            for metric in metrics:
                base = MergeOptions.from_dict({"method": method, **dict(zip(space, values)), "metric": metric})
                try:
                    found.append(budget.options_for_gflops(config, base, target_gflops))
                except FastViTError as e:
                    skipped.append(str(e))
    return distinct_plans(config, found), skipped


def distinct_plans(config, options: list[MergeOptions]) -> list[MergeOptions]:
    """The first options of each distinct plan: knobs that change nothing (ToFu's prune blocks inside
    the skipped blocks, say) would score the same model twice."""

    seen = {}
    for o in options:
        seen.setdefault(same_numbers(make_plan(config, o)), o)
    return list(seen.values())


def describe(options: MergeOptions) -> str:
    """The label plus every knob that differs from the defaults."""
    defaults = MergeOptions(options.method)  # the method's own defaults (PiToMe: no prop. attention, MCTF: x)
    shown = {"method", "r", "inflect", "keep", "r_list", "align", *dict(options.knobs)}  # in the label already
    knobs = [f"{k}={v}" for k, v in options.to_dict().items() if k not in shown and v != getattr(defaults, k)]
    return " ".join([options.label] + knobs)


def correct_per_image(forward, params, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
    """Top-1 right or wrong for each image (full batches; the last one padded)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        logits = np.asarray(forward(params, chunk))[: batch_size - pad]
        out.append(topk_correct(logits, labels[start:start + batch_size], 1))
    return np.concatenate(out)


class Programs:
    """The compiled program each candidate runs. With token buckets, candidates whose plans differ
    only in their padded blocks' data (r, margins, windows...; blocks that merge in one and not in
    another: merge/buckets.group_plans) share one program on a layout covering all of them, each
    called with its own schedule: such a group compiles once for both stages."""

    def __init__(self, config, params, example, runtime: Runtime):
        self.config, self.params, self.example, self.runtime = config, params, example, runtime
        self.groups: dict = {}  # group key -> (the plan its program is built from, shared layout or None)
        self.keys: dict = {}  # options -> group key
        self.compiled: dict = {}  # group key -> executable, held while a stage still needs it

    def group_programs(self, options: list[MergeOptions]) -> None:
        plans = {o: make_plan(self.config, o) for o in options}
        if not self.runtime.token_buckets:
            self.keys = {o: ("plan", p) for o, p in plans.items()}
            self.groups = {("plan", p): (p, None) for p in plans.values()}
            return
        shareable = [p for p in dict.fromkeys(plans.values()) if p.metric != "random"]
        for i, members in enumerate(buckets.group_plans(shareable)):
            self.groups[("group", i)] = (buckets.envelope(members), buckets.shared_layout(members, self.runtime.token_buckets))
            self.keys.update({o: ("group", i) for o, p in plans.items() if p in members})
        for o, p in plans.items():  # the random metric: each plan its own (its draws are shaped by its counts)
            if o not in self.keys:
                self.keys[o] = ("plan", p)
                self.groups[("plan", p)] = (p, None)

    def key(self, options: MergeOptions):
        return self.keys[options]

    def build(self, key):
        plan, layout = self.groups[key]
        forward = make_forward(self.config, plan, self.runtime, layout)
        if layout is None:
            return forward.lower(self.params, self.example).compile()
        return forward.lower(self.params, self.example, None, buckets.schedule(plan)).compile()

    def keep(self, keys: list) -> None:
        """Free the programs no longer needed (each compiled ViT holds memory maps: models/forward.py)."""
        self.compiled = {k: v for k, v in self.compiled.items() if k in keys}

    def forward(self, options: MergeOptions, ahead: CompileAhead):
        """(params, images) -> logits of this candidate's plan."""
        key = self.key(options)
        if key not in self.compiled:
            self.compiled[key] = ahead.get(key)
        program = self.compiled[key]
        if self.groups[key][1] is None:
            return program
        schedule = buckets.schedule(make_plan(self.config, options))
        return lambda params, images: program(params, images, None, schedule)


class Results:
    """OUT.tune/results.jsonl: per-image top-1 of (stage, options), appended as each finishes."""

    def __init__(self, folder: Path, settings: dict):
        self.file = folder / "results.jsonl"
        check_settings(folder, settings, what="tune results", advice="use another --out for these settings",
                       results_without_record=self.file.exists())
        self.rows = {(row["stage"], MergeOptions.from_dict(row["options"])): np.array([c == "1" for c in row["correct"]])
                     for row in read_done(self.file)}

    def get(self, stage: str, options: MergeOptions):
        return self.rows.get((stage, options))

    def put(self, stage: str, options: MergeOptions, correct: np.ndarray) -> None:
        self.rows[(stage, options)] = correct
        with open(self.file, "a") as f:
            f.write(json.dumps({"stage": stage, "options": options.to_dict(),
                                "correct": "".join("1" if c else "0" for c in correct)}) + "\n")


def tune(config, params, preprocess, ds: Dataset, *, target_gflops: float, out: str | Path, methods: list[str],
         metrics: list[str | None] = (None,), subset: int = 250, finalists: int = 4, batch_size: int = 32,
         runtime: Runtime = Runtime(), progress: bool = True, compile_ahead: int | None = None) -> dict:
    """Search, score and rank; returns {"best": options, "rows": [...], "skipped": [...], ...}.
    Scores go to OUT.tune/, which one tune writes at a time. compile_ahead: plans compiled in a
    worker thread while one is evaluated (util/ahead.py; default $FASTVIT_COMPILE_AHEAD or 1)."""
    with exclusive(Path(str(out) + ".tune"), folder=True, remove=True):
        return _tune(config, params, preprocess, ds, target_gflops=target_gflops, out=out, methods=methods,
                     metrics=metrics, subset=subset, finalists=finalists, batch_size=batch_size, runtime=runtime,
                     progress=progress, compile_ahead=compile_ahead)


def _tune(config, params, preprocess, ds, *, target_gflops, out, methods, metrics, subset, finalists, batch_size,
          runtime, progress, compile_ahead) -> dict:
    images, labels = load_arrays(ds, preprocess, require_labels=True)
    if len(images) < 2:
        raise FastViTError(f"{ds.name}: tune needs at least 2 labelled images, found {len(images)}")
    found, skipped = candidates(config, list(methods), list(metrics), target_gflops)
    if not found:
        raise FastViTError(f"no candidate meets {target_gflops:.3f} GFLOPs: {skipped[0] if skipped else ''}")
    folder = Path(str(out) + ".tune")
    settings = sweep_settings(config, params, preprocess, ds, batch_size, runtime)
    settings["subset"] = min(subset, len(images))
    results = Results(folder, settings)
    pick = np.unique(np.linspace(0, len(images) - 1, settings["subset"]).round().astype(int))

    example = jax.ShapeDtypeStruct((batch_size,) + images.shape[1:], images.dtype)
    programs = Programs(config, params, example, runtime)

    def score(stage: str, options: MergeOptions, bar, ahead: CompileAhead) -> np.ndarray:
        got = results.get(stage, options)
        if got is None:
            bar.set_postfix_str(f"compiling {describe(options)}")
            forward = programs.forward(options, ahead)
            bar.set_postfix_str(f"evaluating {describe(options)}"
                                + (f" (compiling {ahead.in_flight()} ahead)" if ahead.in_flight() else ""))
            if stage == "subset":
                got = correct_per_image(forward, params, images[pick], labels[pick], batch_size)
            else:  # the subset's images were scored by the same program in stage 1: only the rest run
                got = np.zeros(len(images), bool)
                known = results.get("subset", options)
                todo = np.setdiff1d(np.arange(len(images)), pick) if known is not None else np.arange(len(images))
                if known is not None:
                    got[pick] = known
                if len(todo):  # none left when the subset is every image
                    got[todo] = correct_per_image(forward, params, images[todo], labels[todo], batch_size)
            results.put(stage, options, got)
        bar.update(1)
        return got

    def score_all(stage: str, todo: list[MergeOptions], desc: str) -> dict:
        """Each plan's scores; the next programs compile (compile_ahead of them) while one is evaluated."""
        missing = [o for o in todo if results.get(stage, o) is None]
        programs.keep([programs.key(o) for o in missing])
        with tqdm(total=len(todo), desc=desc, unit="plan", disable=not progress) as bar, \
                CompileAhead(programs.build, [programs.key(o) for o in missing], compile_ahead) as ahead:
            return {o: score(stage, o, bar, ahead) for o in todo}

    # ToMe is scored with the candidates even when --metrics leaves out its metric: every row
    # reports the subset score and the paired difference against it
    try:
        reference = budget.options_for_gflops(config, REFERENCE, target_gflops)
    except FastViTError as e:  # a keep ratio can go lower than ToMe's half-the-tokens bound
        raise FastViTError(f"no candidate meets {target_gflops:.3f} GFLOPs that ToMe (the reference) can also "
                           f"meet: {e}") from None
    scored = list(dict.fromkeys(found + [reference]))
    programs.group_programs(scored)
    cost = {o: gflops(config, make_plan(config, o)) for o in scored}
    first = score_all("subset", scored, "tune: subset")
    ranked = sorted(found, key=lambda o: (-first[o].mean(), cost[o]))
    final_set = list(dict.fromkeys(ranked[:finalists] + [reference]))
    full = score_all("full", final_set, "tune: all images")
    order = sorted(final_set, key=lambda o: (-full[o].mean(), cost[o]))
    rows = []
    for o in order:
        n, right = len(full[o]), int(full[o].sum())
        lo, hi = wilson_interval(right, n)
        vs = paired_difference(full[o], full[reference])
        rows.append({"plan": describe(o), "method": o.method, "r": o.r, "gflops": cost[o],
                     "subset_top1": float(first[o].mean()), "top1": right / n, "top1_lo": lo, "top1_hi": hi,
                     "vs_tome": vs["diff"], "vs_tome_lo": vs["lo"], "vs_tome_hi": vs["hi"],
                     "p_mcnemar": vs["p_mcnemar"], "options": o.to_dict()})
    return {"best": order[0], "reference": reference, "rows": rows, "skipped": skipped, "candidates": len(found),
            "images": int(len(images)), "subset": int(len(pick)), "target_gflops": target_gflops,
            "results": str(folder)}


def tune_summary(result: dict) -> dict:
    """What the plan file records about the search."""
    keep = {k: v for k, v in result.items() if k not in ("best", "reference")}
    return {**keep, "reference": result["reference"].to_dict()}

