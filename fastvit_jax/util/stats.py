"""Intervals for accuracies measured on a finite set of images.

Two methods scored on the same images are compared by their paired per-image differences: most
images are right (or wrong) under both, so the interval of the difference is much tighter than the
interval of either accuracy alone. McNemar's exact test gives the p-value of the same comparison
from the images only one method gets right.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion correct / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n correct the bound is exactly 0 or 1; the formula leaves a rounding crumb
    return (0.0 if correct == 0 else centre - half, 1.0 if correct == n else centre + half)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided p-value of McNemar's exact test: under "the two methods are equally accurate" each
    discordant image is a fair coin, so the smaller count is Binomial(a_only + b_only, 1/2); the
    p-value is twice its lower tail, capped at 1. Exact integer arithmetic (math.comb)."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2 ** n)


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = Z95) -> dict:
    """Accuracy of a minus accuracy of b on the same images (0/1 per image), with a 95% interval
    from the per-image differences (normal approximation), and the discordant counts: images only
    a gets right (a_only) and only b gets right (b_only) -- McNemar's table."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired results must be two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    n = d.size
    mean = float(d.mean())
    half = z * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "n": n, "a_only": a_only, "b_only": b_only,
            "p_mcnemar": mcnemar_exact(a_only, b_only)}
