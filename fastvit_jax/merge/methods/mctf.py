"""MCTF as released (Lee et al., CVPR 2024; mlvlab/MCTF `utils/mctf.py`, `models/modules/blocks.py`,
as `run/eval_deit_t_mctf.sh` evaluates DeiT-T: r 16 in blocks 1-11, i.e. `--r 16 --skip 1`).

One step ahead: a block computes its attention map on its input, merges its input tokens x (the
metric is x itself) and the map with them, and computes the attention output once, from the merged
map and the merged tokens' values (merge/apply.py merge_ahead). The matching is ToMe's graph with
edge weight ((cos + 1) / 2)^(1/t_sim) x (info_a info_b)^(1/t_info) x (s_a s_b)^(1/t_size),
info = 1 / attention received (mean over heads and queries) and s = 1 / size, each divided by its
max, temperatures (1, 20, 40); r // 2 A tokens join their best B, then r - r // 2 B tokens join their
best unmerged A (with what joined them); pooling weights attention received x size (pooling type 1).
Output [unmerged A in index order, surviving B in descending order of their best edge].
"""

import jax
import jax.numpy as jnp

from fastvit_jax.merge.methods import tome  # ToMe's A x B similarity cost
from fastvit_jax.merge import onehot
from fastvit_jax.merge.bipartite import normalise

MCTF_TAUS = (1.0, 20.0, 40.0)  # (similarity, informativeness, size): MCTF's DeiT evaluation defaults
_EXACT = jax.lax.Precision.HIGHEST


def mctf_slots(metric: jax.Array, attention: jax.Array, size: jax.Array, r, *, num_prefix: int,
               distill_token: bool, taus: tuple[float, float, float] = MCTF_TAUS, valid: jax.Array | None = None,
               real=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MCTF's bidirectional multi-criteria matching on one example (see the module docstring).

    attention: (N,) mean attention each token received (over heads and queries). valid (N,) and
    real (their count): padded slots (merge/buckets.py), in no pair and in slots after the real
    outputs; r may then be traced."""

    tau_sim, tau_info, tau_size = taus
    f = normalise(metric.astype(jnp.float32))
    cos = jnp.dot(f[0::2], f[1::2].T, precision=_EXACT)
    num_a, num_b = cos.shape
    real_a = num_a if real is None else (real + 1) // 2
    keep = (lambda v: v) if valid is None else (lambda v: jnp.where(valid, v, 0.0))  # padding: 1/0
    info = keep(1.0 / attention.astype(jnp.float32))
    info = info / jnp.max(info)
    small = keep(1.0 / size)
    small = small / jnp.max(small)
    pair = lambda v, tau: (v[0::2, None] * v[None, 1::2]) ** (1.0 / tau)
    weight = ((cos + 1.0) / 2.0) ** (1.0 / tau_sim) * pair(info, tau_info) * pair(small, tau_size)
    if valid is not None:
        weight = jnp.where(valid[0::2, None] & valid[None, 1::2], weight, -jnp.inf)
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
    b_rank = onehot.descending_rank(b_max)
    b_merged = b_rank < r2

    a_keep = onehot.count_before(~a_merged)
    # surviving B tokens in descending order of their best edge, as the release's sort leaves them
    b_keep = real_a - r1 + b_rank - r2
    if distill_token:  # output [cls, distill, other unmerged A, other B], as ToMe
        a_keep = a_keep + (a_keep >= 1)
        b_keep = jnp.where(b == 0, 1, b_keep + 1)
    b_slot = jnp.where(b_merged, onehot.pick(a[None, :] == b_to[:, None], a_keep), b_keep)
    a_slot = jnp.where(a_merged, onehot.pick(b[None, :] == a_to[:, None], b_slot), a_keep)
    a_cos = jnp.sum(jnp.where(b[None, :] == a_to[:, None], cos, 0.0), axis=1)  # row-wise cos[i, a_to[i]]
    b_cos = jnp.sum(jnp.where(a[None, :] == b_to[:, None], cos.T, 0.0), axis=1)
    out_idx = onehot.interleave(a_slot, b_slot)
    merged = onehot.interleave(a_merged, b_merged)
    score = onehot.interleave(jnp.where(a_merged, a_cos, -2.0), jnp.where(b_merged, b_cos, -2.0))
    if valid is not None:  # padded token i (i >= real) to slot i - r: after the real tokens' real - r
        out_idx = jnp.where(valid, out_idx, jnp.arange(out_idx.shape[0]) - r)
    return out_idx, merged, score


def slots(metric, op, *, size, attention, num_prefix, distill_token):
    return mctf_slots(metric, attention, size, op.r, num_prefix=num_prefix, distill_token=distill_token)


def padded_slots(metric, *, size, r, margin, num_prefix, valid, real, attention=None, distill_token=False,
                 threshold=None):
    """valid/real: the patch tokens' (as every rule's padded slots take them); the prefix is real."""
    everything = jnp.concatenate([jnp.ones(num_prefix, bool), valid])
    return mctf_slots(metric, attention, size, r, num_prefix=num_prefix, distill_token=distill_token,
                      valid=everything, real=real + num_prefix)


METHOD = {"name": "mctf", "summary": "MCTF as released: multi-criteria bidirectional matching one step ahead "
                                     "of the attention, attention-weighted pooling (--r 16 --skip 1)",
          "reducer": True, "block": lambda options, block, depth: {"rule": "mctf", "combine": "attn", "ahead": True},
          "defaults": {"metric": "x"}, "search": {"skip": [0, 1, 2]}}
def received(weights, values):
    """The attention each token received, averaged over heads and queries (its informativeness is 1 / this)."""
    return jnp.mean(weights.astype(jnp.float32), axis=(1, 2))


RULE = {"name": "mctf", "slots": slots, "match_macs": tome.match_macs, "attention_feature": received,
        "padded": padded_slots}
