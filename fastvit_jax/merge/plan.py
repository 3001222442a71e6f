"""MergePlan: the merge schedule as static data, built from MergeOptions by `make_plan`.

For every block the plan says what happens between attention and MLP: nothing, local merging
inside w x w windows, global merging of r tokens, or dropping r tokens. Because it is plain hashable
data, token counts are static and the model jit-compiles once per plan. The methods and their
options are described in `fastvit_jax.merge.options`.
"""

from __future__ import annotations

import dataclasses
import math


from fastvit_jax.merge import bipartite, local, methods
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions

MERGING_KINDS = ("global", "local")  # block kinds after which token sizes differ


@dataclasses.dataclass(frozen=True)
class BlockOp:
    """What one block does to its tokens. `r` is per window for local ops, total otherwise.

    kind "truncate" keeps the first tokens_out tokens: the token counts of a merge at no cost
    (`free_merging`, for measuring what merging itself costs)."""

    kind: str  # "none" | "global" | "local" | "drop" | "truncate"
    tokens_in: int  # tokens entering the block, prefix tokens included
    tokens_out: int
    r: int = 0
    window: int = 0
    grid: tuple[int, int] = (0, 0)  # (rows, cols) the patch tokens are sorted onto (local only)
    # global only (merge.reducers): how tokens pair -- "tome" | "pitome" | "mctf" -- and how a group
    # becomes one token -- "mean" | "prune" | "mlerp" | "attn"; margin: PiToMe's energy margin here
    rule: str = "tome"
    combine: str = "mean"
    margin: float = 0.0
    threshold: float = 0.0  # PPT: an image pools when its token-score variance is below this, else prunes
    ahead: bool = False  # MCTF: merge the block input and its attention map before the attention output
    knobs: tuple = ()  # (name, value) settings of a method registered beyond these fields, for its rule

    def knob(self, name: str, default=None):
        return dict(self.knobs).get(name, default)

    @property
    def num_windows(self) -> int:
        return local.num_windows(self.grid, self.window) if self.window else 0

    def __str__(self) -> str:
        if self.kind == "local":
            return f"local(w={self.window},{self.num_windows}x{self.r})"
        if self.kind == "global" and (self.rule, self.combine) != ("tome", "mean"):
            return f"{self.rule}{'' if self.combine == 'mean' else '-' + self.combine}({self.r})"
        return "-" if self.kind == "none" else f"{self.kind}({self.r})"


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """What each block of one model does, derived from MergeOptions by make_plan: per block a BlockOp
    (nothing, local windows, global merge or drop of r tokens) with its token counts in and out, so
    every shape is static and the plan compiles once. Hashable; `describe()` prints it, `clamped`
    says whether some block could merge fewer tokens than asked."""

    ops: tuple[BlockOp, ...]
    options: MergeOptions = MergeOptions()
    skip: int = 0  # resolved from options.skip
    transition: int = 0  # local blocks, resolved from options.transition
    num_prefix: int = 1
    distill_token: bool = False
    track_source: bool = False
    patch_grid: tuple[int, int] = (14, 14)
    clamped: bool = False  # True if some block merges fewer than r because of the half-the-tokens bound

    method = property(lambda self: self.options.method)
    r = property(lambda self: self.options.r)
    metric = property(lambda self: self.options.metric)
    prop_attn = property(lambda self: self.options.prop_attn)
    window = property(lambda self: self.options.window if self.method == "lgtm" else 0)

    @property
    def depth(self) -> int:
        return len(self.ops)

    @property
    def is_dense(self) -> bool:
        return all(op.kind == "none" for op in self.ops)

    @property
    def final_tokens(self) -> int:
        return self.ops[-1].tokens_out if self.ops else self.num_prefix + self.patch_grid[0] * self.patch_grid[1]

    def merged_before(self, block: int) -> bool:
        """Whether any merge happened before `block` (then sizes differ and prop_attn matters)."""
        return any(op.kind in MERGING_KINDS for op in self.ops[:block])

    def summary(self) -> dict:
        return {
            "method": self.method, "r": self.r, "schedule": self.options.schedule, "skip": self.skip,
            "window": self.window,
            "transition": self.transition, "metric": self.metric, "prop_attn": self.prop_attn,
            "reducer": self.options.resolved_reducer, "align": self.options.align,
            "tokens": [op.tokens_in for op in self.ops] + [self.final_tokens],
            "ops": [str(op) for op in self.ops], "clamped": self.clamped,
        }

    def describe(self) -> str:
        words = self.options.schedule.split()
        schedule = " ".join(f"{k}={v}" for k, v in zip(words[::2], words[1::2]))
        head = (f"plan: method={self.method} {schedule} skip={self.skip} "
                f"metric={self.metric} prop_attn={self.prop_attn}")
        if self.method == "lgtm":
            head += f" window={self.window} transition={self.transition}"
        if self.options.resolved_reducer != "tome" and self.method != "drop":
            head += f" reducer={self.options.resolved_reducer}"
        if self.options.align > 1:
            head += f" align={self.options.align}"
        tokens = [op.tokens_in for op in self.ops] + [self.final_tokens]
        return (head + "\n  " + " | ".join(f"{i}:{op}" for i, op in enumerate(self.ops))
                + f"\n  tokens per block: {tokens}" + ("\n  " + CLAMPED_NOTE if self.clamped else ""))


CLAMPED_NOTE = ("some blocks merge fewer than r tokens (at most half of the mergeable tokens of a block "
                "or window can merge)")


def as_options(options) -> MergeOptions:
    """MergeOptions from what a caller may pass: None (dense), a method name, or MergeOptions."""
    if options is None:
        return MergeOptions()
    if isinstance(options, str):
        return MergeOptions(method=options)
    if not isinstance(options, MergeOptions):
        raise FastViTError(f"merge options must be a method name or MergeOptions, got {type(options).__name__}")
    return options


def make_plan(config, options: MergeOptions | None = None, *, track_source: bool = False) -> MergePlan:
    """Algorithm 1 as a static schedule for `config` (a ViTConfig: depth, patch grid, prefix tokens).

    Blocks [0, skip) keep every token; LGTM's first `transition` blocks after the skip merge inside
    windows that grow by one per block; every other merging block removes its scheduled r tokens
    globally (merges them by the method's rule, or drops them). Clamping to what a block can merge
    is recorded in `plan.clamped`, never warned about.
    """
    options = as_options(options)
    method = methods.get(options.method)
    depth, patch_grid, prefix = config.depth, tuple(config.grid), config.num_prefix
    skip = options.resolved_skip(depth)
    merging = options.merges
    local_blocks = 0
    if merging and method.local_windows:
        local_blocks = options.transition if options.transition is not None else \
            lgtm_transition(patch_grid, options.r, options.window, depth - skip)
    schedule = block_schedule(options, depth, skip + local_blocks)
    reducer = methods.get(options.resolved_reducer)
    only = set(method.blocks(depth)) if method.blocks else None  # PPT reduces at a few blocks only
    n = prefix + patch_grid[0] * patch_grid[1]
    unaligned = n  # the token count the plain schedule would give: aligned counts stay at or below it
    ops, clamped = [], False
    for i in range(depth):
        if not merging or i < skip or (only is not None and i not in only):
            op, short = BlockOp("none", n, n), False
        elif i - skip < local_blocks:
            op, short = local_block(n, prefix, patch_grid, options.window + i - skip, options.r)
            unaligned = op.tokens_out
        else:
            want = schedule(i, unaligned - prefix)
            unaligned -= min(want, bipartite.max_merges(unaligned, prefix))
            r = aligned_merges(n, prefix, unaligned, options.align) if options.align > 1 else want
            op, short = global_block(n, prefix, r, method.kind)
            if options.align > 1:  # clamped: the bound kept more tokens than the aligned target
                short = op.tokens_out > int(round(unaligned / options.align)) * options.align
            if method.kind == "global":
                op = dataclasses.replace(op, **reducer.block(options, i, depth))
        ops.append(op)
        clamped |= short
        n = op.tokens_out
    if getattr(config, "registers", 0) and any(op.ahead and op.r for op in ops):
        raise FastViTError(f"{options.method}'s one-step-ahead merging does not take register tokens "
                           f"(the model has {config.registers}); choose another method")
    return MergePlan(tuple(ops), options, skip=skip, transition=sum(op.kind == "local" for op in ops),
                     num_prefix=prefix, distill_token=getattr(config, "distilled", False), track_source=track_source,
                     patch_grid=patch_grid, clamped=clamped)


def tome_schedule(r: int, inflect: float, blocks: int) -> list[int]:
    """ToMe's (r, inflect) schedule over `blocks` merging blocks (tome/utils.py parse_r): linear from
    int(r (1 - inflect)) to 2r minus that, each block's value truncated."""
    if blocks <= 1:
        return [int(r)] * blocks
    low = int(r * (1.0 - inflect))
    high = 2 * r - low
    step = (high - low) / (blocks - 1)
    return [int(low + step * i) for i in range(blocks)]


def block_schedule(options: MergeOptions, depth: int, first: int):
    """(block, mergeable tokens entering it) -> the r the schedule asks of that global block; `first`:
    the first global block (after the skip and any local blocks)."""
    if options.r_list is not None:
        return lambda i, m: options.r_list[i] if i < len(options.r_list) else 0
    if options.keep is not None:  # PiToMe's floor(T - T * ratio), computed as it does in float64
        return lambda i, m: max(0, math.floor(m - m * options.keep))
    if options.inflect:
        values = tome_schedule(options.r, options.inflect, depth - first)
        return lambda i, m: values[i - first]
    return lambda i, m: options.r


def aligned_merges(n: int, num_prefix: int, target: int, align: int) -> int:
    """Merges that take n tokens to the multiple of `align` nearest `target` (the count plain r
    would reach), within the half-the-tokens bound: GEMMs tile by 8/16/64 rows, and plans of one
    sweep share more shapes. Rounding to the nearest keeps the plan's FLOPs close to plain r's
    (rounding down lost 1.3 points at ToMe r=13's budget: BENCHMARKS.md section 13); a budget
    search places aligned plans at or under the budget like any other."""
    bound = bipartite.max_merges(n, num_prefix)
    aligned = int(round(target / align)) * align
    return max(0, min(n - aligned, bound))


def global_block(n: int, num_prefix: int, r: int, kind: str = "global") -> tuple[BlockOp, bool]:
    """(op, clamped): r of n tokens merge (or drop), at most half of the unprotected ones."""
    rr = min(r, bipartite.max_merges(n, num_prefix))
    return BlockOp(kind, n, n - rr, r=rr), rr < r


def local_block(n: int, num_prefix: int, patch_grid: tuple[int, int], window: int, r: int) -> tuple[BlockOp, bool]:
    """(op, clamped): one LGTM block. The patch tokens are re-sorted onto a grid of their aspect,
    cut into w x w windows, and each window merges ceil(r / windows) pairs or as many as it can."""
    m = n - num_prefix
    grid = local.sort_grid(m, patch_grid)
    want = math.ceil(r / local.num_windows(grid, window))
    r_window, merged = local.local_merges(m, grid, window, want)
    return BlockOp("local", n, n - merged, r=r_window, window=window, grid=grid), r_window < want


def lgtm_transition(patch_grid: tuple[int, int], r: int, window: int, max_blocks: int) -> int:
    """Algorithm 1's offline t: local blocks continue until the window is larger than the
    (rounded) square root of the patch-token count."""
    m, t = patch_grid[0] * patch_grid[1], 0
    while t < max_blocks and r > 0 and window + t <= round(math.sqrt(m)):
        m = local_block(m, 0, patch_grid, window + t, r)[0].tokens_out
        t += 1
    return t


def free_merging(plan: MergePlan) -> MergePlan:
    """The same token counts with merging that costs nothing: each merging block keeps its first
    tokens_out tokens (sizes stay 1, so proportional attention adds nothing either)."""
    ops = tuple(dataclasses.replace(op, kind="truncate") if op.kind != "none" and op.r else op for op in plan.ops)
    return dataclasses.replace(plan, ops=ops)
