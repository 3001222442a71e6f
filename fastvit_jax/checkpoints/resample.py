"""Position-embedding grids resampled the way torch's `F.interpolate(mode="bicubic", align_corners=False)`
does, as 1-D matrices applied along each axis: what transformers' DINOv2 models compute at run time
when the input grid differs from the weights' (done here once, at load time, for the input size the
folder's processor produces).

- antialias=False (`Dinov2Model`): cubic convolution with a = -0.75 at source x = (i + 0.5) * in / out - 0.5,
  taps clamped to the border;
- antialias=True (`Dinov2WithRegistersModel`): Pillow's separable filter, cubic with a = -0.5 stretched by
  the downscale factor, taps cut at the border and the weights renormalised.
"""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 weights: out = W @ in along one axis, as torch resamples."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    if not antialias:
        for i in range(n_out):
            src = (i + 0.5) * scale - 0.5
            base = math.floor(src)
            t = src - base
            for k, c in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
                w[i, min(max(base + k, 0), n_in - 1)] += c
        return w
    support = 2.0 * max(scale, 1.0)
    stretch = max(scale, 1.0)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) / stretch, -0.5)
        w[i, lo:hi] = taps / taps.sum()
    return w


def resample_grid(grid: np.ndarray, new: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """(h, w, D) -> (new_h, new_w, D), each axis by bicubic_matrix."""
    rows = bicubic_matrix(grid.shape[0], new[0], antialias)
    cols = bicubic_matrix(grid.shape[1], new[1], antialias)
    return np.einsum("ah,hwd,bw->abd", rows, grid.astype(np.float64), cols)
