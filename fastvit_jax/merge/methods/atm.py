"""ATM, Adaptive Token Merging (Lee & Choi, ECAI 2025, arXiv 2505.15160; no code released), in its
static form:

  - thresholds: a pair merges only if its similarity reaches the block's threshold
    theta_l = max(alpha - (exp(beta (l - 1)) - 1), theta_min), l = 1 ... depth, falling with depth.
    The paper counts the pairs above it per batch at run time; here the counts are calibrated on
    images (calibrate.py: the median over them of each block's count, block after block) into a
    static per-block r (`--r-list`), so shapes stay static and each plan compiles once;
  - size-distinctive matching in the last blocks (from `size_split`, default 3/4 of the depth): the
    patch tokens are split by how many patches they hold, the smaller half (A) against the larger
    (B; ties in size by position), and each A joins the B of lowest merging error
    n_a n_b / (n_a + n_b) x (1 - cos); the r A tokens of lowest error merge (size-weighted mean).
    Earlier blocks match as ToMe does (A even, B odd, highest cosine).

Output of a size-distinctive block: [prefix, unmerged A (position order), B (position order)].
Ranks and slots come from pairwise comparisons: no sort, scatter or gather.
"""

import math

import jax
import jax.numpy as jnp
from fastvit_jax.merge import onehot, reducers
from fastvit_jax.merge.bipartite import normalise
from fastvit_jax.merge.knobs import Knob

DEFAULT_THRESHOLDS = (0.9, 0.03, 0.5)  # alpha, beta, theta_min (ours; the paper tunes them per model)


def size_split(options, depth: int) -> int:
    return options.size_split if options.size_split is not None else depth - depth // 4


def thresholds(depth: int, alpha: float, beta: float, floor: float) -> list[float]:
    return [max(alpha - (math.exp(beta * (layer - 1)) - 1.0), floor) for layer in range(1, depth + 1)]


def match_macs(n: int, num_prefix: int, dim: int) -> int:
    """Cosines of all patch pairs (which half a token is in depends on the sizes)."""
    return (n - num_prefix) ** 2 * dim


def size_distinctive_pairs(metric: jax.Array, size: jax.Array, valid: jax.Array | None = None, real=None):
    """One example's patch tokens: (is_a (m,), partner one-hot (m, m), error of that pair (m,), its cosine (m,));
    rows of B tokens are empty (error +inf, cosine -2). valid/real: padded slots (merge/buckets.py)
    are in neither half."""

    m = metric.shape[0]
    key = size if valid is None else jnp.where(valid, size, jnp.inf)  # padding ranks after every real token
    rank = onehot.lexicographic_rank(key, jnp.zeros_like(size))  # ascending size, ties by position
    is_a = rank < (m if real is None else real) // 2
    is_b = ~is_a if valid is None else valid & ~is_a
    f = normalise(metric.astype(jnp.float32))
    cos = jnp.dot(f, f.T, precision=jax.lax.Precision.HIGHEST)
    weight = size[:, None] * size[None, :] / (size[:, None] + size[None, :])
    error = jnp.where(is_a[:, None] & is_b[None, :], weight * (1.0 - cos), jnp.inf)
    best = jnp.min(error, axis=1)
    first = jnp.min(jnp.where(error == best[:, None], jnp.arange(m)[None, :], m), axis=1)
    partner = is_a[:, None] & (jnp.arange(m)[None, :] == first[:, None])
    return is_a, partner, best, jnp.sum(jnp.where(partner, cos, 0.0), axis=1) - 2.0 * ~is_a


def atm_slots(metric: jax.Array, size: jax.Array, r, *, num_prefix: int, valid: jax.Array | None = None,
              real=None):
    """(out_idx, merged, score) of a size-distinctive block on one example (module docstring).
    valid (patch tokens,) and real (their count): padded slots, whose slots follow the real outputs."""

    n = metric.shape[0]
    is_a, partner, error, cos = size_distinctive_pairs(metric[num_prefix:], size[num_prefix:].astype(jnp.float32),
                                                       valid, real)
    order = onehot.descending_rank(jnp.where(is_a, -error, -jnp.inf))  # lowest error first
    merged_a = is_a & (order < r)
    unmerged_a = is_a & ~merged_a
    num_a = (n - num_prefix if real is None else real) // 2
    b_slot = num_prefix + (num_a - r) + onehot.count_before(~is_a)  # padding: after the real B tokens
    slot = jnp.where(~is_a, b_slot, jnp.where(unmerged_a, num_prefix + onehot.count_before(unmerged_a),
                                              onehot.pick(partner, b_slot)))
    return reducers.with_prefix(num_prefix, slot, merged_a, cos)


def slots(metric, op, *, size, attention, num_prefix, distill_token):
    return atm_slots(metric, size, op.r, num_prefix=num_prefix)


def block(options, block: int, depth: int) -> dict:
    return {"rule": "atm"} if block >= size_split(options, depth) else {}


METHOD = {"knobs": (Knob("size_split", int, "blocks from L on match small tokens with large ones by merging error (default 3/4 of the depth)", low=0, metavar="L"),),
          "name": "atm", "summary": "ATM: ToMe matching, then size-distinctive matching in the last blocks "
                                    "(calibrate thresholds into --r-list with `fastvit plan --calibrate`)",
          "reducer": True, "block": block, "search": {"size_split": [None, 6]}}
def padded_slots(metric, *, size, r, margin, num_prefix, valid, real, attention=None, distill_token=False,
                 threshold=None):
    return atm_slots(metric, size, r, num_prefix=num_prefix, valid=valid, real=real)


RULE = {"name": "atm", "slots": slots, "match_macs": match_macs, "padded": padded_slots}
