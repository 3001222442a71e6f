"""Image features instead of logits: the pooled embedding (SigLIP image towers, any ViT's
pre-head feature) and, on request, the per-token features with the patches each token holds.

Works dense and merged: a merged model's pooled feature is the size-weighted pool of its tokens
(models/vit.py: pool_tokens), and `sources` put each token's feature back on the patch grid.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np

from fastvit_jax.config import ViTConfig
from fastvit_jax.data import Dataset, batches
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime


def feature_params(params: dict) -> dict:
    """The parameters of the headless model: everything but the classifier."""
    return {k: v for k, v in params.items() if k not in ("head", "head_dist")}


@lru_cache(maxsize=16)
def _embedder(config: ViTConfig, plan: MergePlan, tokens: bool, runtime: Runtime):
    model = VisionTransformer(config.replace(num_classes=0, l2_normalize=False), dataclasses.replace(plan, track_source=tokens),
                              runtime)

    @jax.jit
    def run(params, images):
        pooled, state = model.apply({"params": params}, images, return_state=True)
        out = {"features": pooled}
        if tokens:
            out.update(tokens=state.x, sizes=state.size, sources=state.source)
        return out

    return run


def embed(config: ViTConfig, params: dict, images, plan: MergePlan | None = None, *, tokens: bool = False,
          batch_size: int = 32, runtime: Runtime = Runtime()) -> dict[str, np.ndarray]:
    """{"features": (B, D)} for preprocessed images (B, H, W, 3): the pooled feature after encoder_norm
    (and pre_logits when the model has one). tokens=True adds "tokens" (B, N, width), "sizes" (B, N)
    and "sources" (B, N, gh*gw): the patches each final token holds."""
    plan = plan or make_plan(config)
    run = _embedder(config, plan, tokens, runtime)
    params = feature_params(params)
    parts = [jax.device_get(run(params, images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def embed_files(config: ViTConfig, params: dict, paths: list, preprocess, plan: MergePlan | None = None, *,
                tokens: bool = False, batch_size: int = 32, runtime: Runtime = Runtime()) -> tuple[dict[str, np.ndarray], list]:
    """`embed` on image files: ({"paths", "features", ...}, [(path, why) for unreadable images])."""
    ds = Dataset([(Path(p), -1) for p in paths])
    failed, parts, names = [], [], []
    for b in batches(ds, preprocess, min(len(ds), batch_size), failed=failed):
        out = embed(config, params, b.images, plan, tokens=tokens, batch_size=batch_size, runtime=runtime)
        parts.append({k: v[: b.count] for k, v in out.items()})
        names += [str(p) for p in b.paths]
    if not parts:
        return {"paths": np.array([], str)}, failed
    return {"paths": np.array(names), **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}}, failed
