"""Bipartite soft matching (ToMe, Bolya et al. 2022), written per example.

Functions here see one example: tokens are (N, ...) arrays. Batches and windows are added by
jax.vmap, so an image's result never depends on the rest of its batch.

`match` decides which tokens merge; `merge_sum` moves the chosen A tokens onto their B partners by
summation. Weighted averages (sizes, positions) are built on top in `state.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Matching(NamedTuple):
    """The result of matching N tokens; A = even positions, B = odd positions."""

    src_idx: jax.Array  # (r,) indices into A of tokens merged away
    dst_idx: jax.Array  # (r,) indices into B they merge into
    unm_idx: jax.Array  # (len(A) - r,) indices into A that survive
    score: jax.Array  # (r,) cosine similarity of each merged pair (for analysis)


def _normalise(metric: jax.Array) -> jax.Array:
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
    metric = _normalise(metric.astype(jnp.float32))
    a, b = metric[0::2], metric[1::2]
    scores = a @ b.T
    if valid is not None:
        va, vb = valid[0::2, None], valid[None, 1::2]
        scores = jnp.where(va & vb, scores, jnp.where(~va & ~vb, -2.0, -jnp.inf))
    if class_token:
        scores = scores.at[0, :].set(-jnp.inf)
    if distill_token:
        scores = scores.at[:, 0].set(-jnp.inf)
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)
    # Descending order of each A token's best edge; stable so ties keep token order.
    edge_order = jnp.argsort(node_max, descending=True, stable=True)
    src_idx = edge_order[:r]
    unm_idx = edge_order[r:]
    if class_token or valid is not None:
        # Keep survivors in their original order (cls first, as ToMe does; pads stay trailing).
        unm_idx = jnp.sort(unm_idx)
    return Matching(src_idx, node_idx[src_idx], unm_idx, node_max[src_idx])


def merge_sum(m: Matching, t: jax.Array, *, distill_token: bool = False) -> jax.Array:
    """Apply a matching to one per-token array t (N, ...): src tokens are added onto their dst."""
    src, dst = t[0::2], t[1::2]
    unm = src[m.unm_idx]
    dst = dst.at[m.dst_idx].add(src[m.src_idx])
    if distill_token:
        return jnp.concatenate([unm[:1], dst[:1], unm[1:], dst[1:]], axis=0)
    return jnp.concatenate([unm, dst], axis=0)


def max_merges(num_tokens: int, num_protected: int) -> int:
    """ToMe's bound: at most half of the unprotected tokens can merge in one step."""
    return max((num_tokens - num_protected) // 2, 0)
