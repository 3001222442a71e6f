"""Analytic multiply-accumulate count of a ViT under a MergePlan.

Reported as the paper does: GFLOPs = MACs / 1e9 (dense ViT-S/16 at 224 = 4.6, ViT-B/16 = 17.6).
Per block with n tokens in and n' out: qkv 3nD^2, logits n^2 D, attention-weighted values n^2 D,
projection nD^2, matching (the similarity matrix), MLP 2 n' D M, LayerNorms nD + n'D.
"""

from __future__ import annotations

import math

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.plan import MergePlan, make_plan


def metric_dim(config: ViTConfig, metric: str) -> int:
    return config.width if metric in ("x_pre", "x_attn") else config.head_dim


def block_macs(config: ViTConfig, n: int, n_out: int, op=None, metric: str = "k") -> dict[str, int]:
    d, m = config.width, config.mlp_dim
    match = 0
    if op is not None and op.kind == "global" and op.r:
        match = math.ceil(n / 2) * (n // 2) * metric_dim(config, metric)
    elif op is not None and op.kind == "local" and op.r:
        w2 = op.window * op.window
        match = op.num_windows * math.ceil(w2 / 2) * (w2 // 2) * metric_dim(config, metric)
    return {
        "qkv": 3 * n * d * d,
        "attn": 2 * n * n * d,
        "proj": n * d * d,
        "match": match,
        "mlp": 2 * n_out * d * m,
        "norm": n * d + n_out * d,
    }


def model_macs(config: ViTConfig, plan: MergePlan | None = None) -> dict[str, int]:
    """MACs per image, by part, plus 'total'."""
    plan = plan or make_plan(config)
    parts = {"patch_embed": config.num_patches * config.patch * config.patch * 3 * config.width}
    for op in plan.ops:
        for k, v in block_macs(config, op.tokens_in, op.tokens_out, op, plan.metric).items():
            parts[k] = parts.get(k, 0) + v
    parts["final_norm"] = config.width  # only the class token is read
    head_in = config.width
    if config.pre_logits:
        parts["pre_logits"] = config.width * config.pre_logits
        head_in = config.pre_logits
    parts["head"] = head_in * config.num_classes
    parts["total"] = sum(parts.values())
    return parts


def gflops(config: ViTConfig, plan: MergePlan | None = None) -> float:
    return model_macs(config, plan)["total"] / 1e9


def xla_flops(forward, params, images) -> float:
    """FLOPs XLA counts for the compiled forward (2 per multiply-accumulate, plus elementwise)."""
    compiled = forward.lower(params, images).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
