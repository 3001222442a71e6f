"""What travels with the tokens through a merged ViT.

TokenState holds, per example, the token features and what merging needs to remember:
  size   how many input patches each token stands for (ToMe's size; 0 marks padding),
  pos    size-weighted mean (row, col) of the patches a token holds (LGTM's location tracking),
  source optional (N, num_patches) 0/1 map of the patches each token holds (visualisation).
The class token has size 1, pos (-1, -1) and an empty source row.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class TokenState(NamedTuple):
    x: jax.Array  # (..., N, D)
    size: jax.Array  # (..., N) float32
    pos: jax.Array  # (..., N, 2) float32
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


def merge_weighted(state: TokenState, merge_fn: Callable[[jax.Array], jax.Array]) -> TokenState:
    """Merge one example's tokens: features and positions become size-weighted means, sizes add.

    merge_fn sums the rows it joins (bipartite.merge_sum with a fixed matching).
    """
    w = state.size[:, None]
    size = merge_fn(state.size)
    denom = jnp.where(size > 0, size, 1.0)[:, None]  # padding (size 0) stays 0 instead of 0/0
    x = (merge_fn(state.x * w) / denom).astype(state.x.dtype)
    pos = merge_fn(state.pos * w) / denom
    source = None if state.source is None else merge_fn(state.source)
    return TokenState(x, size, pos, source)


def take_tokens(state: TokenState, idx: jax.Array) -> TokenState:
    """Gather tokens idx (K,) of one example."""
    return jax.tree_util.tree_map(lambda t: t[idx], state)
