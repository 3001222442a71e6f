"""What a block hands to merging, and the one step merging takes in a block.

The model computes its attention and hands what it has to `block_step` in one value (BlockInputs);
whatever a method needs -- a feature read from the attention, one-step-ahead merging (MCTF), the
merge feature, the intermediates analysis and calibration observe -- is decided here from the
block's BlockOp, never in the model.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fastvit_jax.merge import buckets, methods
from fastvit_jax.merge.apply import apply_op, merge_ahead
from fastvit_jax.merge.metrics import random_metric
from fastvit_jax.merge.plan import BlockOp, MergePlan
from fastvit_jax.merge.state import TokenState


class BlockInputs(NamedTuple):
    """One block's tokens and attention, as the model computed them."""

    state: TokenState  # the tokens entering the block
    attention: jax.Array  # the attention branch's output on them (B, N, D), before the residual
    features: dict  # k, q, v (head means), x_pre (normalised input), x_attn, attention_feature, weights
    reattend: Callable  # (merged state, merged attention map) -> the attention output on the merged tokens


def merges(op: BlockOp) -> bool:
    return op.kind != "none" and op.r > 0


def attention_feature(op: BlockOp) -> Callable | None:
    """What the block's attention must also compute for this op's rule: (weights, values) -> (B, N)."""
    return methods.rule(op.rule).attention_feature if merges(op) and op.kind == "global" else None


def key_bias(plan: MergePlan, block: int, state: TokenState, padded: bool, bucketed: bool = False) -> jax.Array | None:
    """What the block's attention adds to its logits per key (B, N), as buckets.key_bias_kind says:
    log(size), the padding mask where slots are padded (merge/buckets.py), or nothing."""
    kind = buckets.key_bias_kind(plan, block, padded, bucketed)
    if kind == "log":
        return jnp.log(state.size)
    return buckets.attention_mask(state) if kind == "mask" else None


def block_step(op: BlockOp, plan: MergePlan, inputs: BlockInputs, *, block: int, merge_key,
               impl: str = "auto", bucketed: bool = False, shared: dict | None = None) -> tuple[TokenState, dict]:
    """The tokens after the attention residual and this block's merge (the MLP follows), and what the
    block observed: x_pre, x_attn, x_post, the merge feature ("metric") and sizes, merged_similarity.
    bucketed: the tokens sit in padded slots (merge/buckets.py); the merge keeps the slot count, and
    what is observed is cut to the real tokens. shared: a block's r, margin, r_max as data (apply_op),
    in a scanned run or a shared program; the latter observes every slot (its real count is data);
    with "skips", a block whose r is 0 takes the plain path (lax.cond) and nothing is observed."""
    if merges(op) and shared is not None and shared.get("skips"):
        # A scanned run that also holds blocks merging nothing (r = 0 as data, buckets.shared_runs):
        # those take the plain block's path, the others merge; what is observed is not kept in a scan.
        shared = {k: v for k, v in shared.items() if k != "skips"}
        plain = BlockOp("none", op.tokens_in, op.tokens_in)
        step = lambda o: lambda: block_step(o, plan, inputs, block=block, merge_key=merge_key, impl=impl,
                                            bucketed=bucketed, shared=shared)[0]
        return jax.lax.cond(shared["r"] > 0, step(op), step(plain)), {}
    feats, state = dict(inputs.features), inputs.state
    feats["x"] = state.x
    real = op.tokens_in

    def pick():
        if plan.metric != "random":
            return feats[plan.metric]
        shape = feats["k"].shape  # drawn for the real tokens, as the exact model draws them
        drawn = random_metric(jax.random.fold_in(merge_key, block), shape[:1] + (real,) + shape[2:])
        return jnp.pad(drawn, ((0, 0), (0, shape[1] - real), (0, 0)))

    observed = {"x_pre": feats["x_pre"], "x_attn": feats["x_attn"]}
    if merges(op) and op.ahead:  # one step ahead: the block input and its attention map merge first
        state, weights, observed["merged_similarity"] = merge_ahead(
            op, plan, state, pick(), feats["attention_feature"], feats["weights"], padded=bucketed, shared=shared)
        observed["x_post"] = x = state.x + inputs.reattend(state, weights)
        if bucketed and shared is None:  # the block input's real tokens, then the merged ones
            observed = {k: v[:, :op.tokens_out if k == "x_post" else real] if k != "merged_similarity" else v
                        for k, v in observed.items()}
        return state._replace(x=x), observed
    observed["x_post"] = x = state.x + inputs.attention
    state = state._replace(x=x)
    feats["x"] = x  # the tokens as they would merge
    if plan.metric != "random":  # what the block matches (or would match) on
        observed.update(metric=feats[plan.metric], size=state.size)
    if merges(op):
        state, merged_sim = apply_op(op, plan, state, pick(), block, feats["attention_feature"], impl=impl,
                                     padded=bucketed, shared=shared)
        if merged_sim is not None:
            observed["merged_similarity"] = merged_sim
    if bucketed and shared is None:  # a shared program's real count is data: it observes every slot
        observed = {k: v if k == "merged_similarity" else v[:, :real] for k, v in observed.items()}
    return state, observed
