"""The merge methods, one record each (`Method`), registered once in REGISTRY.

A method is data the rest of the code reads: the CLI's choices, MergeOptions' validation, the plan
(what each block does), FLOPs (its matching cost, through its rule), tune's search space and the
budget search all come from here. Adding a method is one module in this package that defines
METHOD (and RULE, if it pairs tokens its own way), listed in MODULES, plus its tests.

A method declares its knobs (`Knob`: name, type, bounds, default, help): `fastvit`'s flags, the
MergeOptions checks, plan files and tune's search space are made from them, so a method registered
from outside the package (`register`) gets its flags and validation with no other change.

A Rule is how a global block pairs tokens: `slots(metric, op, *, size, attention, num_prefix,
distill_token)` -> (out_idx, merged, score) on one example, combined by merge/reducers.py (or a
whole `reduce(state, metric, attention, *, op, num_prefix, distill_token)` -> (state, score) for a
rule that is not pairs-then-combine), the per-token feature it reads from the block's attention
(`attention_feature(weights (B, H, N, N), values (B, H, N, Dh))` -> (B, N)), the
multiply-accumulates of its matching (`match_macs`), and optionally its slots on padded tokens
(`padded`, for token buckets).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from fastvit_jax.merge.knobs import Knob

from fastvit_jax.merge.methods import atm, dfe, drop, lgtm, mctf, none, pitome, ppt, tofu, tome


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    slots: Callable | None
    match_macs: Callable[[int, int, int], int]  # (tokens in, prefix tokens, metric width) -> MACs
    attention_feature: Callable | None = None  # (weights, values) -> (B, N): what the rule reads of the attention
    reduce: Callable | None = None  # the whole step, for rules that are not slots + combine
    # slots on padded tokens (merge/buckets.py): (metric, *, size, r, margin, num_prefix, valid, real,
    # attention, distill_token)
    # -> (out_idx, merged, score), r and margin possibly traced; None: the rule runs at exact counts
    padded: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line, for --help and the docs
    kind: str = "global"  # what a merging block does: "none" | "global" | "drop"
    default_skip: Callable[[int], int] = lambda depth: 0  # blocks that keep every token, from the depth
    local_windows: bool = False  # LGTM: local merging in growing windows after the skip
    blocks: Callable | None = None  # depth -> the only blocks that reduce (PPT's); None: every one after the skip
    reducer: bool = False  # its global blocks can be tome/dfe/lgtm's --reducer
    block: Callable = lambda options, block, depth: {}  # BlockOp fields of its global blocks (rule, combine, ...)
    defaults: dict = dataclasses.field(default_factory=dict)  # MergeOptions defaults it changes
    search: dict = dataclasses.field(default_factory=dict)  # tune: knob -> values tried
    knobs: tuple = ()  # its own settings (Knob), beyond the schedule every method shares


MODULES = (none, tome, dfe, lgtm, drop, pitome, tofu, mctf, ppt, atm)
REGISTRY: dict[str, Method] = {}
RULES: dict[str, Rule] = {}


def register(module) -> None:
    """Add a method (and its rule): `module` has METHOD (Method's fields) and optionally RULE."""
    record = module.METHOD
    REGISTRY[record["name"]] = Method(**record)
    if getattr(module, "RULE", None):
        RULES[module.RULE["name"]] = Rule(**module.RULE)


def unregister(name: str, rule: str | None = None) -> None:
    REGISTRY.pop(name, None)
    if rule is not None:
        RULES.pop(rule, None)


def knobs() -> dict[str, Knob]:
    """Every registered method's knobs by name (a knob several methods share is declared once)."""
    out: dict[str, Knob] = {}
    for method in REGISTRY.values():
        for knob in method.knobs:
            out.setdefault(knob.name, knob)
    return out


def owners(name: str) -> list[str]:
    return [m.name for m in REGISTRY.values() if any(k.name == name for k in m.knobs)]


for _module in MODULES:
    register(_module)

def reducer_names() -> tuple[str, ...]:
    """What --reducer accepts: ToMe's own merge and every method whose global blocks can serve."""
    return ("tome",) + tuple(name for name, m in REGISTRY.items() if m.reducer)


METHODS = tuple(REGISTRY)  # the built-in methods (the CLI's choices); validation reads REGISTRY itself
REDUCERS = reducer_names()
MERGING = tuple(name for name, m in REGISTRY.items() if m.kind != "none")


def get(name: str) -> Method:
    return REGISTRY[name]


def rule(name: str) -> Rule:
    return RULES[name]
