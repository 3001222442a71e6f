"""How a global block pairs tokens and combines each group, as per-block data (BlockOp.rule,
.combine); the rules themselves live with their methods (merge/methods: tome, pitome, mctf).

A reducer step is two small pure functions on one example:
  a rule says where every input token goes: out_idx (N,), the output slot of each token (a token that
    merges takes its partner's slot), and merged (N,), the tokens that gave up their own slot;
  a combine turns each slot's members into one token:
    mean   size-weighted mean (ToMe)
    plain  unweighted mean of the members (PiToMe as released)
    attn   weighted by size x attention received (MCTF's attention-weighted pooling)
    prune  the receiving token unchanged, the others dropped (ToFu's early blocks)
    mlerp  the size-weighted mean rescaled to the largest norm among the members (ToFu's MLERP)
Ranks come from pairwise comparisons (ties to the lower index) and the combine is a one-hot
matmul, so a step has no sort, scatter or gather and serves both merge implementations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastvit_jax.merge import onehot
from fastvit_jax.merge.state import TokenState

_EXACT = jax.lax.Precision.HIGHEST
COMBINES = ("mean", "plain", "attn", "prune", "mlerp")


# ---------------------------------------------------------------- rules
def tome_slots(metric: jax.Array, r: int, *, num_prefix: int, distill_token: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ToMe's matching: (out_idx, merged, score per token: its pair's cosine if merged, else -2)."""
    out_idx, score_a = onehot.bipartite_slots(metric, r, class_token=num_prefix > 0, distill_token=distill_token)
    num_b = metric.shape[0] // 2
    score = onehot.interleave(score_a, jnp.full((num_b,), -2.0))
    return out_idx, score > -1.5, score


def with_prefix(num_prefix: int, slot: jax.Array, merged: jax.Array, cos: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(out_idx, merged, score) of a rule that decided the patch tokens' slots, merges and pair
    cosines: the prefix tokens keep their own slots in front, never merge, and score -2, as does
    every token that did not merge."""
    prefix = jnp.arange(num_prefix)
    out_idx = jnp.concatenate([prefix, slot])
    score = jnp.concatenate([jnp.full((num_prefix,), -2.0), jnp.where(merged, cos, -2.0)])
    return out_idx, jnp.concatenate([prefix < 0, merged]), score


# ---------------------------------------------------------------- combine
def combine(state: TokenState, out_idx: jax.Array, merged: jax.Array, tokens_out: int, how: str,
            attention: jax.Array | None = None) -> TokenState:
    """One example: the tokens of each output slot become one (`how` in COMBINES).

    Sizes, position sums and sources add over the members that count (prune: the receiver only)."""
    if how not in COMBINES:
        raise ValueError(f"unknown combine {how!r}; allowed: {', '.join(COMBINES)}")
    members = jnp.arange(tokens_out)[:, None] == out_idx[None, :]  # (T, N)
    if how == "prune":
        members = members & ~merged[None, :]
    size = jnp.sum(jnp.where(members, state.size[None, :], 0.0), axis=1)
    weight = {"plain": jnp.ones_like(state.size), "attn": state.size * attention.astype(jnp.float32)
              if attention is not None else None}.get(how, state.size)
    held = jnp.where(members, weight[None, :], 0.0)
    total = jnp.sum(held, axis=1, keepdims=True)
    # a slot with one member must give it back exactly; w / w is not always 1.0 when XLA divides
    # by multiplying with a reciprocal
    share = jnp.where(held == total, 1.0, held / jnp.maximum(total, 1e-30))
    x32 = state.x.astype(jnp.float32)
    x = jnp.dot(share, x32, precision=_EXACT)
    if how == "mlerp":  # keep the largest member norm; a slot with one member stays exactly itself
        norms = jnp.linalg.norm(x32, axis=-1)
        largest = jnp.max(jnp.where(members, norms[None, :], 0.0), axis=1)
        grown = x * (largest / jnp.maximum(jnp.linalg.norm(x, axis=-1), 1e-30))[:, None]
        x = jnp.where((jnp.sum(members, axis=1) > 1)[:, None], grown, x)
    add = lambda t: jnp.dot(members.astype(jnp.float32), t, precision=_EXACT)
    source = None if state.source is None else add(state.source)
    return TokenState(x.astype(state.x.dtype), size, add(state.pos_sum), source)
