"""What merging sees: token similarity per block (Figure 2), similarity of the pairs actually merged
(Figure 3), and the similarity of learned position embeddings (Figure 4).

CosSim(h) = 1 / (n (n - 1)) * sum_{i != j} cos(h_i, h_j) over the n tokens of a block (cls included),
computed as (||sum_i h_i / ||h_i|| ||^2 - n) / (n (n - 1)).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.models.vit import VisionTransformer

STAGES = ("x_pre", "x_attn", "x_post")  # attention input (after LayerNorm_0), inside (before out), after residual


def mean_pairwise_cosine(h: jax.Array) -> jax.Array:
    """(..., n, d) -> (...,) mean cosine similarity over ordered pairs i != j."""
    u = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
    n = h.shape[-2]
    s = jnp.sum(u, axis=-2)
    return (jnp.sum(s * s, axis=-1) - n) / (n * (n - 1))


def block_statistics(config: ViTConfig, plan: MergePlan | None, params, images) -> dict:
    """Per block: mean pairwise cosine of x_pre, x_attn, x_post (mean over images) and the mean
    cosine of merged pairs (None for blocks that do not merge)."""
    model = VisionTransformer(config, plan)

    @jax.jit
    def run(p, x):
        _, inter = model.apply({"params": p}, x, mutable=["intermediates"])
        blocks = inter["intermediates"]["Transformer"]
        out = {}
        for i in range(config.depth):
            b = blocks[f"encoderblock_{i}"]
            out[i] = {k: mean_pairwise_cosine(b[k][0]).mean() for k in STAGES}
            if "merged_similarity" in b:
                out[i]["merged"] = b["merged_similarity"][0].mean()
        return out

    stats = jax.device_get(run(params, images))
    return {stage: [float(stats[i][stage]) for i in range(config.depth)] for stage in STAGES} | {
        "merged": [float(stats[i]["merged"]) if "merged" in stats[i] else None for i in range(config.depth)]}


def posemb_similarity(params, grid: tuple[int, int], refs: list[tuple[int, int]] | None = None) -> dict:
    """Cosine similarity of every patch's position embedding with reference patches: {(i, j): (gh, gw)}."""
    pe = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])[0, 1:]
    gh, gw = grid
    refs = refs or [(gh // 4, gw // 4), (gh // 4, 3 * gw // 4), (3 * gh // 4, gw // 4), (3 * gh // 4, 3 * gw // 4)]
    u = pe / np.linalg.norm(pe, axis=-1, keepdims=True)
    return {ref: (u @ u[ref[0] * gw + ref[1]]).reshape(gh, gw) for ref in refs}


def plot_analysis(token_stats: dict, merged: dict[str, list], posemb: dict, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, stem):
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(out_dir / f"{stem}.{ext}", dpi=150)
            written.append(out_dir / f"{stem}.{ext}")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, label in zip(STAGES, ("$X_{preAttn}$", "$X_{Attn}$", "$X_{postAttn}$")):
        ax.plot(range(len(token_stats[stage])), token_stats[stage], "o-", ms=4, label=label)
    ax.set_xlabel("block")
    ax.set_ylabel("mean pairwise cosine similarity")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "token_similarity")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in merged.items():
        pts = [(i, v) for i, v in enumerate(values) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=name)
    ax.set_xlabel("block")
    ax.set_ylabel("cosine similarity of merged pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "merged_similarity")

    fig, axes = plt.subplots(1, len(posemb), figsize=(3 * len(posemb), 3))
    for ax, (ref, sim) in zip(np.atleast_1d(axes), posemb.items()):
        ax.imshow(sim, cmap="viridis")
        ax.scatter([ref[1]], [ref[0]], c="r", s=12)
        ax.set_title(f"patch {ref}")
        ax.axis("off")
    save(fig, "posemb_similarity")
    return written
