"""Run one block's BlockOp on a batch. The model calls only this; it never knows the algorithm.

Each op has two implementations with the same results (runtime.merge_impl): "gather" (this file,
bipartite.py, local.py, state.merge_into) and "dense" (onehot.py), chosen per backend by "auto"
(runtime.resolve_merge_impl).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastvit_jax.merge import bipartite, buckets, local, methods, metrics, onehot, reducers
from fastvit_jax.merge.plan import BlockOp, MergePlan
from fastvit_jax.runtime import resolve_merge_impl
from fastvit_jax.merge.state import TokenState, merge_into


def global_merge(state: TokenState, metric: jax.Array, *, r: int, num_prefix: int,
                 distill_token: bool) -> tuple[TokenState, jax.Array]:
    """One example: ToMe bipartite soft matching over all tokens, merge r, weighted average."""
    matching = bipartite.match(metric, r, class_token=num_prefix > 0, distill_token=distill_token)
    src, dst, keep = bipartite.token_indices(matching, metric.shape[0], distill_token=distill_token)
    return merge_into(state, src, dst, keep), matching.score


def global_reduce(state: TokenState, metric: jax.Array, attention: jax.Array | None, *, op, num_prefix: int,
                  distill_token: bool) -> tuple[TokenState, jax.Array]:
    """One example, one global BlockOp with a rule/combine other than ToMe's mean: (state, score).
    The rule comes from the method registry (merge/methods)."""
    rule = methods.rule(op.rule)
    if rule.reduce is not None:
        return rule.reduce(state, metric, attention, op=op, num_prefix=num_prefix, distill_token=distill_token)
    out_idx, merged, score = rule.slots(metric, op, size=state.size, attention=attention,
                                                         num_prefix=num_prefix, distill_token=distill_token)
    return reducers.combine(state, out_idx, merged, op.tokens_out, op.combine, attention), score


IMPLS = {  # per example: global merge and drop; local takes the batch
    "gather": {"global": global_merge, "drop": metrics.drop_lowest_norm, "local": local.local_merge},
    "dense": {"global": onehot.global_merge, "drop": onehot.drop_lowest_norm, "local": onehot.local_merge},
}


def merge_ahead(op: BlockOp, plan: MergePlan, state: TokenState, metric: jax.Array, attention: jax.Array,
                weights: jax.Array, padded: bool = False, shared: dict | None = None
                ) -> tuple[TokenState, jax.Array, jax.Array]:
    """MCTF's one-step-ahead step on a batch: the block input's tokens merge by the rule, and the
    block's attention map (B, H, N, N) merges with them -- keys summed over each group, queries
    averaged with the pooling weights -- so the attention output is computed once, on the merged
    tokens. Returns (state, merged weights (B, H, T, T), mean similarity of merged pairs).
    padded: the tokens sit in padded slots (merge/buckets.py), kept: the attention each token
    received is averaged over the real queries only, the rule's padded slots place padding after
    the real outputs, and empty slots get no attention; shared: r as data (apply_op)."""
    rule = methods.rule(op.rule)
    r = (shared or {"r": op.r})["r"]

    def one(s, m, a, w):
        if padded:
            valid = s.size > 0
            real = jnp.sum(valid.astype(jnp.int32))
            a = jnp.sum(jnp.where(valid[None, :, None], w.astype(jnp.float32), 0.0), axis=(0, 1)) / (w.shape[0] * real)
            out_idx, merged, score = rule.padded(m, size=s.size, r=r, margin=0.0, num_prefix=plan.num_prefix,
                                                 valid=valid[plan.num_prefix:], real=real - plan.num_prefix,
                                                 attention=a, distill_token=plan.distill_token)
            tokens_out = m.shape[0]
        else:
            out_idx, merged, score = rule.slots(m, op, size=s.size, attention=a, num_prefix=plan.num_prefix,
                                                distill_token=plan.distill_token)
            tokens_out = op.tokens_out
        members = (jnp.arange(tokens_out)[:, None] == out_idx[None, :]).astype(jnp.float32)  # (T, N)
        pool = s.size * a.astype(jnp.float32) if op.combine == "attn" else s.size
        keys = jnp.einsum("hqn,tn->hqt", w.astype(jnp.float32), members, precision=reducers._EXACT)
        rows = jnp.einsum("tn,n,hnk->htk", members, pool, keys, precision=reducers._EXACT)
        held = jnp.dot(members, pool, precision=reducers._EXACT)[None, :, None]
        merged_w = rows / held if not padded else jnp.where(held > 0, rows / jnp.where(held > 0, held, 1.0), 0.0)
        return (reducers.combine(s, out_idx, merged, tokens_out, op.combine, a), merged_w.astype(w.dtype), score)

    new, merged_w, scores = jax.vmap(one)(state, metric, attention, weights)
    real = scores > -1.5
    mean = jnp.sum(jnp.where(real, scores, 0.0), -1) / jnp.maximum(jnp.sum(real, -1), 1)
    return new, merged_w, mean


def apply_op(op: BlockOp, plan: MergePlan, state: TokenState, metric: jax.Array, block: int | None = None,
             attention: jax.Array | None = None, impl: str = "auto", padded: bool = False,
             shared: dict | None = None
             ) -> tuple[TokenState, jax.Array | None]:
    """Apply op to a batched state (B, N, ...) with metric (B, N, C); attention (B, N): the mean
    attention each token received (MCTF's informativeness; None where no op needs it).

    Returns the new state and the mean cosine similarity of merged pairs per example (None when
    nothing merged) -- the quantity of the paper's Figure 3. block: the op's index in the plan (the
    dense local merge needs to know whether tokens are still in grid order). padded: the tokens sit in
    padded slots (merge/buckets.py: rules with a padded form) and the slot count is kept; shared: a
    padded block's values as data (r, margin, threshold, the combine index traced; r_max static), in
    a scanned run or a shared program, in place of op's.
    """
    if op.kind == "none" or op.r == 0:
        return state, None
    if op.kind == "truncate":  # free merging: the token counts of the plan, no merge cost
        return jax.tree_util.tree_map(lambda t: t[:, :op.tokens_out], state), None
    impl = resolve_merge_impl(impl)
    fns = IMPLS[impl]
    if op.kind == "drop":
        drop = lambda s, m: fns["drop"](s, m, r=op.r, num_prefix=plan.num_prefix)
        return jax.vmap(drop)(state, metric), None
    if padded:
        shared = shared or {"r": op.r, "r_max": op.r, "margin": op.margin, "threshold": op.threshold,
                            "window": op.window, "cols": op.grid[1], "window_max": op.window,
                            "windows_max": op.num_windows}
    if op.kind == "local" and padded:
        fn = lambda s, m: local.padded_local_merge(s, m, r=shared["r"], window=shared["window"], cols=shared["cols"],
                                                   r_max=shared["r_max"], window_max=shared["window_max"],
                                                   windows_max=shared["windows_max"], num_prefix=plan.num_prefix)
        new, scores = jax.vmap(fn)(state, metric)
    elif op.kind == "global" and padded:
        if op.rule != "tome":
            fn = lambda s, m, a: buckets.padded_reduce(s, m, a, op=op, r=shared["r"], margin=shared["margin"],
                                                       threshold=shared["threshold"], num_prefix=plan.num_prefix,
                                                       distill_token=plan.distill_token)
        else:
            fn = lambda s, m, a: buckets.padded_global_merge(s, m, r=shared["r"], r_max=shared["r_max"],
                                                             num_prefix=plan.num_prefix,
                                                             distill_token=plan.distill_token, combine=op.combine,
                                                             combine_index=shared.get("combine"))
        new, scores = jax.vmap(fn)(state, metric, attention)
    elif op.kind == "global" and (op.rule, op.combine) != ("tome", "mean"):  # one implementation, sort-free
        fn = lambda s, m, a: global_reduce(s, m, a, op=op, num_prefix=plan.num_prefix,
                                                    distill_token=plan.distill_token)
        new, scores = jax.vmap(fn)(state, metric, attention)
    elif op.kind == "global":
        fn = lambda s, m: fns["global"](s, m, r=op.r, num_prefix=plan.num_prefix, distill_token=plan.distill_token)
        new, scores = jax.vmap(fn)(state, metric)
    elif op.kind == "local":  # batched itself: windows of all examples share one vmap axis
        untouched = block is not None and all(o.kind == "none" or o.r == 0 for o in plan.ops[:block])
        kw = {"ordered": untouched} if impl == "dense" else {}
        new, scores = fns["local"](state, metric, r=op.r, window=op.window, grid=op.grid,
                                   tokens_out=op.tokens_out, num_prefix=plan.num_prefix, **kw)
    else:
        raise ValueError(f"unknown block op {op.kind!r}")
    # Pad-pad merges (and, dense impl, A tokens that did not merge) score -2; average only real pairs.
    real = scores > -1.5
    mean = jnp.sum(jnp.where(real, scores, 0.0), -1) / jnp.maximum(jnp.sum(real, -1), 1)
    return new, mean
