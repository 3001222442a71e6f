"""Jit-compiled forward functions, one per (config, plan, dtype)."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@lru_cache(maxsize=64)
def make_forward(config: ViTConfig, plan: MergePlan | None = None, dtype: str = "float32"):
    """jit(params, images[, merge_key]) -> logits for this config and plan."""
    model = VisionTransformer(config, plan, DTYPES[dtype])

    @jax.jit
    def forward(params, images, merge_key=None):
        return model.apply({"params": params}, images, merge_key=merge_key)

    return forward
