"""What a block hands to merging, and the one step merging takes in a block.

The model computes its attention and hands what it has to `block_step` in one value (BlockInputs);
whatever a method needs -- a feature read from the attention, one-step-ahead merging (MCTF), the
merge feature, the intermediates analysis and calibration observe -- is decided here from the
block's BlockOp, never in the model.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from fastvit_jax.merge import methods
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


def block_step(op: BlockOp, plan: MergePlan, inputs: BlockInputs, *, block: int, merge_key,
               impl: str = "auto") -> tuple[TokenState, dict]:
    """The tokens after the attention residual and this block's merge (the MLP follows), and what the
    block observed: x_pre, x_attn, x_post, the merge feature ("metric") and sizes, merged_similarity."""
    feats, state = dict(inputs.features), inputs.state
    feats["x"] = state.x
    pick = lambda: (random_metric(jax.random.fold_in(merge_key, block), feats["k"].shape)
                    if plan.metric == "random" else feats[plan.metric])
    observed = {"x_pre": feats["x_pre"], "x_attn": feats["x_attn"]}
    if merges(op) and op.ahead:  # one step ahead: the block input and its attention map merge first
        state, weights, observed["merged_similarity"] = merge_ahead(op, plan, state, pick(),
                                                                    feats["attention_feature"], feats["weights"])
        observed["x_post"] = x = state.x + inputs.reattend(state, weights)
        return state._replace(x=x), observed
    observed["x_post"] = x = state.x + inputs.attention
    state = state._replace(x=x)
    feats["x"] = x  # the tokens as they would merge
    if plan.metric != "random":  # what the block matches (or would match) on
        observed.update(metric=feats[plan.metric], size=state.size)
    if merges(op):
        state, merged_sim = apply_op(op, plan, state, pick(), block, feats["attention_feature"], impl=impl)
        if merged_sim is not None:
            observed["merged_similarity"] = merged_sim
    return state, observed
