"""PiToMe as released (Tran et al., NeurIPS 2024; hchautran/PiToMe's image-classification code,
`algo/pitome/merge.py: pitome_vision` as `main_ic.py` runs DeiT): every block merges with the
protected rule on the head-mean keys of the patch tokens (prefix tokens never merge):

  energy_i = mean_j ELU((cos_ij - margin) / 0.01) over all patch tokens j (itself included);
  the 2r most energetic tokens are candidates, alternately A and B in energy order, the rest are
  protected; each A joins the B of highest ELU'd similarity (it saturates at -1 far below the
  margin, so ties go to the B first in energy order); each group becomes its plain mean.

margin = 0.95 (1 - block / depth). The release runs a keep-ratio schedule (`--keep 0.9125`:
r = floor(T - T * keep) of the T patch tokens entering each block) and its token sizes never reach
the attention (its merge returns no size), so proportional attention is off by default.
Output [prefix, protected (energy order), B groups (energy order)].
"""

import jax
import jax.numpy as jnp
from fastvit_jax.merge import onehot, reducers
from fastvit_jax.merge.bipartite import normalise

SCALE = 100.0  # the release's 1 / 0.01 inside the ELU


def margin(block: int, depth: int) -> float:
    return 0.95 - 0.95 * block / depth


def match_macs(n: int, num_prefix: int, dim: int) -> int:
    """Similarities of all patch pairs (the energy needs every one)."""
    return (n - num_prefix) ** 2 * dim


def pitome_slots(metric: jax.Array, r, *, num_prefix: int, margin, valid: jax.Array | None = None,
                 real=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One example: (out_idx, merged, score) as in the module docstring; score: a merged A token's
    cosine with its B, else -2. valid (patch tokens,) and real (their count): padded slots
    (merge/buckets.py), in no energy, ranked last, their slots after the real outputs."""

    n = metric.shape[0]
    m = n - num_prefix if real is None else real
    f = normalise(metric[num_prefix:].astype(jnp.float32))
    cos = jnp.dot(f, f.T, precision=jax.lax.Precision.HIGHEST)
    sim = jax.nn.elu((cos - margin) * SCALE)
    if valid is None:
        energy = jnp.mean(sim, axis=1)
    else:  # tokens whose energies tie but for rounding (every term saturated at -1) may change places
        energy = jnp.where(valid, jnp.sum(jnp.where(valid[None, :], sim, 0.0), axis=1) / m, -jnp.inf)
    rank = onehot.descending_rank(energy)
    is_a = (rank < 2 * r) & (rank % 2 == 0)
    is_b = (rank < 2 * r) & (rank % 2 == 1)
    to_b = jnp.where(is_b[None, :], sim, -jnp.inf)
    best = jnp.max(to_b, axis=1)
    best_rank = jnp.min(jnp.where(to_b == best[:, None], rank[None, :], n), axis=1)  # first B in energy order
    partner_cos = jnp.max(jnp.where(is_b[None, :] & (rank[None, :] == best_rank[:, None]), cos, -2.0), axis=1)
    protected_slot = num_prefix + rank - jnp.where(rank < m, 2 * r, r)  # padding: after the m - r outputs
    b_slot = lambda k: num_prefix + (m - 2 * r) + (k - 1) // 2
    slot = jnp.where(rank >= 2 * r, protected_slot, jnp.where(is_b, b_slot(rank), b_slot(best_rank)))
    return reducers.with_prefix(num_prefix, slot, is_a, partner_cos)


def slots(metric, op, *, size, attention, num_prefix, distill_token):
    return pitome_slots(metric, op.r, num_prefix=num_prefix, margin=op.margin)


def block(options, block: int, depth: int) -> dict:
    return {"rule": "pitome", "combine": "plain", "margin": margin(block, depth)}


METHOD = {"name": "pitome", "summary": "PiToMe as released: energy-protected matching, plain means (--keep 0.9125)",
          "reducer": True, "block": block, "defaults": {"prop_attn": False},
          "search": {"skip": [0, 1, 2], "keep": [None, 1.0]}}  # keep 1.0: a keep-ratio schedule the budget places
def padded_slots(metric, *, size, r, margin, num_prefix, valid, real, attention=None, distill_token=False,
                 threshold=None):
    return pitome_slots(metric, r, num_prefix=num_prefix, margin=margin, valid=valid, real=real)


RULE = {"name": "pitome", "slots": slots, "match_macs": match_macs, "padded": padded_slots}
