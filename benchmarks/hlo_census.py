"""Census of the compiled forward: the ops that become separate kernels, or are slow on accelerators.

    python benchmarks/hlo_census.py --models vit_small_patch16_224,vit_base_patch16_224 \
        --points tome:16,dfe:16,lgtm:13 --merge-impls gather,dense --out benchmarks/results/hlo_census_cpu.json

For each (model, plan, merge implementation):
  - compiled: the optimized HLO of the forward compiled for this machine's backend (whole batch in
    one step). Counted are the instructions that run as their own kernel or loop -- those in the
    entry computation and in while/conditional/call bodies, not those inside fusions -- by kind:
    fusion, dot/convolution, sort, scatter, gather, dynamic-slice/update, custom-call, while, other.
  - cuda, tpu: the same function lowered for those platforms with jax.export (no device needed),
    counting sort, scatter, gather, top_k, dynamic-slice/update, while and custom_call in the StableHLO.
Per merged block = (plan's count - dense count) / merging blocks: what one merge step adds.
Prints a table and writes JSON.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export

from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.errors import report_errors
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import parse_points
from fastvit_jax.merge.plan import MERGING_KINDS, make_plan
from fastvit_jax.runtime import MERGE_IMPLS, Runtime, resolve_merge_impl
from fastvit_jax.models.vit import init_params
from fastvit_jax.checkpoints.registry import get_entry
from fastvit_jax.util.report import format_table, machine, write_json

KINDS = ("fusion", "dot", "sort", "scatter", "gather", "dynamic-slice", "custom-call", "while", "other")
ACCELERATOR_HAZARDS = ("sort", "scatter", "gather", "top_k", "dynamic_slice", "while", "custom_call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(r"\b(?:body|condition|branch_computations|to_apply)=\{?%?([\w.\-, %]+)\}?")


def _opcode(rhs: str) -> str:
    """The opcode of an HLO instruction's right-hand side `SHAPE opcode(operands), attrs`."""
    if rhs.startswith("("):  # tuple shape: skip to its closing parenthesis
        depth = 0
        for i, ch in enumerate(rhs):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rhs = rhs[i + 1:]
                break
    else:
        rhs = rhs.split(" ", 1)[1] if " " in rhs else rhs
    return rhs.strip().split("(", 1)[0].strip()


def _kind(opcode: str) -> str | None:
    if opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "copy-start", "copy-done"):
        return None  # no kernel of their own
    if opcode in ("dot", "convolution"):
        return "dot"
    if opcode in ("dynamic-slice", "dynamic-update-slice"):
        return "dynamic-slice"
    return opcode if opcode in KINDS else "other"


def count_compiled(hlo: str) -> dict:
    """Kernel-level instruction counts of an optimized HLO module (see the module docstring)."""
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(2)
            computations[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None and _INSTRUCTION.match(line):
            computations[current].append(line)
    counts, todo, seen = collections.Counter(), [entry], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for line in computations[name]:
            opcode = _opcode(_INSTRUCTION.match(line).group(1))
            kind = _kind(opcode)
            if kind:
                counts[kind] += 1
            if opcode in ("while", "conditional", "call"):
                for group in _CALLED.findall(line):
                    todo += [c.strip().lstrip("%") for c in group.split(",")]
    return {k: counts.get(k, 0) for k in KINDS} | {"total": sum(counts.values())}


def count_lowered(text: str) -> dict:
    """Accelerator hazards in a StableHLO module."""
    ops = collections.Counter(m.split(".", 1)[1] for m in re.findall(r"\b(?:stablehlo|chlo)\.\w+", text))
    return {k: sum(v for op, v in ops.items() if op == k or (k == "dynamic_slice" and op.startswith("dynamic_")))
            for k in ACCELERATOR_HAZARDS}


def census(config, plan, impl: str, batch: int, platforms: list[str]) -> dict:
    params = jax.eval_shape(lambda: init_params(config))
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.float32)
    forward = make_forward(config, plan, Runtime(examples_per_step=None, merge_impl=impl))
    out = {"compiled": count_compiled(forward.lower(params, images).compile().as_text())}
    for platform in platforms:
        out[platform] = count_lowered(export.export(forward, platforms=[platform])(params, images).mlir_module())
    return out


def per_block(counts: dict, dense: dict, blocks: int) -> dict:
    return {k: (v - dense.get(k, 0)) / blocks if blocks else 0.0 for k, v in counts.items()}


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    p.add_argument("--points", default="tome:16,dfe:16,lgtm:13", help="METHOD:R,... (dense is always counted)")
    p.add_argument("--merge-impls", default="gather,dense", help=f"comma list from {', '.join(MERGE_IMPLS)}")
    p.add_argument("--platforms", default="cuda,tpu", help="platforms to lower for with jax.export ('' for none)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/hlo_census.json")
    args = p.parse_args(argv)
    platforms = [x for x in args.platforms.split(",") if x]
    impls = list(dict.fromkeys(resolve_merge_impl(i) for i in args.merge_impls.split(",")))
    rows = []
    for name in args.models.split(","):
        config = get_entry(name).config
        dense = census(config, None, "gather", args.batch_size, platforms)
        rows.append({"model": name, "method": "none", "r": 0, "merge_impl": None, "merging_blocks": 0, **_flat(dense)})
        for o in parse_points(args.points):
            plan = make_plan(config, o)
            blocks = sum(op.kind in MERGING_KINDS or op.kind == "drop" for op in plan.ops if op.r)
            for impl in impls:
                print(f"{name} {o.label} {impl}", file=sys.stderr)
                got = census(config, plan, impl, args.batch_size, platforms)
                extra = {where: per_block(got[where], dense[where], blocks) for where in got}
                rows.append({"model": name, "method": o.method, "r": o.r, "merge_impl": impl, "merging_blocks": blocks,
                             **_flat(got), **_flat(extra, "per_block")})
    columns = ["model", "method", "r", "merge_impl", "compiled.total", "per_block.compiled.total",
               "per_block.compiled.fusion", "per_block.compiled.dot", "per_block.compiled.sort",
               "per_block.compiled.scatter", "per_block.compiled.gather"]
    for platform in platforms:
        columns += [f"per_block.{platform}.{k}" for k in ("sort", "scatter", "gather", "top_k")]
    print(format_table(rows, columns))
    backend = jax.default_backend()
    print(f"wrote {write_json(args.out, {'machine': machine(), 'backend': backend, 'args': vars(args), 'rows': rows})}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
