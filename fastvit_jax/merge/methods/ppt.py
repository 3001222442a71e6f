"""PPT (Wu et al., "PPT: Token Pruning and Pooling for Efficient Vision Transformers";
xjwu1024/PPT, `ppt_deit.py` as its README evaluates DeiT off the shelf): only at a few blocks (at
depth // 4, depth // 2 and 3 depth // 4: DeiT's 3, 6, 9), each image chooses between pooling and
pruning from its token scores:

  score_i = (attention of the class token to token i, summed over heads) x ||v_i|| (the values of
  all heads together), over the patch tokens, normalised to sum 1 (ATS's significance score);
  if var(scores) < threshold (7e-5), the image pools: ToMe's bipartite merge of r tokens
  (size-weighted); otherwise it prunes: the r lowest-scored tokens go, and the others are kept in
  descending score order (the class token first), as the release's sort leaves them.

Both give the same number of tokens, so the shape is static: both are computed and each example
takes its own (the accelerator form has no sort, scatter or gather). `--method ppt --r 50` is the
README's DeiT setting; proportional attention on, as the release evaluates it.
"""

import jax
import jax.numpy as jnp

from fastvit_jax.merge.methods import tome  # ToMe's A x B similarity cost
from fastvit_jax.merge import onehot
from fastvit_jax.merge.knobs import Knob

THRESHOLD = 7e-5  # the README's off-the-shelf DeiT variance threshold


def blocks(depth: int) -> tuple[int, ...]:
    """Where PPT reduces: DeiT's blocks 3, 6, 9 for 12 blocks."""
    return (depth // 4, depth // 2, 3 * depth // 4)


def significance(weights: jax.Array, v: jax.Array) -> jax.Array:
    """(B, H, N, N) attention and (B, H, N, Dh) values -> (B, N) scores: the class token's attention
    to each token summed over heads, times the token's value norm (all heads), normalised over the
    non-class tokens; the class token's own entry is 2 (it is always kept)."""
    cls = jnp.sum(weights[:, :, 0, :].astype(jnp.float32), axis=1)
    v_norm = jnp.linalg.norm(jnp.swapaxes(v, 1, 2).reshape(v.shape[0], v.shape[2], -1).astype(jnp.float32), axis=-1)
    s = (cls * v_norm)[:, 1:]
    s = s / jnp.sum(s, axis=1, keepdims=True)
    return jnp.concatenate([jnp.full((s.shape[0], 1), 2.0, s.dtype), s], axis=1)


def reduce(state, metric, scores, *, op, num_prefix: int, distill_token: bool):
    """One example: pool (ToMe) or prune (lowest scores) r tokens, as the score variance says."""

    n = metric.shape[0]
    pooled, score = onehot.global_merge(state, metric, r=op.r, num_prefix=num_prefix, distill_token=distill_token)
    rank = onehot.descending_rank(scores)  # the class token (score 2) first
    pruned = onehot.merge_by_assignment(state, jnp.where(rank < n - op.r, rank, -1), n - op.r)
    pool = jnp.var(scores[1:], ddof=1) < op.threshold  # torch.var: the unbiased variance
    chosen = jax.tree_util.tree_map(lambda a, b: jnp.where(pool, a, b), pooled, pruned)
    return chosen, jnp.where(pool, score, jnp.full_like(score, -2.0))


def padded_slots(metric, *, size, r, margin, num_prefix, valid, real, attention=None, distill_token=False,
                 threshold=THRESHOLD):
    """`reduce` on padded slots (merge/buckets.py) as (out_idx, merged, score) for a mean combine:
    padding in no pair, ranked after every real token, out of the variance; r may be traced."""
    n = metric.shape[0]
    everything = jnp.concatenate([jnp.ones(num_prefix, bool), valid])
    pool_idx, pool_score = onehot.bipartite_slots(metric, r, class_token=num_prefix > 0, distill_token=distill_token,
                                                  valid=everything, real=real + num_prefix)
    rank = onehot.descending_rank(jnp.where(everything, attention, -jnp.inf))  # the class token (score 2) first
    prune_idx = jnp.where(rank < real + num_prefix - r, rank, n)  # past the last slot: dropped
    s, m = attention[1:], everything[1:].astype(jnp.float32)
    mean = jnp.sum(s * m) / jnp.sum(m)
    pool = jnp.sum(m * (s - mean) ** 2) / (jnp.sum(m) - 1.0) < threshold  # the unbiased variance
    score = onehot.interleave(pool_score, jnp.full((n // 2,), -2.0))
    return (jnp.where(pool, pool_idx, prune_idx), jnp.zeros(n, bool), jnp.where(pool, score, -2.0))


def block(options, block: int, depth: int) -> dict:
    return {"rule": "ppt", "combine": "mean", "threshold": options.threshold if options.threshold is not None
            else THRESHOLD}


METHOD = {"knobs": (Knob("threshold", float, "an image pools (ToMe) when its token-score variance is below VAR, else prunes (default 7e-5, the release's DeiT setting)", metavar="VAR"),),
          "name": "ppt", "summary": "PPT: per image, pool (ToMe) or prune by token scores at depth/4, /2, 3/4",
          "reducer": True, "block": block, "blocks": blocks, "search": {"threshold": [7e-5, 0.0]}}
RULE = {"name": "ppt", "slots": None, "reduce": reduce, "match_macs": tome.match_macs, "attention_feature": significance,
        "padded": padded_slots}
