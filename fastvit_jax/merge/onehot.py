"""The merge step for accelerators (`merge_impl="dense"`): no sort, no scatter, no gather.

The "gather" implementation (bipartite.py, local.py, state.merge_into) picks the r best pairs with
top_k, places survivors with cumsum + scatter, and merges with gathers and a scatter-add. On a
GPU/TPU each of those is a separate, latency-bound kernel per block. Here the same decisions are
small dense algebra that XLA fuses:
  - ranks by pairwise comparison (ties to the lower index, as top_k and a stable argsort);
  - every input token gets the index of the output token it ends up in (`out_idx`);
  - a one-hot assignment matrix from iota comparisons, and the merge is two small matmuls:
    x' = (onehot * size / size') @ x, sources onehot @ source.
Same merges, same tie-breaking, same outputs up to float rounding as the gather implementation.

Functions see one example (vmapped by the caller), except `local_merge`, which takes the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.merge import bipartite, local
from fastvit_jax.merge.state import TokenState, mean_pos

_EXACT = jax.lax.Precision.HIGHEST  # one-hot matmuls must not round x (TF32 on GPUs, bf16 passes on TPUs)


# ---------------------------------------------------------------- ranks and counts without sorting
def descending_rank(values: jax.Array) -> jax.Array:
    """(n,) -> (n,) int32: each value's position in a stable descending sort (ties: lower index first)."""
    idx = jnp.arange(values.shape[0])
    vi, vj = values[:, None], values[None, :]
    ahead = (vj > vi) | ((vj == vi) & (idx[None, :] < idx[:, None]))
    return jnp.sum(ahead, axis=1, dtype=jnp.int32)


def lexicographic_rank(primary: jax.Array, secondary: jax.Array) -> jax.Array:
    """(n,) -> (n,) int32: position in an ascending sort by (primary, secondary, index)."""
    idx = jnp.arange(primary.shape[0])
    pi, pj = primary[:, None], primary[None, :]
    si, sj = secondary[:, None], secondary[None, :]
    before = (pj < pi) | ((pj == pi) & ((sj < si) | ((sj == si) & (idx[None, :] < idx[:, None]))))
    return jnp.sum(before, axis=1, dtype=jnp.int32)


def count_before(flags: jax.Array) -> jax.Array:
    """(n,) bool -> (n,) int32: how many flags are set at lower indices (an exclusive cumsum)."""
    idx = jnp.arange(flags.shape[0])
    return jnp.sum((idx[None, :] < idx[:, None]) & flags[None, :], axis=1, dtype=jnp.int32)


def pick(onehot: jax.Array, values: jax.Array) -> jax.Array:
    """values[j] for the one j set in each row of onehot (n, m); 0 for an empty row. No gather."""
    return jnp.sum(jnp.where(onehot, values[None, :], 0), axis=1).astype(values.dtype)


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """Even positions from a, odd from b (len(a) - len(b) in {0, 1}): A/B back to token order."""
    pad = a.shape[0] - b.shape[0]
    both = jnp.stack([a, jnp.pad(b, (0, pad))], axis=1).reshape(-1)
    return both[: a.shape[0] + b.shape[0]]


# ---------------------------------------------------------------- the merge as matmuls
def merge_by_assignment(state: TokenState, out_idx: jax.Array, tokens_out: int) -> TokenState:
    """One example: input token i goes into output token out_idx[i] (-1 or >= tokens_out: nowhere).

    Features become size-weighted means of what each output holds; sizes, position sums and
    sources add. An output holding one token gets it back exactly (its weight is exactly 1)."""
    onehot = jnp.arange(tokens_out)[:, None] == out_idx[None, :]  # (T, N)
    held = jnp.where(onehot, state.size[None, :], 0.0)
    size = jnp.sum(held, axis=1)
    weights = held / jnp.maximum(size, 1e-30)[:, None]
    mean = lambda t: jnp.dot(weights, t.astype(jnp.float32), precision=_EXACT).astype(t.dtype)
    add = lambda t: jnp.dot(onehot.astype(jnp.float32), t, precision=_EXACT)  # sums of integers: exact
    source = None if state.source is None else add(state.source)
    return TokenState(mean(state.x), size, add(state.pos_sum), source)


# ---------------------------------------------------------------- ToMe matching as output slots
def bipartite_slots(metric: jax.Array, r: int, *, class_token: bool = True, distill_token: bool = False,
                    valid: jax.Array | None = None, real=None) -> tuple[jax.Array, jax.Array]:
    """One example: bipartite.match's decision, as output positions.

    Returns out_idx (N,): the slot of each token in the output [unmerged A, all B] (distill token
    second, as bipartite.token_indices), a merged A token taking its partner's slot; and score (N/2
    rounded up,): each A token's best cosine if it merged, else -2 (below any real pair).
    valid: tokens that may pair (invalid ones pair among themselves: LGTM's window padding);
    with real (how many valid tokens, all first) they are padded slots (merge/buckets.py) instead:
    in no pair, padded token i at slot i - r, after the real outputs; r may then be traced."""
    node_max, node_idx = bipartite.best_partners(metric, class_token=class_token, distill_token=distill_token,
                                                 valid=valid)
    num_a, num_b = node_max.shape[0], metric.shape[0] // 2
    if real is not None:
        node_max = jnp.where(valid[0::2], node_max, -jnp.inf)
    merged = descending_rank(node_max) < r
    kept = count_before(~merged)  # rank among the surviving A tokens
    b = jnp.arange(num_b)
    slot_b = (num_a if real is None else (real + 1) // 2) - r + b
    if distill_token:  # output [cls, distill, other unmerged A, other B]
        kept = kept + (kept >= 1)
        slot_b = jnp.where(b == 0, 1, slot_b)
    partner = pick(b[None, :] == node_idx[:, None], slot_b)
    slot_a = jnp.where(merged, partner, kept)
    out_idx = interleave(slot_a, slot_b)
    if real is not None:
        out_idx = jnp.where(valid, out_idx, jnp.arange(out_idx.shape[0]) - r)
    return out_idx, jnp.where(merged, node_max, -2.0)


def global_merge(state: TokenState, metric: jax.Array, *, r: int, num_prefix: int,
                 distill_token: bool) -> tuple[TokenState, jax.Array]:
    """One example: ToMe over all tokens (the twin of apply.global_merge)."""
    n = metric.shape[0]
    out_idx, score = bipartite_slots(metric, r, class_token=num_prefix > 0, distill_token=distill_token)
    return merge_by_assignment(state, out_idx, n - r), score


def drop_lowest_norm(state: TokenState, feature: jax.Array, *, r: int, num_prefix: int) -> TokenState:
    """One example: metrics.drop_lowest_norm without top_k, sort or gather."""
    n = feature.shape[0]
    norms = jnp.linalg.norm(feature.astype(jnp.float32), axis=-1)
    norms = jnp.where(jnp.arange(n) < num_prefix, jnp.inf, norms)
    keep = descending_rank(norms) < n - r
    return merge_by_assignment(state, jnp.where(keep, count_before(keep), -1), n - r)


# ---------------------------------------------------------------- LGTM
def grid_rank(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(M, 2) tracked positions -> (M,) each token's slot in row-major grid order: local.grid_order's
    order (rows by mean row, then each row of `cols` by mean column), computed by comparisons."""
    cols = grid[1]
    row_rank = lexicographic_rank(pos[:, 0], jnp.zeros_like(pos[:, 0]))
    key = (row_rank // cols).astype(jnp.float32) * (2.0 * cols + 2.0) + pos[:, 1]  # as grid_order's key
    return lexicographic_rank(key, row_rank)


def _window_outputs(num_tokens: int, grid: tuple[int, int], window: int, r: int):
    """Static, per window: (first output index, real A tokens kept, real B tokens), and the slot in a
    window's output [unmerged A, all B] where its B tokens start.

    Real tokens come first in a window (local.window_layout), so its surviving real A tokens hold the
    first output slots and its real B tokens the slots from `b_start`; everything else is padding."""
    counts = local.window_counts(num_tokens, grid, window)
    kept_a = np.array([ra - local.real_merges(ra, rb, r) for ra, rb, _, _ in counts], np.int32)
    real_b = np.array([rb for _, rb, _, _ in counts], np.int32)
    first = np.concatenate([[0], np.cumsum(kept_a + real_b)[:-1]]).astype(np.int32)
    ra, _, pa, _ = counts[0]
    return first, kept_a, real_b, ra + pa - r


def _reshapes_to_windows(num_tokens: int, grid: tuple[int, int], window: int) -> bool:
    rows, cols = grid
    return num_tokens == rows * cols and rows % window == 0 and cols % window == 0


def _to_windows(t: jax.Array, grid: tuple[int, int], window: int) -> jax.Array:
    """(B, rows*cols, ...) in grid order -> (B, windows, w*w, ...): a reshape and a transpose."""
    rows, cols = grid
    b, rest = t.shape[0], t.shape[2:]
    t = t.reshape((b, rows // window, window, cols // window, window) + rest)
    t = jnp.moveaxis(t, 3, 2)
    return t.reshape((b, -1, window * window) + rest)


def _from_windows(t: jax.Array, grid: tuple[int, int], window: int) -> jax.Array:
    """The inverse of _to_windows for (B, windows, w*w)."""
    rows, cols = grid
    b = t.shape[0]
    t = t.reshape(b, rows // window, cols // window, window, window)
    return jnp.moveaxis(t, 2, 3).reshape(b, rows * cols)


def local_merge(state: TokenState, metric: jax.Array, *, r: int, window: int, grid: tuple[int, int],
                tokens_out: int, num_prefix: int, ordered: bool) -> tuple[TokenState, jax.Array]:
    """A batch: local.local_merge without sort, scatter or gather.

    ordered: the patch tokens are still in row-major grid order (nothing merged before), so the
    window partition is static: a reshape/transpose where the windows tile the grid, else a
    constant one-hot. Otherwise each token's grid slot comes from grid_rank and the partition is a
    one-hot matmul. The windows of all examples share one vmapped axis."""
    batch = metric.shape[0]
    metric = metric[:, num_prefix:].astype(jnp.float32)
    num_tokens = metric.shape[1]
    slot, valid = local.window_layout(num_tokens, grid, window)  # (windows, w*w): grid slot read
    num_windows, slots = slot.shape
    direct = ordered and _reshapes_to_windows(num_tokens, grid, window)
    if direct:
        win_metric = _to_windows(metric, grid, window)
    else:
        rank = (jnp.broadcast_to(jnp.arange(num_tokens), (batch, num_tokens)) if ordered
                else jax.vmap(grid_rank, in_axes=(0, None))(mean_pos(state)[:, num_prefix:], grid))
        onehot = slot.reshape(-1)[None, :, None] == rank[:, None, :]  # (B, windows*w*w, M); padding rows empty
        win_metric = jnp.einsum("bkm,bmc->bkc", onehot.astype(jnp.float32), metric, precision=_EXACT)
    win_metric = win_metric.reshape(batch * num_windows, slots, -1)
    win_valid = jnp.asarray(np.tile(valid, (batch, 1)))
    local_slot, score = jax.vmap(lambda m, v: bipartite_slots(m, r, class_token=False, valid=v))(win_metric, win_valid)

    # Window output slot -> index among the block's output patch tokens (-1: padding, dropped).
    first, kept_a, real_b, b_start = _window_outputs(num_tokens, grid, window, r)
    first, kept_a, real_b = (jnp.asarray(a)[None, :, None] for a in (first, kept_a, real_b))
    local_slot = local_slot.reshape(batch, num_windows, slots)
    is_b = (local_slot >= b_start) & (local_slot < b_start + real_b)
    out = jnp.where(local_slot < kept_a, first + local_slot,
                    jnp.where(is_b, first + kept_a + local_slot - b_start, -1))
    if direct:
        token_out = _from_windows(out, grid, window)
    else:
        token_out = jnp.sum(jnp.where(onehot, out.reshape(batch, -1, 1), 0), axis=1)
    token_out = jnp.where(token_out >= 0, token_out + num_prefix, -1)
    prefix = jnp.broadcast_to(jnp.arange(num_prefix, dtype=token_out.dtype), (batch, num_prefix))
    new = jax.vmap(merge_by_assignment, in_axes=(0, 0, None))(
        state, jnp.concatenate([prefix, token_out], axis=1), tokens_out)
    return new, score.reshape(batch, -1)

