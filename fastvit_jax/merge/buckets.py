"""Token-count buckets: merging blocks that share one padded token count, so they share one program.

XLA compiles each distinct block shape anew (identical dense blocks compile once), and every block
of a merged plan enters with its own token count: compile time grows with the number of merging
blocks (BENCHMARKS.md section 18). With `Runtime(token_buckets=N)` a stretch of consecutive
blocks whose rule has a padded form runs at N or fewer physical token counts ("slots"): real
tokens first, in the exact order the unpadded model has them, then padded slots of size 0. A
padded slot is masked out of attention (its key gets -inf: log(0) under proportional attention),
never matched or merged, and cut off before pooling. A merging block inside a bucket keeps its slot
count: the r tokens it merges away become padding. The merge reads the real count from the sizes
and takes r as data, so consecutive blocks with the same slots, rule and combine are one program
(`shared_runs`), which the model runs as one lax.scan: traced and compiled once (BENCHMARKS.md
section 22).

Same merges, same order, same logits within float rounding as the exact model; the price is the
FLOPs of the padded slots (runtime, not the plan's analytic GFLOPs, which stay exact). ToMe's
matching with its combines (ToMe, DFE, ToFu), LGTM's local windows and the rules that declare
padded slots (methods.Rule.padded: PiToMe's, ATM's, PPT's, MCTF's one step ahead) have padded
forms; the others (drop, random metric) run at their exact counts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.merge import bipartite, methods, reducers
from fastvit_jax.merge.plan import BlockOp, MergePlan
from fastvit_jax.merge.state import TokenState, merge_into


# Combines one program can switch between by data (ToFu's prune and MLERP blocks): it computes both.
DATA_COMBINES = ("prune", "mlerp")


def combine_class(combine: str) -> str:
    """What a block's program knows of its combine: the combine, or that it is one of DATA_COMBINES."""
    return "|".join(DATA_COMBINES) if combine in DATA_COMBINES else combine


def bucketable(op: BlockOp) -> bool:
    """Whether a block can run on padded slots: it keeps every token, merges inside local windows
    (merge/local.padded_local_merge), or merges globally by ToMe's matching or a rule that declares
    its padded slots (methods.Rule.padded), with a combine that needs no attention or one step ahead
    (MCTF's: merge/apply.merge_ahead reads the attention received from the padded map itself)."""
    if op.kind == "none" or op.r == 0:
        return True
    if op.kind == "local":
        return not op.knobs
    padded_rule = op.rule == "tome" or methods.rule(op.rule).padded is not None
    return op.kind == "global" and padded_rule and (op.combine != "attn" or op.ahead) and not op.knobs


def token_slots(plan: MergePlan, buckets: int | None) -> tuple[int, ...]:
    """Physical token count entering each block, and after the last (depth + 1 values).

    None: the exact counts. N: each maximal stretch of bucketable blocks is cut into at most N
    segments, each run at the count entering its first block, the cut that pads the fewest slots."""
    counts = [op.tokens_in for op in plan.ops]
    return bucket_counts(counts, [bucketable(op) for op in plan.ops], buckets) + (plan.final_tokens,)


def bucket_counts(counts: list[int], padded: list[bool], buckets: int | None) -> tuple[int, ...]:
    """`counts` with each maximal stretch where `padded` holds cut into at most `buckets` segments
    (`fewest_padded`), each at its first count; the rest as they are."""
    slots = list(counts)
    if buckets:
        i = 0
        while i < len(counts):
            j = i
            while j < len(counts) and padded[j]:
                j += 1
            for start, end in fewest_padded(counts[i:j], buckets):
                slots[i + start:i + end] = [counts[i + start]] * (end - start)
            i = max(j, i + 1)
    return tuple(slots)


def fewest_padded(counts: list[int], segments: int) -> list[tuple[int, int]]:
    """Cut non-increasing `counts` into at most `segments` runs [start, end) minimising the sum of
    each run's first count times its length (the slots computed). Dynamic programming, tiny inputs."""
    n = len(counts)
    if n == 0:
        return []
    inf = float("inf")
    # best[k][i]: least slots for counts[i:] in at most k runs; cut[k][i]: where the first run ends
    best = [[0.0 if i == n else inf for i in range(n + 1)] for _ in range(segments + 1)]
    cut = [[n] * (n + 1) for _ in range(segments + 1)]
    for k in range(1, segments + 1):
        for i in range(n - 1, -1, -1):
            for end in range(i + 1, n + 1):
                cost = counts[i] * (end - i) + best[k - 1][end]
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, end
    out, i, k = [], 0, segments
    while i < n:
        out.append((i, cut[k][i]))
        i, k = cut[k][i], k - 1
    return out


def key_bias_kind(plan: MergePlan, block: int, padded: bool, bucketed: bool = False) -> str | None:
    """What a block's attention adds to its logits per key: "log" (log size, under proportional
    attention once something merged; log 0 = -inf masks padded slots too), "mask" (padded slots,
    `attention_mask`) or None (dense blocks stay bit-exact). merge/step.key_bias computes it.
    bucketed: every block of a bucketed stretch takes the same kind, so that blocks before and after
    the first merge can be one program: before it, log 1 = 0 and a mask without padding add zeros."""
    if bucketed:
        return "log" if plan.prop_attn else "mask"
    if plan.prop_attn and plan.merged_before(block):
        return "log"
    return "mask" if padded else None


def attention_mask(state: TokenState) -> jax.Array:
    """(B, N) additive key bias: 0 for real tokens, -inf for padded slots (size 0)."""
    return jnp.where(state.size > 0, 0.0, -jnp.inf)


def padded_global_merge(state: TokenState, metric: jax.Array, *, r, num_prefix: int, distill_token: bool,
                        r_max: int | None = None, combine: str = "mean", combine_index=None
                        ) -> tuple[TokenState, jax.Array]:
    """One example on P slots (real tokens first, padded slots of size 0 after): ToMe's bipartite
    matching of r pairs among the real tokens and their combine (merge/reducers.py; "mean" is the
    size-weighted mean), exactly as the unpadded model does on the real tokens alone. Returns P
    slots: [the exact output's tokens, then padding], and the r_max pair scores (-2 past r).

    r may be traced (a block of a scanned run, `shared_runs`), at most the static r_max: the r_max
    best edges are ranked once and the first r merge (top_k's order: a prefix of a longer top_k is
    the shorter one). r = 0 leaves the slots as they are. combine_index (traced): which of
    DATA_COMBINES a block of a program that switches between them takes (combine one of them)."""
    slots = metric.shape[0]
    r_max = r if r_max is None else r_max
    valid = state.size > 0
    real = jnp.sum(valid.astype(jnp.int32))
    node_max, node_idx = bipartite.best_partners(metric, class_token=num_prefix > 0, distill_token=distill_token,
                                                 valid=valid)
    node_max = jnp.where(valid[0::2], node_max, -jnp.inf)  # padded A slots are never chosen
    _, top = jax.lax.top_k(node_max, r_max)
    live = jnp.arange(r_max) < r
    src = jnp.where(live, 2 * top, slots)  # past the last slot: ignored
    dst = jnp.where(live, 2 * node_idx[top] + 1, slots)
    # The exact output lists [unmerged A, all B] (distill token second); real ones first, the rest after.
    idx = jnp.arange(slots)
    place = jnp.where(idx % 2 == 0, idx // 2, (slots + 1) // 2 + idx // 2)
    if distill_token:
        place = jnp.where(idx < 2, idx - 2, place)
    merged_away = jnp.zeros(slots, bool).at[src].set(True, mode="drop")
    order = jnp.argsort(jnp.where(valid & ~merged_away, place, slots + idx))
    order = jnp.where(r > 0, order, idx)  # a block that merges nothing keeps the exact order
    score = jnp.where(live, node_max[top], -2.0)
    if combine != "mean":  # one-hot combine: a merged-away token joins its partner's output slot
        out_pos = jnp.zeros(slots, jnp.int32).at[order].set(idx.astype(jnp.int32))
        out_idx = out_pos.at[src].set(out_pos.at[dst].get(mode="fill", fill_value=0), mode="drop")
        if combine_index is None or combine not in DATA_COMBINES:
            return reducers.combine(state, out_idx, merged_away, slots, combine), score
        each = [reducers.combine(state, out_idx, merged_away, slots, c) for c in DATA_COMBINES]
        pick = lambda *t: jnp.select([combine_index == i for i in range(len(t))], t)
        return jax.tree_util.tree_map(pick, *each), score
    merged = merge_into(state, src, dst, order)
    size = jnp.where(idx < real - r, merged.size, 0.0)
    return merged._replace(size=size), score


def padded_reduce(state: TokenState, metric: jax.Array, attention: jax.Array | None, *, op: BlockOp, r, margin,
                  threshold, num_prefix: int, distill_token: bool) -> tuple[TokenState, jax.Array]:
    """One example on P slots: a rule's padded slots (methods.Rule.padded: PiToMe's, ATM's, PPT's)
    among the real tokens, r and the margin possibly traced, then the combine. Padded tokens take
    part in no ranking; their slots follow the real outputs. attention: the rule's attention
    feature (None if it has none); threshold: PPT's, possibly traced. Returns (P slots, per-token scores)."""
    valid = state.size[num_prefix:] > 0
    real = jnp.sum(valid.astype(jnp.int32))
    out_idx, merged, score = methods.rule(op.rule).padded(metric, size=state.size, r=r, margin=margin,
                                                          num_prefix=num_prefix, valid=valid, real=real,
                                                          attention=attention, distill_token=distill_token,
                                                          threshold=threshold)
    return reducers.combine(state, out_idx, merged, metric.shape[0], op.combine), score


def block_program(plan: MergePlan, block: int, slots: int, padded: bool) -> tuple | None:
    """What makes a padded block one program with another (`shared_runs`): its slot count, the bias
    on its attention keys, and how it merges: local windows, or the rule and combine (r, PiToMe's
    margin, the window and grid are data); () for a block that merges nothing. None: a block that
    runs at its exact count (no padded form, or the random metric, whose draws are shaped by the
    exact count)."""
    op = plan.ops[block]
    if not bucketable(op) or plan.metric == "random":
        return None
    merging = (op.kind, op.rule, combine_class(op.combine)) if merged_r(op) > 0 else ()
    return (slots, key_bias_kind(plan, block, padded, bucketed=True), merging)


def joins(run: tuple, program: tuple | None) -> tuple | None:
    """The program of a run extended by a block's (`block_program`), or None if they are not one:
    the same slots and bias, and at most one way of merging (blocks merging nothing join any run
    but local windows': in a scan they skip the merge, step.block_step)."""
    if program is None or run is None or run[:2] != program[:2]:
        return None
    if run[2] and program[2] and run[2] != program[2]:
        return None
    if run[2] != program[2] and "local" in run[2][:1] + program[2][:1]:
        return None  # measured: windows under lax.cond compile slower than a run of their own (BENCHMARKS 24)
    return run[:2] + (run[2] or program[2],)


def shared_runs(plan: MergePlan, slots: tuple[int, ...], padded: tuple[bool, ...] | None = None
                ) -> list[tuple[int, int]]:
    """The plan's blocks as runs [start, end) of consecutive blocks that are one program
    (`block_program`, `joins`): the same slot count in (`token_slots`), the same bias on the
    attention keys, merging by one rule and combine (or by local windows) or not at all. The model
    runs a longer run as one lax.scan over the blocks' stacked weights, so XLA compiles its block
    once (and JAX traces it once). padded: per block, whether its slots hold padding (default: more
    slots than tokens)."""
    padded = padded or tuple(s > op.tokens_in for s, op in zip(slots, plan.ops))
    program = lambda i: block_program(plan, i, slots[i], padded[i])
    runs, start, run = [], 0, program(0)
    for i in range(1, plan.depth + 1):
        joined = joins(run, program(i)) if i < plan.depth else None
        if joined is None:
            runs.append((start, i))
            start, run = i, program(i) if i < plan.depth else None
        else:
            run = joined
    return runs


def representative(plan: MergePlan, start: int, end: int) -> int:
    """The block whose op a scanned run's program is built from: its first merging block, if any."""
    return next((i for i in range(start, end) if merged_r(plan.ops[i]) > 0), start)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a forward's tokens sit: the slots entering each block and after the last (depth + 1),
    whether each holds padding (depth + 1: the last for pooling), and per block the largest r the
    padded ToMe merge must rank (its static top_k). `layout(plan, buckets)` is one plan's;
    `shared_layout` covers every plan of one `program_key`, which then run as one program,
    each member's r and margin handed in as data (`schedule`)."""

    slots: tuple[int, ...]
    padded: tuple[bool, ...]
    r_max: tuple[int, ...]
    windows: tuple[tuple[int, int], ...] = ()  # per local block: (largest window, most windows)
    r_min: tuple[int, ...] = ()  # per block the smallest r of any member (0: some member merges nothing there)

    def statics(self, start: int, end: int) -> dict:
        """What blocks start..end-1 share as one program takes as static: the largest r, window and
        window count of any of them (traced values stay at or below these), and whether some of
        them merge nothing while others merge ("skips": those take the plain path)."""
        local = [self.windows[i] for i in range(start, end)] if self.windows else [(0, 0)]
        r = self.r_max[start:end]
        low = self.r_min[start:end] if self.r_min else r
        return {"r_max": max(r), "window_max": max(w for w, _ in local), "windows_max": max(n for _, n in local),
                "skips": max(r) > 0 and min(low) == 0}


def layout(plan: MergePlan, buckets: int | None) -> Layout:
    """One plan's layout: `token_slots`, padded where slots exceed the plan's count, its own r."""
    return shared_layout([plan], buckets)


def merged_r(op: BlockOp) -> int:
    return op.r if op.kind != "none" else 0


def program_key(plan: MergePlan) -> tuple:
    """What stays of a plan's program once its padded blocks' r and margins are data: plans with
    equal keys, or `compatible` ones, run as one program on a `shared_layout`. A block without a padded form stays whole
    (its counts included), as does a plan on the random metric (nothing shared)."""
    if plan.metric == "random":
        return ("plan", plan)

    def block(op):  # r (but whether it merges), margin, threshold, counts, window, grid, a data combine are data
        if not bucketable(op):
            return op
        return dataclasses.replace(op, r=int(op.r > 0), margin=0.0, threshold=0.0, tokens_in=0, tokens_out=0,
                                   combine=combine_class(op.combine), window=0, grid=(0, 0))

    return (plan.metric, plan.prop_attn, plan.num_prefix, plan.distill_token, plan.track_source,
            plan.patch_grid) + tuple(block(op) for op in plan.ops)


HEAD = 6  # a program key's plan-wide fields, before one entry per block


def compatible(a: tuple, b: tuple) -> bool:
    """Whether plans of program keys a and b can be one program: equal keys, or keys that differ only
    where a block with a padded form merges in one and nothing in the other (in the shared program
    that block skips the merge for the plan whose r there is 0: step.block_step)."""
    if a == b:
        return True
    if a[0] == "plan" or b[0] == "plan" or a[:HEAD] != b[:HEAD] or len(a) != len(b):
        return False
    padded = lambda op: op.tokens_in == 0  # `program_key` zeroes the counts of blocks with a padded form
    return all(x == y or (padded(x) and padded(y) and "none" in (x.kind, y.kind)) for x, y in zip(a[HEAD:], b[HEAD:]))


def group_plans(plans: list[MergePlan]) -> list[list[MergePlan]]:
    """The plans in groups that can each be one program (`compatible` with every member), in order
    of first appearance; each group's layout is `shared_layout`, its model's plan `envelope`."""
    groups: list[tuple[list, list]] = []  # (per-block key of the group, members)
    for plan in plans:
        key = program_key(plan)
        for merged, members in groups:
            if compatible(tuple(merged), key):
                merged[HEAD:] = [y if x.kind == "none" else x for x, y in zip(merged[HEAD:], key[HEAD:])]
                members.append(plan)
                break
        else:
            groups.append((list(key), [plan]))
    return [members for _, members in groups]


def envelope(plans: list[MergePlan]) -> MergePlan:
    """The plan a group's shared program is built from: per block the op of a member that merges
    there (else the first member's), with the largest token counts of any member."""
    ops = []
    for i in range(plans[0].depth):
        op = next((p.ops[i] for p in plans if merged_r(p.ops[i]) > 0), plans[0].ops[i])
        ops.append(dataclasses.replace(op, tokens_in=max(p.ops[i].tokens_in for p in plans),
                                       tokens_out=max(p.ops[i].tokens_out for p in plans)))
    return dataclasses.replace(plans[0], ops=tuple(ops))


def shared_layout(plans: list[MergePlan], buckets: int | None) -> Layout:
    """One layout for plans that can be one program (`group_plans`): each block's slots cover every
    member's count (the largest, cut into at most `buckets` segments per stretch as `token_slots`
    cuts one plan's), padded wherever some member has fewer tokens than slots; the largest and
    smallest r of any member, and the largest window."""
    if len(group_plans(plans)) != 1:
        raise ValueError("these plans are not one program: they share no layout")
    first = envelope(plans)
    slots = bucket_counts([op.tokens_in for op in first.ops], [bucketable(op) for op in first.ops], buckets)
    slots += (max(p.final_tokens for p in plans),)
    padded = tuple(any(s > c for c in counts) for s, counts in
                   zip(slots, zip(*([op.tokens_in for op in p.ops] + [p.final_tokens] for p in plans))))
    r_max = tuple(max(merged_r(p.ops[i]) for p in plans) for i in range(first.depth))
    r_min = tuple(min(merged_r(p.ops[i]) for p in plans) for i in range(first.depth))
    windows = tuple((max(p.ops[i].window for p in plans), max(p.ops[i].num_windows for p in plans))
                    for i in range(first.depth))
    return Layout(slots, padded, r_max, windows, r_min)


def schedule(plan: MergePlan) -> dict:
    """A plan's per-block data on its shared program (numpy, depth each): r, PiToMe's margin, PPT's
    threshold, which of DATA_COMBINES a block takes (its index; 0 for any other combine), and a
    local block's window and the column count of the grid it sorts tokens onto (0 elsewhere)."""
    index = lambda c: DATA_COMBINES.index(c) if c in DATA_COMBINES else 0
    return {"r": np.asarray([merged_r(op) for op in plan.ops], np.int32),
            "margin": np.asarray([op.margin for op in plan.ops], np.float32),
            "threshold": np.asarray([op.threshold for op in plan.ops], np.float32),
            "combine": np.asarray([index(op.combine) for op in plan.ops], np.int32),
            "window": np.asarray([op.window for op in plan.ops], np.int32),
            "cols": np.asarray([op.grid[1] for op in plan.ops], np.int32)}


def cut(state: TokenState, slots: int) -> TokenState:
    """The first `slots` token slots of a batched state (real tokens come first)."""
    if state.x.shape[1] == slots:
        return state
    return jax.tree_util.tree_map(lambda t: t[:, :slots], state)
