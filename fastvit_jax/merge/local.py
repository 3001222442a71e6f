"""Local merging (LGTM): bipartite matching inside w x w windows of the patch grid, per example.

Before each local block the patch tokens are re-sorted onto a 2D grid by their tracked location
(rows by mean row, then each row by mean column), the grid is padded bottom/right to multiples of w
and cut into windows. Sorting, padding and window partition are one gather whose static part is
precomputed; the matcher is vmapped over the windows (the window axis behaves like a batch axis).
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.merge import bipartite
from fastvit_jax.merge.state import TokenState, merge_weighted, take_tokens


@lru_cache(maxsize=None)
def window_layout(num_tokens: int, grid: tuple[int, int], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Static layout: for each (window, slot) the row-major grid slot it reads, and whether it is real.

    Returns slot (num_windows, w*w) int32 (num_tokens for padding) and valid (num_windows, w*w) bool.
    """
    rows, cols = grid
    hp, wp = math.ceil(rows / window) * window, math.ceil(cols / window) * window
    i, j = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
    slot = i * cols + j
    valid = (i < rows) & (j < cols) & (slot < num_tokens)
    slot = np.where(valid, slot, num_tokens)
    # (hp, wp) -> (hp/w, w, wp/w, w) -> (windows, w*w)
    def to_windows(a):
        return a.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
    slot, valid = to_windows(slot), to_windows(valid)
    # Real tokens first (row-major), padding last: the A/B alternation then runs over real tokens,
    # so a one-column sliver window can still merge.
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(slot, order, 1).astype(np.int32), np.take_along_axis(valid, order, 1)


def grid_order(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Token indices in row-major grid order: sort by mean row, fill rows of `cols`, sort each by column."""
    num_tokens = pos.shape[0]
    cols = grid[1]
    by_row = jnp.argsort(pos[:, 0], stable=True)
    row_slot = (jnp.arange(num_tokens) // cols).astype(jnp.float32)
    key = row_slot * (2.0 * cols + 2.0) + pos[by_row, 1]  # cols fit in [-1, cols): row slot dominates
    return by_row[jnp.argsort(key, stable=True)]


def local_merge(state: TokenState, metric: jax.Array, *, r: int, window: int, grid: tuple[int, int],
                tokens_out: int, num_prefix: int) -> tuple[TokenState, jax.Array]:
    """One example: merge r tokens inside each window. Prefix (cls) tokens are left untouched.

    state holds N = num_prefix + M tokens; returns tokens_out tokens and the merged-pair scores.
    """
    prefix = take_tokens(state, jnp.arange(num_prefix))
    patches = take_tokens(state, jnp.arange(num_prefix, state.x.shape[0]))
    metric = metric[num_prefix:]
    num_tokens = metric.shape[0]
    slot, valid = window_layout(num_tokens, grid, window)

    order = grid_order(patches.pos, grid)
    order_ext = jnp.concatenate([order, jnp.array([num_tokens], order.dtype)])
    idx = order_ext[slot]  # (windows, w*w) token index, num_tokens = padding row

    def gather(t):
        ext = jnp.concatenate([t, jnp.zeros((1,) + t.shape[1:], t.dtype)], axis=0)
        return ext[idx]

    win_state = jax.tree_util.tree_map(gather, patches)
    win_metric = gather(metric)

    def merge_window(s, m, v):
        matching = bipartite.match(m, r, class_token=False, valid=v)
        merged = merge_weighted(s, lambda t: bipartite.merge_sum(matching, t))
        return merged, matching.score

    merged, scores = jax.vmap(merge_window)(win_state, win_metric, jnp.asarray(valid))
    flat = jax.tree_util.tree_map(lambda t: t.reshape((-1,) + t.shape[2:]), merged)
    # Padding (size 0) is merged only with padding; drop it. The number of real tokens is static.
    keep = jnp.flatnonzero(flat.size > 0, size=tokens_out - num_prefix)
    patches = take_tokens(flat, keep)
    out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), prefix, patches)
    return out, scores.reshape(-1)
