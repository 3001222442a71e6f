"""Pareto curves in the style of the paper's Figure 5 (matplotlib, PNG and SVG)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from fastvit_jax.util.report import pyplot, save_figure


def pareto_front(points: list[tuple[float, float]], lower_x_better: bool) -> list[int]:
    """Indices of points not dominated: higher y, and lower (or higher) x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (yy >= y and (xx <= x if lower_x_better else xx >= x)) and (yy > y or xx != x)
            for j, (xx, yy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def plot_sweep(rows: list[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """top-1 vs GFLOPs and top-1 vs images/s, one curve per method, the Pareto front circled."""
    plt = pyplot()
    written = []
    for xkey, xlabel, lower_better, stem in (("gflops", "GFLOPs (MACs / 1e9)", True, "top1_vs_gflops"),
                                             ("images_per_s", "images / s", False, "top1_vs_throughput")):
        pts = [r for r in rows if r.get(xkey) is not None and r.get("top1") is not None]
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for method in sorted({r["method"] for r in pts}):
            mine = sorted((r for r in pts if r["method"] == method), key=lambda r: r[xkey])
            ax.plot([r[xkey] for r in mine], [100 * r["top1"] for r in mine], "o-", ms=4, label=method)
        front = pareto_front([(r[xkey], r["top1"]) for r in pts], lower_better)
        ax.scatter([pts[i][xkey] for i in front], [100 * pts[i]["top1"] for i in front], s=90,
                   facecolors="none", edgecolors="k", linewidths=1.2, label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        if title:  # wrapped, so a long model or data path is not cut off at the figure's edge
            ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
        if xkey == "images_per_s":
            fig.text(0.01, 0.005, "images/s as timed on this machine during the sweep: noisy, a few % either way; "
                     "rerun with --remeasure-speed on a quiet machine", fontsize=6, color="0.4")
        written += save_figure(fig, out_dir, stem)
    return written
