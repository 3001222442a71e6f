"""MergePlan: the merge schedule as static data.

For every block the plan says what happens between attention and MLP: nothing, local merging
inside w x w windows, global merging of r tokens, or dropping r tokens. Because it is plain hashable
data, token counts are static and the model jit-compiles once per plan.

Methods (paper, Algorithm 1):
  none  dense model
  tome  ToMe: global merging of r tokens in every block from `skip` (default 0)
  dfe   Dense Feature Extractor: ToMe, but the first `skip` blocks (default depth // 6) do not merge
  lgtm  DFE + Local-Global Token Merging: after the skip, `transition` blocks merge inside windows
        (window grows by one each block), then global merging
  drop  remove the r tokens with the lowest feature norm, per block from `skip` (default 0)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import lru_cache

from fastvit_jax.errors import FastViTError
from fastvit_jax.merge import bipartite

METHODS = ("none", "tome", "dfe", "lgtm", "drop")
METRICS = ("k", "q", "v", "x_pre", "x_attn", "random")


@dataclasses.dataclass(frozen=True)
class BlockOp:
    """What one block does to its tokens. `r` is per window for local ops, total otherwise."""

    kind: str  # "none" | "global" | "local" | "drop"
    tokens_in: int  # tokens entering the block, prefix tokens included
    tokens_out: int
    r: int = 0
    window: int = 0
    grid: tuple[int, int] = (0, 0)  # (rows, cols) the patch tokens are sorted onto (local only)

    @property
    def num_windows(self) -> int:
        return math.ceil(self.grid[0] / self.window) * math.ceil(self.grid[1] / self.window) if self.window else 0


@dataclasses.dataclass(frozen=True)
class MergePlan:
    ops: tuple[BlockOp, ...]
    method: str = "none"
    r: int = 0
    skip: int = 0
    window: int = 0
    transition: int = 0
    metric: str = "k"
    prop_attn: bool = True
    num_prefix: int = 1
    distill_token: bool = False
    track_source: bool = False
    patch_grid: tuple[int, int] = (14, 14)
    clamped: bool = False  # True if some block merges fewer than r because of the half-the-tokens bound

    @property
    def depth(self) -> int:
        return len(self.ops)

    @property
    def is_dense(self) -> bool:
        return all(op.kind == "none" for op in self.ops)

    @property
    def final_tokens(self) -> int:
        return self.ops[-1].tokens_out if self.ops else self.num_prefix + self.patch_grid[0] * self.patch_grid[1]

    def merged_before(self, block: int) -> bool:
        """Whether any merge happened before `block` (then sizes differ and prop_attn matters)."""
        return any(op.kind in ("global", "local") for op in self.ops[:block])

    def summary(self) -> dict:
        return {
            "method": self.method, "r": self.r, "skip": self.skip, "window": self.window,
            "transition": self.transition, "metric": self.metric, "prop_attn": self.prop_attn,
            "tokens": [op.tokens_in for op in self.ops] + [self.final_tokens],
            "ops": [_op_str(op) for op in self.ops],
        }

    def describe(self) -> str:
        s = self.summary()
        head = (f"plan: method={self.method} r={self.r} skip={self.skip} metric={self.metric} "
                f"prop_attn={self.prop_attn}")
        if self.method == "lgtm":
            head += f" window={self.window} transition={self.transition}"
        return head + "\n  " + " | ".join(f"{i}:{o}" for i, o in enumerate(s["ops"])) + \
            f"\n  tokens per block: {s['tokens']}"


def _op_str(op: BlockOp) -> str:
    if op.kind == "local":
        return f"local(w={op.window},{op.num_windows}x{op.r})"
    if op.kind in ("global", "drop"):
        return f"{op.kind}({op.r})"
    return "-"


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


def real_merges(real_a: int, real_b: int, r_window: int) -> int:
    """Real pairs one window merges: real A tokens, as many as r_window allows, if any real B exists."""
    return min(r_window, real_a) if real_b else 0


def make_plan(depth: int, patch_grid: tuple[int, int], method: str = "none", r: int = 0, *,
              skip: int | None = None, window: int = 7, transition: int | None = None,
              metric: str = "k", prop_attn: bool = True, num_prefix: int = 1,
              distill_token: bool = False, track_source: bool = False) -> MergePlan:
    """Build the static per-block schedule from the user's options (see module docstring)."""
    if method not in METHODS:
        raise FastViTError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if metric not in METRICS:
        raise FastViTError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if not isinstance(r, int) or r < 0:
        raise FastViTError(f"r must be a non-negative integer, got {r!r}")
    if window < 2:
        raise FastViTError(f"window must be >= 2, got {window}")
    if skip is None:
        skip = depth // 6 if method in ("dfe", "lgtm") else 0
    if not 0 <= skip <= depth:
        raise FastViTError(f"skip must be in [0, {depth}], got {skip}")
    if transition is not None and transition < 0:
        raise FastViTError(f"transition must be >= 0, got {transition}")
    patch_grid = tuple(int(g) for g in patch_grid)

    n = num_prefix + patch_grid[0] * patch_grid[1]
    ops: list[BlockOp] = []
    clamped = False
    w = window
    local_left = transition
    if method == "lgtm" and transition is None:
        local_left = lgtm_transition(patch_grid, r, window, depth - skip)
    for i in range(depth):
        if method == "none" or r == 0 or i < skip:
            ops.append(BlockOp("none", n, n))
            continue
        if method == "lgtm" and local_left > 0:
            m = n - num_prefix
            grid = sort_grid(m, patch_grid)
            windows = math.ceil(grid[0] / w) * math.ceil(grid[1] / w)
            want = math.ceil(r / windows)
            rw, merged = local_merges(m, grid, w, want)
            clamped |= rw < want
            ops.append(BlockOp("local", n, n - merged, r=rw, window=w, grid=grid))
            n -= merged
            w += 1
            local_left -= 1
            continue
        rr = min(r, bipartite.max_merges(n, num_prefix))
        clamped |= rr < r
        kind = "drop" if method == "drop" else "global"
        ops.append(BlockOp(kind, n, n - rr, r=rr))
        n -= rr
    if clamped:
        warnings.warn(f"{method} r={r}: some blocks merge fewer than r tokens (at most half the "
                      f"mergeable tokens of a block or window can merge); see plan.describe()",
                      stacklevel=2)
    return MergePlan(tuple(ops), method=method, r=r, skip=skip,
                     window=window if method == "lgtm" else 0,
                     transition=sum(op.kind == "local" for op in ops),
                     metric=metric, prop_attn=prop_attn, num_prefix=num_prefix,
                     distill_token=distill_token, track_source=track_source,
                     patch_grid=patch_grid, clamped=clamped)


def lgtm_transition(patch_grid: tuple[int, int], r: int, window: int, max_blocks: int) -> int:
    """Algorithm 1's offline t: local blocks continue until the window is larger than the
    (rounded) square root of the patch-token count."""
    m = patch_grid[0] * patch_grid[1]
    t, w = 0, window
    while t < max_blocks and r > 0 and w <= round(math.sqrt(m)):
        grid = sort_grid(m, patch_grid)
        windows = math.ceil(grid[0] / w) * math.ceil(grid[1] / w)
        m -= local_merges(m, grid, w, math.ceil(r / windows))[1]
        t, w = t + 1, w + 1
    return t
