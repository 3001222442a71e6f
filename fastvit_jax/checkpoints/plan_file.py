"""Merge plans as files: the options that made a plan, the model shape it fits, and the command.

A plan file is JSON:
  format   "fastvit-plan/1"
  model    {"name", "depth", "grid", "num_prefix"}: what the plan fits (name is informational)
  options  MergeOptions.to_dict(): read back with MergeOptions.from_dict and rebuilt by make_plan
  plan     MergePlan.summary() at writing time: the rebuilt plan must have the same tokens per block
  gflops, command, created, and whatever the writer adds (`fastvit tune`: its search and scores)
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from fastvit_jax.errors import FastViTError
from fastvit_jax.util.untrusted import read_json
from fastvit_jax.merge.flops import gflops
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import MergePlan, make_plan

FORMAT = "fastvit-plan/1"


def model_shape(config) -> dict:
    """What a plan depends on: blocks, patch grid and prefix tokens."""
    return {"depth": config.depth, "grid": list(config.grid), "num_prefix": config.num_prefix}


def _describe(shape: dict) -> str:
    grid = shape.get("grid")
    grid = f"{grid[0]}x{grid[1]}" if isinstance(grid, list) and len(grid) == 2 else repr(grid)
    return f"depth {shape.get('depth')!r}, grid {grid}, {shape.get('num_prefix')!r} prefix token(s)"


def save_plan(path, config, plan: MergePlan, *, model_name: str = "", command: str = "", extra: dict | None = None) -> Path:
    path = Path(path)
    record = {"format": FORMAT, "model": {"name": model_name, **model_shape(config)},
              "options": plan.options.to_dict(), "plan": plan.summary(), "gflops": gflops(config, plan),
              "command": command, "created": datetime.datetime.now().isoformat(timespec="seconds"), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


def load_plan_options(path, config) -> MergeOptions:
    """The options of plan file `path`, checked against `config` (one-line FastViTError otherwise)."""
    path = Path(path)
    try:
        record = read_json(path, "plan")
    except FileNotFoundError:
        raise FastViTError(f"plan file {path}: not found") from None
    except OSError as e:
        raise FastViTError(f"plan file {path}: cannot read it ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise FastViTError(f"plan file {path}: format {found!r}, expected {FORMAT!r} (write one with "
                           "`fastvit plan --out` or `fastvit tune --out`)")
    for key in ("model", "options", "plan"):
        if not isinstance(record.get(key), dict):
            raise FastViTError(f"plan file {path}: missing {key!r}")
    want = {k: record["model"].get(k) for k in ("depth", "grid", "num_prefix")}
    have = model_shape(config)
    if want != have:
        name = record["model"].get("name")
        raise FastViTError(f"plan file {path} is for {_describe(want)}"
                           + (f" ({name})" if name else "") + f"; this model has {_describe(have)}")
    options = MergeOptions.from_dict(record["options"])
    tokens = make_plan(config, options).summary()["tokens"]
    if tokens != record["plan"].get("tokens"):
        raise FastViTError(f"plan file {path}: its options now give tokens per block {tokens}, the file says "
                           f"{record['plan'].get('tokens')} (written by another fastvit version?)")
    return options
