"""Bipartite soft matching (ToMe, Bolya et al. 2022), written per example.

Functions here see one example: tokens are (N, ...) arrays. Batches and windows are added by
jax.vmap, so an image's result never depends on the rest of its batch.

`match` decides which tokens merge; `token_indices` says where they sit, and `state.merge_into`
moves the chosen A tokens onto their B partners (size-weighted means).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Matching(NamedTuple):
    """The result of matching N tokens; A = even positions, B = odd positions."""

    src_idx: jax.Array  # (r,) indices into A of tokens merged away
    dst_idx: jax.Array  # (r,) indices into B they merge into
    unm_idx: jax.Array  # (len(A) - r,) indices into A that survive, in index order
    score: jax.Array  # (r,) cosine similarity of each merged pair (for analysis)


def normalise(metric: jax.Array) -> jax.Array:
    # The floor only guards all-zero pad tokens; for real tokens it equals metric / ||metric||.
    norm = jnp.linalg.norm(metric, axis=-1, keepdims=True)
    return metric / jnp.maximum(norm, 1e-12)


def match(metric: jax.Array, r: int, *, class_token: bool = True, distill_token: bool = False,
          valid: jax.Array | None = None) -> Matching:
    """ToMe's bipartite soft matching on one example.

    metric: (N, C) similarity features. r: static number of merges (already clamped by the plan).
    class_token protects token 0 (first of A), distill_token protects token 1 (first of B).
    valid: optional (N,) bool marking real tokens. Real tokens merge only with real tokens; padding
    merges only with padding (score -2, below any cosine), so a window with few real tokens still
    makes its r merges without touching them (see plan.local_merges).
    """
    node_max, node_idx = best_partners(metric, class_token=class_token, distill_token=distill_token, valid=valid)
    src_idx, unm_idx = split_top(node_max, r)
    return Matching(src_idx, node_idx[src_idx], unm_idx, node_max[src_idx])


def best_partners(metric: jax.Array, *, class_token: bool = True, distill_token: bool = False,
                  valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Each A token's best cosine similarity to a B token and that B token (A = even, B = odd
    positions; protected tokens and forbidden pairs score -inf). Options as `match`."""
    metric = normalise(metric.astype(jnp.float32))
    a, b = metric[0::2], metric[1::2]
    # Full float32 even where matmuls default to TF32/bf16 passes (GPU/TPU): near-ties decide merges.
    scores = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    if valid is not None:
        va, vb = valid[0::2, None], valid[None, 1::2]
        scores = jnp.where(va & vb, scores, jnp.where(~va & ~vb, -2.0, -jnp.inf))
    if class_token:
        scores = jnp.where(jnp.arange(scores.shape[0])[:, None] == 0, -jnp.inf, scores)
    if distill_token:
        scores = jnp.where(jnp.arange(scores.shape[1])[None, :] == 0, -jnp.inf, scores)
    node_max = scores.max(axis=-1)
    # First B index attaining the max (argmax's tie rule). Two plain reductions: XLA:CPU runs the
    # variadic max+index reduce of argmax several times slower (BENCHMARKS.md section 2).
    num_b = scores.shape[-1]
    node_idx = jnp.min(jnp.where(scores == node_max[:, None], jnp.arange(num_b), num_b), axis=-1)
    return node_max, node_idx


def split_top(values: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
    """(indices of the r largest values, descending, ties lower index first; the others in index order).

    Same result as a stable descending argsort split at r, without sorting everything: top_k picks
    the r, and the survivors are placed by a running count (cumsum + scatter).
    """
    n = values.shape[0]
    if r == 0:
        return jnp.zeros((0,), jnp.int32), jnp.arange(n, dtype=jnp.int32)
    _, top = jax.lax.top_k(values, r)
    top = top.astype(jnp.int32)
    chosen = jnp.zeros(n, bool).at[top].set(True)
    rank = jnp.cumsum(~chosen) - 1
    rest = jnp.zeros(n - r, jnp.int32).at[jnp.where(chosen, n - r, rank)].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")
    return top, rest


def token_indices(m: Matching, num_tokens: int, *, distill_token: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The matching in token positions (A = even, B = odd): src (r,) and dst (r,) of each merged
    pair, and keep (num_tokens - r,) the output order [unmerged A, all B] (distill token second).
    Hand them to state.merge_into."""
    b = 2 * jnp.arange(num_tokens // 2, dtype=jnp.int32) + 1
    unm = 2 * m.unm_idx
    if distill_token:
        keep = jnp.concatenate([unm[:1], b[:1], unm[1:], b[1:]])
    else:
        keep = jnp.concatenate([unm, b])
    return 2 * m.src_idx, 2 * m.dst_idx + 1, keep


def max_merges(num_tokens: int, num_protected: int) -> int:
    """ToMe's bound: at most half of the unprotected tokens can merge in one step."""
    return max((num_tokens - num_protected) // 2, 0)
