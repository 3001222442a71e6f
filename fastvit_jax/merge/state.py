"""What travels with the tokens through a merged ViT.

TokenState holds, per example, the token features and what merging needs to remember:
  size   how many input patches each token stands for (ToMe's size),
  pos_sum  the summed (row, col) of the patches a token holds; pos_sum / size is its mean location
         (LGTM's location tracking). Sums of integers stay exact, so every implementation of the
         merge finds the same locations and sorts tokens onto the same grid,
  source optional (N, num_patches) 0/1 map of the patches each token holds (visualisation).
The class token has size 1, pos_sum (-1, -1) and an empty source row.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenState(NamedTuple):
    x: jax.Array  # (..., N, D)
    size: jax.Array  # (..., N) float32
    pos_sum: jax.Array  # (..., N, 2) float32
    source: jax.Array | None = None  # (..., N, P) float32


def initial_state(x: jax.Array, grid: tuple[int, int], num_prefix: int, track_source: bool) -> TokenState:
    """State for a batch of freshly embedded tokens x (B, num_prefix + gh*gw, D)."""
    batch = x.shape[0]
    gh, gw = grid
    rows, cols = jnp.meshgrid(jnp.arange(gh, dtype=jnp.float32), jnp.arange(gw, dtype=jnp.float32),
                              indexing="ij")
    patch_pos = jnp.stack([rows.ravel(), cols.ravel()], axis=-1)
    pos = jnp.concatenate([jnp.full((num_prefix, 2), -1.0), patch_pos], axis=0)
    pos = jnp.broadcast_to(pos, (batch,) + pos.shape)
    size = jnp.ones(x.shape[:2], jnp.float32)
    source = None
    if track_source:
        eye = jnp.eye(gh * gw, dtype=jnp.float32)
        src = jnp.concatenate([jnp.zeros((num_prefix, gh * gw), jnp.float32), eye], axis=0)
        source = jnp.broadcast_to(src, (batch,) + src.shape)
    return TokenState(x, size, pos, source)


def merge_into(state: TokenState, src: jax.Array, dst: jax.Array, keep: jax.Array) -> TokenState:
    """One example: token src[i] merges into dst[i] (several may share a dst); keep then lists the
    output tokens in order. Features become size-weighted means; sizes, position sums and sources
    add. Indices past the last token (window padding) are ignored.

    Only the receiving tokens change: x_d' = x_d + sum_s (x_s - x_d) size_s / size_d', which is the
    weighted mean without weighting and re-dividing every token (two full passes over x).
    """
    get = lambda t, i, fill: t.at[i].get(mode="fill", fill_value=fill)
    size_src = get(state.size, src, 0.0)
    size = state.size.at[dst].add(size_src, mode="drop")
    share = size_src / get(size, dst, 1.0)

    def mean(t):
        delta = (get(t, src, 0) - get(t, dst, 0)).astype(jnp.float32) * share[:, None]
        return t.at[dst].add(delta.astype(t.dtype), mode="drop")[keep]

    add = lambda t: t.at[dst].add(get(t, src, 0), mode="drop")[keep]
    source = None if state.source is None else add(state.source)
    return TokenState(mean(state.x), size[keep], add(state.pos_sum), source)


def mean_pos(state: TokenState) -> jax.Array:
    """(..., N, 2) mean (row, col) of the patches each token holds."""
    return state.pos_sum / state.size[..., None]


def take_tokens(state: TokenState, idx: jax.Array) -> TokenState:
    """Gather tokens idx (K,) of one example."""
    return jax.tree_util.tree_map(lambda t: t[idx], state)
