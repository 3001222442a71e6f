"""Local merging (LGTM): bipartite matching inside w x w windows of the patch grid, per example.

The static window geometry (the grid tokens are sorted onto, window counts, how many real tokens
each window can merge) lives here too: `plan.make_plan` asks it how many tokens a local block merges.

Before each local block the patch tokens are re-sorted onto a 2D grid by their tracked location
(rows by mean row, then each row by mean column), the grid is padded bottom/right to multiples of w
and cut into windows. Sorting, padding and window partition are one gather of the similarity
features whose static part is precomputed; the windows of all examples are fused into one batch
axis and the matcher is vmapped over it. The chosen pairs are then merged back in token space.
`padded_local_merge` does the same on padded slots (merge/buckets.py) with the window, the grid and
r per window as data, so all of a plan's local blocks can be one compiled program.
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.merge import bipartite
from fastvit_jax.merge.state import TokenState, mean_pos, merge_into


# ---------------------------------------------------------------- window geometry (static)
def num_windows(grid: tuple[int, int], window: int) -> int:
    """Windows of a (rows, cols) grid padded bottom/right to multiples of `window`."""
    return math.ceil(grid[0] / window) * math.ceil(grid[1] / window)


@lru_cache(maxsize=None)
def sort_grid(num_tokens: int, patch_grid: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the grid that num_tokens patch tokens are re-sorted onto (aspect kept)."""
    gh, gw = patch_grid
    if num_tokens >= gh * gw:
        return patch_grid
    cols = min(gw, max(1, math.ceil(gw * math.sqrt(num_tokens / (gh * gw)))))
    return (math.ceil(num_tokens / cols), cols)


@lru_cache(maxsize=None)
def window_counts(num_tokens: int, grid: tuple[int, int], window: int) -> tuple[tuple[int, int, int, int], ...]:
    """Per window, (real A, real B, pad A, pad B) slot counts.

    Tokens fill the grid row-major (slots >= num_tokens are padding); the grid is padded
    bottom/right to multiples of `window`; within a window the real tokens come first, then the
    padding, and A = even slots, B = odd slots.
    """
    rows, cols = grid
    counts = []
    for wr in range(math.ceil(rows / window)):
        for wc in range(math.ceil(cols / window)):
            real = sum(1 for k in range(window * window)
                       if (i := wr * window + k // window) < rows and (j := wc * window + k % window) < cols
                       and i * cols + j < num_tokens)
            # real tokens occupy slots [0, real), padding [real, w*w)
            pad_a = sum(1 for k in range(real, window * window) if k % 2 == 0)
            counts.append(((real + 1) // 2, real // 2, pad_a, window * window - real - pad_a))
    return tuple(counts)


def real_merges(real_a: int, real_b: int, r_window: int) -> int:
    """Real pairs one window merges: real A tokens, as many as r_window allows, if any real B exists."""
    return min(r_window, real_a) if real_b else 0


def local_merges(num_tokens: int, grid: tuple[int, int], window: int, r_window: int) -> tuple[int, int]:
    """(r_window clamped to what every window can do, real tokens merged in the block).

    Real tokens merge only with real tokens and pads only with pads (bipartite.match with `valid`),
    so a window merges min(r_window, real A tokens) real pairs (0 if it has no real B token) and
    fills the rest of its r_window merges with pad pairs.
    """
    counts = window_counts(num_tokens, grid, window)
    capacity = min((ra if rb else 0) + (pa if pb else 0) for ra, rb, pa, pb in counts)
    rw = min(r_window, capacity)
    return rw, sum(real_merges(ra, rb, rw) for ra, rb, _, _ in counts)


# ---------------------------------------------------------------- the local merge (traced)
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


def window_keep(num_tokens: int, grid: tuple[int, int], window: int, r_window: int) -> np.ndarray | None:
    """Static positions of the real tokens in the flattened output of all windows (None: all real).

    Within a window real tokens come first, so after `bipartite.match` (with `valid`) the output
    [unmerged A (in order), all B] holds its real tokens at [0, real A - real merges) and
    [A - r_window, A - r_window + real B); which tokens those are is data-dependent, where they sit
    is not. This replaces a data-dependent compaction (nonzero + gather) by a static gather.
    """
    keep, start = [], 0
    for ra, rb, pa, pb in window_counts(num_tokens, grid, window):
        a = ra + pa
        keep += [start + k for k in range(ra - real_merges(ra, rb, r_window))]
        keep += [start + a - r_window + k for k in range(rb)]
        start += a + rb + pb - r_window
    keep = np.asarray(keep, np.int32)
    return None if keep.size == start else keep


def local_merge(state: TokenState, metric: jax.Array, *, r: int, window: int, grid: tuple[int, int],
                tokens_out: int, num_prefix: int) -> tuple[TokenState, jax.Array]:
    """A batch: merge r tokens inside each window. Prefix (cls) tokens are left untouched.

    state holds (B, N, ...) with N = num_prefix + M tokens; returns (B, tokens_out, ...) tokens and
    the merged-pair scores (B, windows * r).

    Only the similarity features go through the padded window layout: matching runs there, with the
    windows of all examples fused into one batch axis. The merge itself is done back in token space
    (one scatter-add of the merged pairs, one gather of the survivors), so features, sizes and
    positions are never copied into padded windows -- late local blocks pad up to ~4x.
    """
    batch = metric.shape[0]
    metric = metric[:, num_prefix:]
    num_tokens = metric.shape[1]
    slot, valid = window_layout(num_tokens, grid, window)
    num_windows, slots = slot.shape

    order = jax.vmap(grid_order, in_axes=(0, None))(mean_pos(state)[:, num_prefix:], grid)  # (B, M)
    # (B * windows, w*w): the patch token in each window slot; num_tokens marks padding
    token_at = order.at[:, slot.reshape(-1)].get(mode="fill", fill_value=num_tokens)
    win_metric = jax.vmap(lambda m, i: m.at[i].get(mode="fill", fill_value=0))(metric, token_at)
    token_at = token_at.reshape(batch * num_windows, slots)
    win_metric = win_metric.reshape(batch * num_windows, slots, -1)
    win_valid = jnp.asarray(np.tile(valid, (batch, 1)))
    matching = jax.vmap(lambda m, v: bipartite.match(m, r, class_token=False, valid=v))(win_metric, win_valid)

    # The matching in window slots, then in tokens: a window's output is [unmerged A, all B].
    src, dst, out = jax.vmap(lambda m: bipartite.token_indices(m, slots))(matching)
    tokens = lambda idx: num_prefix + jnp.take_along_axis(token_at, idx, axis=1).reshape(batch, -1)
    src, dst, out = tokens(src), tokens(dst), tokens(out)
    keep = window_keep(num_tokens, grid, window, r)  # real tokens only; where they sit is static
    if keep is not None:
        out = out[:, keep]
    out = jnp.concatenate([jnp.broadcast_to(jnp.arange(num_prefix, dtype=out.dtype), (batch, num_prefix)), out], 1)
    if out.shape[1] != tokens_out:
        raise AssertionError(f"local merge produced {out.shape[1]} tokens, plan says {tokens_out}")
    # Pad-pad pairs point past the last token: merge_into ignores them.
    new = jax.vmap(merge_into)(state, src, dst, out)
    return new, matching.score.reshape(batch, -1)


# ---------------------------------------------------------------- the padded form (merge/buckets.py)
def padded_local_merge(state: TokenState, metric: jax.Array, *, r, window, cols, r_max: int, window_max: int,
                       windows_max: int, num_prefix: int) -> tuple[TokenState, jax.Array]:
    """One example on P slots (real tokens first, padded slots of size 0 after): `local_merge`'s
    merges and output order, with the window, the grid's column count and r per window possibly
    traced (a block of a scanned run or of a shared program), at most the static window_max, r_max,
    and windows_max windows. Returns P slots: [the exact output's tokens, then padding], and the
    windows_max * min(r_max, A slots) pair scores (-2 where no real pair merged).

    The window layout is computed instead of looked up: the k-th token in grid order sits at row
    k // cols, column k % cols, so in window (row // w, column // w) at row-major rank
    (row % w) * width + column % w among the window's real tokens (rows above it are full; width =
    the window's real columns). Matching runs on windows of window_max^2 slots, real tokens at their
    ranks (A even, B odd as in `window_layout`), the rest invalid: real tokens pair only with real
    ones, so the r best real pairs of a window are the exact model's; windows past the last are empty.
    """
    slots = metric.shape[0] - num_prefix
    size = state.size[num_prefix:]
    valid = size > 0
    real = jnp.sum(valid.astype(jnp.int32))
    w, cols = jnp.asarray(window, jnp.int32), jnp.asarray(cols, jnp.int32)
    area = window_max * window_max

    # grid_order on the real tokens; padded ones sort last, so the real ones keep their exact order
    pos = jnp.where(valid[:, None], mean_pos(state)[num_prefix:], jnp.inf)
    by_row = jnp.argsort(pos[:, 0], stable=True)
    k = jnp.arange(slots, dtype=jnp.int32)
    row, col = k // cols, k % cols  # the k-th token in grid order
    key = row.astype(jnp.float32) * (2.0 * cols.astype(jnp.float32) + 2.0) + pos[by_row, 1]
    order = by_row[jnp.argsort(jnp.where(k < real, key, jnp.inf), stable=True)]

    first_col = (col // w) * w
    win = (row // w) * ((cols + w - 1) // w) + col // w
    rank = (row % w) * jnp.minimum(w, cols - first_col) + col % w
    win = jnp.where(k < real, win, windows_max)  # padding: dropped from the layout
    token_at = jnp.full((windows_max, area), slots, jnp.int32).at[win, rank].set(order.astype(jnp.int32), mode="drop")
    win_valid = token_at < slots
    win_metric = metric[num_prefix:].at[token_at].get(mode="fill", fill_value=0)

    ranked = min(r_max, (area + 1) // 2)  # a window merges at most its A tokens

    def best(m, v):  # one window: the best real pairs, the first r live
        node_max, node_idx = bipartite.best_partners(m, class_token=False, valid=v)
        node_max = jnp.where(v[0::2], node_max, -jnp.inf)
        value, top = jax.lax.top_k(node_max, ranked)
        live = (jnp.arange(ranked) < r) & (value > -jnp.inf)
        return 2 * top, 2 * node_idx[top] + 1, live, value

    src, dst, live, value = jax.vmap(best)(win_metric, win_valid)
    to_token = lambda at, s: jnp.take_along_axis(at, s, axis=1)
    src = jnp.where(live, to_token(token_at, src), slots).reshape(-1)
    dst = jnp.where(live, to_token(token_at, dst), slots).reshape(-1)
    merged_away = jnp.zeros(slots, bool).at[src].set(True, mode="drop")
    # A window's output is [unmerged A, all B]; windows in order; merged-away and padding after
    s = jnp.arange(area, dtype=jnp.int32)
    place = jnp.arange(windows_max, dtype=jnp.int32)[:, None] * (2 * area) + jnp.where(s % 2 == 0, s // 2, area + s // 2)
    place = jnp.full(slots, 2 * area * windows_max, jnp.int32).at[token_at].set(place, mode="drop")
    out = jnp.argsort(jnp.where(valid & ~merged_away, place, 2 * area * windows_max + 1 + k), stable=True)
    out = jnp.where(jnp.asarray(r) > 0, out, k)  # a block that merges nothing keeps its order
    shift = lambda t: t + num_prefix
    keep = jnp.concatenate([jnp.arange(num_prefix, dtype=jnp.int32), shift(out).astype(jnp.int32)])
    merged = merge_into(state, shift(src), shift(dst), keep)
    kept = real - jnp.sum(merged_away.astype(jnp.int32))
    new_size = jnp.where(jnp.arange(num_prefix + slots) < num_prefix + kept, merged.size, 0.0)
    return merged._replace(size=new_size), jnp.where(live, value, -2.0).reshape(-1)
