"""Training-free token reducers published after ToMe, as per-block data (BlockOp.rule, .combine).

A reducer step is two small pure functions on one example:
  a rule says where every input token goes: out_idx (N,), the output slot of each token (a token that
    merges takes its partner's slot), and merged (N,), the tokens that gave up their own slot;
  a combine turns each slot's members into one token:
    mean   size-weighted mean (ToMe)
    attn   weighted by size x attention received (MCTF's attention-weighted pooling)
    prune  the receiving token unchanged, the others dropped (ToFu's early blocks)
    mlerp  the size-weighted mean rescaled to the largest norm among the members (ToFu's MLERP)
Rules:
  tome    ToMe's bipartite matching (A = even, B = odd tokens)
  pitome  PiToMe: energy E_i = mean_j ELU(cos_ij - margin) over the patch tokens; the 2r highest are
          candidates, alternately A and B in energy order; each A joins its most similar B; the rest
          (and the prefix tokens) are protected. Output [prefix, protected, B], both in energy order.
  mctf    MCTF: ToMe's graph with edge weight ((cos+1)/2)^(1/t_sim) x (info_a info_b)^(1/t_info)
          x (s_a s_b)^(1/t_size), info = 1 / attention received and s = 1 / size, each divided by
          its max; r//2 A tokens join their best B, then r - r//2 B tokens join their best unmerged
          A (with what joined them). Output [unmerged A, surviving B], each in index order.
Ranks come from pairwise comparisons (ties to the lower index) and the combine is a one-hot
matmul, so a step has no sort, scatter or gather and serves both merge implementations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastvit_jax.merge import onehot
from fastvit_jax.merge.bipartite import normalise
from fastvit_jax.merge.state import TokenState

_EXACT = jax.lax.Precision.HIGHEST
MCTF_TAUS = (1.0, 20.0, 40.0)  # (similarity, informativeness, size): MCTF's DeiT evaluation defaults
COMBINES = ("mean", "attn", "prune", "mlerp")


# ---------------------------------------------------------------- rules
def tome_slots(metric: jax.Array, r: int, *, num_prefix: int, distill_token: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ToMe's matching: (out_idx, merged, score per token: its pair's cosine if merged, else -2)."""
    out_idx, score_a = onehot.bipartite_slots(metric, r, class_token=num_prefix > 0, distill_token=distill_token)
    num_b = metric.shape[0] // 2
    score = onehot.interleave(score_a, jnp.full((num_b,), -2.0))
    return out_idx, score > -1.5, score


def pitome_slots(metric: jax.Array, r: int, *, num_prefix: int, margin: float
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PiToMe's energy-protected matching on one example (see the module docstring)."""
    n = metric.shape[0]
    m = n - num_prefix
    f = normalise(metric[num_prefix:].astype(jnp.float32))
    sim = jnp.dot(f, f.T, precision=_EXACT)
    energy = jnp.mean(jax.nn.elu(sim - margin), axis=1)
    rank = onehot.descending_rank(energy)
    is_a = (rank < 2 * r) & (rank % 2 == 0)
    is_b = (rank < 2 * r) & (rank % 2 == 1)
    to_b = jnp.where(is_b[None, :], sim, -jnp.inf)
    best = jnp.max(to_b, axis=1)
    # among equally similar B tokens, the one first in energy order
    best_rank = jnp.min(jnp.where(to_b == best[:, None], rank[None, :], n), axis=1)
    protected_slot = num_prefix + rank - 2 * r
    b_slot = lambda k: num_prefix + (m - 2 * r) + (k - 1) // 2
    slot = jnp.where(rank >= 2 * r, protected_slot, jnp.where(is_b, b_slot(rank), b_slot(best_rank)))
    prefix = jnp.arange(num_prefix)
    out_idx = jnp.concatenate([prefix, slot])
    merged = jnp.concatenate([prefix < 0, is_a])
    score = jnp.concatenate([jnp.full((num_prefix,), -2.0), jnp.where(is_a, best, -2.0)])
    return out_idx, merged, score


def mctf_slots(metric: jax.Array, attention: jax.Array, size: jax.Array, r: int, *, num_prefix: int,
               distill_token: bool, taus: tuple[float, float, float] = MCTF_TAUS
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MCTF's bidirectional multi-criteria matching on one example (see the module docstring).

    attention: (N,) mean attention each token received (over heads and queries)."""
    tau_sim, tau_info, tau_size = taus
    f = normalise(metric.astype(jnp.float32))
    cos = jnp.dot(f[0::2], f[1::2].T, precision=_EXACT)
    num_a, num_b = cos.shape
    info = 1.0 / attention.astype(jnp.float32)
    info = info / jnp.max(info)
    small = 1.0 / size
    small = small / jnp.max(small)
    pair = lambda v, tau: (v[0::2, None] * v[None, 1::2]) ** (1.0 / tau)
    weight = ((cos + 1.0) / 2.0) ** (1.0 / tau_sim) * pair(info, tau_info) * pair(small, tau_size)
    a, b = jnp.arange(num_a), jnp.arange(num_b)
    if num_prefix > 0:
        weight = jnp.where(a[:, None] == 0, -jnp.inf, weight)
    if distill_token:
        weight = jnp.where(b[None, :] == 0, -jnp.inf, weight)
    r1, r2 = r // 2, r - r // 2

    def best(w):  # each row's max and the first column attaining it
        top = jnp.max(w, axis=1)
        return top, jnp.min(jnp.where(w == top[:, None], jnp.arange(w.shape[1]), w.shape[1]), axis=1)

    a_max, a_to = best(weight)
    a_merged = onehot.descending_rank(a_max) < r1
    back = jnp.where(a_merged[None, :], -jnp.inf, weight.T)  # B -> the A tokens still standing
    if distill_token:
        back = jnp.where(b[:, None] == 0, -jnp.inf, back)
    b_max, b_to = best(back)
    b_merged = onehot.descending_rank(b_max) < r2

    a_keep = onehot.count_before(~a_merged)
    b_keep = num_a - r1 + onehot.count_before(~b_merged)
    if distill_token:  # output [cls, distill, other unmerged A, other B], as ToMe
        a_keep = a_keep + (a_keep >= 1)
        b_keep = jnp.where(b == 0, 1, b_keep)
    b_slot = jnp.where(b_merged, onehot.pick(a[None, :] == b_to[:, None], a_keep), b_keep)
    a_slot = jnp.where(a_merged, onehot.pick(b[None, :] == a_to[:, None], b_slot), a_keep)
    a_cos = jnp.sum(jnp.where(b[None, :] == a_to[:, None], cos, 0.0), axis=1)  # row-wise cos[i, a_to[i]]
    b_cos = jnp.sum(jnp.where(a[None, :] == b_to[:, None], cos.T, 0.0), axis=1)
    out_idx = onehot.interleave(a_slot, b_slot)
    merged = onehot.interleave(a_merged, b_merged)
    score = onehot.interleave(jnp.where(a_merged, a_cos, -2.0), jnp.where(b_merged, b_cos, -2.0))
    return out_idx, merged, score


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
    weight = state.size if how != "attn" else state.size * attention.astype(jnp.float32)
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


def global_reduce(state: TokenState, metric: jax.Array, attention: jax.Array | None, *, op, num_prefix: int,
                  distill_token: bool) -> tuple[TokenState, jax.Array]:
    """One example, one global BlockOp with a rule/combine other than ToMe's mean: (state, score)."""
    if op.rule == "tome":
        out_idx, merged, score = tome_slots(metric, op.r, num_prefix=num_prefix, distill_token=distill_token)
    elif op.rule == "pitome":  # every prefix token (cls, distill) is protected
        out_idx, merged, score = pitome_slots(metric, op.r, num_prefix=num_prefix, margin=op.margin)
    elif op.rule == "mctf":
        out_idx, merged, score = mctf_slots(metric, attention, state.size, op.r, num_prefix=num_prefix,
                                            distill_token=distill_token)
    else:
        raise ValueError(f"unknown rule {op.rule!r}")
    return combine(state, out_idx, merged, op.tokens_out, op.combine, attention), score
