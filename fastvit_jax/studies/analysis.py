"""What merging sees: token similarity per block (Figure 2), similarity of the pairs actually merged
(Figure 3), and the similarity of learned position embeddings (Figure 4).

CosSim(h) = 1 / (n (n - 1)) * sum_{i != j} cos(h_i, h_j) over the n tokens of a block (cls included),
computed as (||sum_i h_i / ||h_i|| ||^2 - n) / (n (n - 1)).
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.models.vit import VisionTransformer, observe, posemb_sincos_2d
from fastvit_jax.util.report import pyplot, save_figure, write_json
from fastvit_jax.runtime import Runtime

STAGES = ("x_pre", "x_attn", "x_post")  # attention input (after LayerNorm_0), inside (before out), after residual


def mean_pairwise_cosine(h: jax.Array) -> jax.Array:
    """(..., n, d) -> (...,) mean cosine similarity over ordered pairs i != j."""
    u = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
    n = h.shape[-2]
    s = jnp.sum(u, axis=-2)
    return (jnp.sum(s * s, axis=-1) - n) / (n * (n - 1))


def block_statistics(config: ViTConfig, params, images, plan: MergePlan | None = None, runtime: Runtime = Runtime()) -> dict:
    """Per block: mean pairwise cosine of x_pre, x_attn, x_post (mean over images) and the mean
    cosine of merged pairs (None for blocks that do not merge)."""
    model = VisionTransformer(config, plan, runtime)

    @jax.jit
    def run(p, x):
        _, blocks = observe(model, p, x)
        out = {}
        for i, b in enumerate(blocks):
            out[i] = {k: mean_pairwise_cosine(b[k]).mean() for k in STAGES}
            if "merged_similarity" in b:
                out[i]["merged"] = b["merged_similarity"].mean()
        return out

    stats = jax.device_get(run(params, images))
    return {stage: [float(stats[i][stage]) for i in range(config.depth)] for stage in STAGES} | {
        "merged": [float(stats[i]["merged"]) if "merged" in stats[i] else None for i in range(config.depth)]}


def patch_position_embeddings(params, config: ViTConfig) -> np.ndarray:
    """(gh * gw, D) position embeddings of the patch tokens: learned (class slot left out) or sincos2d."""
    if config.posemb == "sincos2d":
        return np.asarray(posemb_sincos_2d(config.grid, config.width))[0]
    return np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])[0, config.num_prefix:]


def posemb_similarity(params, config: ViTConfig, refs: list[tuple[int, int]] | None = None) -> dict:
    """Cosine similarity of every patch's position embedding with reference patches: {(i, j): (gh, gw)}."""
    pe = patch_position_embeddings(params, config)
    gh, gw = config.grid
    refs = refs or [(gh // 4, gw // 4), (gh // 4, 3 * gw // 4), (3 * gh // 4, gw // 4), (3 * gh // 4, 3 * gw // 4)]
    u = pe / np.linalg.norm(pe, axis=-1, keepdims=True)
    return {ref: (u @ u[ref[0] * gw + ref[1]]).reshape(gh, gw) for ref in refs}


def plot_analysis(token_stats: dict, merged: dict[str, list], posemb: dict, out_dir: str | Path) -> list[Path]:
    plt = pyplot()
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, label in zip(STAGES, ("$X_{preAttn}$", "$X_{Attn}$", "$X_{postAttn}$")):
        ax.plot(range(len(token_stats[stage])), token_stats[stage], "o-", ms=4, label=label)
    _label(ax, "mean pairwise cosine similarity")
    written += save_figure(fig, out_dir, "token_similarity")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in merged.items():
        pts = [(i, v) for i, v in enumerate(values) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=name)
    _label(ax, "cosine similarity of merged pairs")
    written += save_figure(fig, out_dir, "merged_similarity")

    fig, axes = plt.subplots(1, len(posemb), figsize=(3 * len(posemb) + 1, 3), layout="constrained")
    for ax, (ref, sim) in zip(np.atleast_1d(axes), posemb.items()):
        image = ax.imshow(sim, cmap="viridis", vmin=-1.0, vmax=1.0)
        ax.scatter([ref[1]], [ref[0]], c="r", s=12)
        ax.set_title(f"patch {ref}")
        ax.axis("off")
    fig.colorbar(image, ax=np.atleast_1d(axes).tolist(), shrink=0.8, label="cosine similarity to the red patch")
    return written + save_figure(fig, out_dir, "posemb_similarity")


def _label(ax, ylabel: str) -> None:
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


def run_analysis(config: ViTConfig, params, images, plans: list[MergePlan], out_dir: str | Path,
                 runtime: Runtime = Runtime()) -> tuple[dict, list[dict]]:
    """Figures 2-4 for `images`: writes analysis.json, analysis.csv and the plots (PNG + SVG) to out_dir.
    Returns the JSON payload and one row per block (dense stages, then each plan's merged similarity)."""
    out = Path(out_dir)
    dense = block_statistics(config, params, images, None, runtime)
    merged = {f"{p.method} r={p.r}": block_statistics(config, params, images, p, runtime)["merged"] for p in plans}
    posemb = posemb_similarity(params, config)
    result = {"token_similarity": {k: dense[k] for k in STAGES}, "merged_similarity": merged,
              "posemb_similarity": {f"{i},{j}": m.tolist() for (i, j), m in posemb.items()}, "images": len(images),
              "plans": [p.summary() for p in plans]}
    write_json(out / "analysis.json", result)
    rows = [{"block": i, **{k: dense[k][i] for k in STAGES}, **{n: m[i] for n, m in merged.items()}}
            for i in range(config.depth)]
    with open(out / "analysis.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["block", *STAGES, *merged])
        w.writeheader()
        w.writerows(rows)
    plot_analysis(dense, merged, posemb, out)
    return result, rows
