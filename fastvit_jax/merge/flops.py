"""Analytic multiply-accumulate count of a ViT under a MergePlan.

Reported as the paper does: GFLOPs = MACs / 1e9 (dense ViT-S/16 at 224 = 4.6, ViT-B/16 = 17.6).
Per block with n tokens in and n' out: qkv 3nD^2, logits n^2 D, attention-weighted values n^2 D,
projection nD^2, matching (the similarity matrix: A x B, PiToMe's all patch pairs), MLP 2 n' D M, LayerNorms nD + n'D.
A hybrid's ResNet stem adds its convolutions (out pixels x k^2 x C_in x C_out) and GroupNorms (one
per element, like LayerNorms); a MAP head adds the probe's attention over the final tokens and an MLP.
"""

from __future__ import annotations

import math

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.merge import methods


def metric_dim(config: ViTConfig, metric: str) -> int:
    return config.width if metric in ("x", "x_pre", "x_attn") else config.head_dim


def block_macs(config: ViTConfig, n: int, n_out: int, op=None, metric: str = "k") -> dict[str, int]:
    """n, n_out: the merged tokens in and out; register tokens attend and pass the MLP beside them."""
    d, m = config.width, config.mlp_dim
    match = 0
    registers = getattr(config, "registers", 0)
    if op is not None and op.kind == "global" and op.r:  # the method's rule says what its matching costs

        match = methods.rule(op.rule).match_macs(n, config.num_prefix, metric_dim(config, metric))
    elif op is not None and op.kind == "local" and op.r:
        w2 = op.window * op.window
        match = op.num_windows * math.ceil(w2 / 2) * (w2 // 2) * metric_dim(config, metric)
    if op is not None and op.kind == "global" and op.r and getattr(op, "ahead", False):
        # MCTF one step ahead: q, k and the logits on the n input tokens; values, the merged map times
        # values and the projection on the n' merged ones
        return {"qkv": 2 * n * d * d + n_out * d * d, "attn": n * n * d + n_out * n_out * d, "proj": n_out * d * d,
                "match": match, "mlp": 2 * n_out * d * m, "norm": n * d + 2 * n_out * d}
    n, n_out = n + registers, n_out + registers  # matching above saw the merged tokens only
    return {
        "qkv": 3 * n * d * d,
        "attn": 2 * n * n * d,
        "proj": n * d * d,
        "match": match,
        "mlp": 2 * n_out * d * m,
        "norm": n * d + n_out * d,
    }


def stem_macs(config: ViTConfig) -> dict[str, int]:
    """Convolutions and GroupNorms of a hybrid's ResNet stem (models/resnet.py), per image."""
    if config.resnet is None:
        return {}
    parts = {"stem_conv": 0, "stem_norm": 0}

    def conv(side, k, stride, cin, cout):
        out = -(-side // stride)
        parts["stem_conv"] += out * out * k * k * cin * cout
        parts["stem_norm"] += out * out * cout
        return out

    width = config.resnet_width
    side = conv(config.image_size, 7, 2, 3, width)
    side, channels = -(-side // 2), width  # max-pool
    for i, units in enumerate(config.resnet):
        feats = width * 2 ** i
        for j in range(units):
            stride = 2 if i > 0 and j == 0 else 1
            if channels != feats * 4 or stride != 1:
                conv(side, 1, stride, channels, feats * 4)
            conv(side, 1, 1, channels, feats)
            out = conv(side, 3, stride, feats, feats)
            conv(out, 1, 1, feats, feats * 4)
            side, channels = out, feats * 4
    return parts


def head_macs(config: ViTConfig, n: int) -> dict[str, int]:
    """Pooling the n final tokens, then pre_logits and the classifier."""
    d = config.width
    parts = {"final_norm": d if config.pool == "tok" else n * d}  # "tok" reads only the class token
    if config.pool == "map":  # probe query and out d^2 each, keys/values 2nd^2, logits and mix 2nd, MLP
        parts["map_head"] = 2 * d * d + 2 * n * d * d + 2 * n * d + 2 * d * config.mlp_dim + d
    head_in = d
    if config.pre_logits:
        parts["pre_logits"] = d * config.pre_logits
        head_in = config.pre_logits
    parts["head"] = head_in * config.num_classes
    return parts


def model_macs(config: ViTConfig, plan: MergePlan | None = None) -> dict[str, int]:
    """MACs per image, by part, plus 'total'."""
    plan = plan or make_plan(config)
    parts = stem_macs(config)
    parts["patch_embed"] = config.num_patches * config.patch * config.patch * config.stem_channels * config.width
    for op in plan.ops:
        for k, v in block_macs(config, op.tokens_in, op.tokens_out, op, plan.metric).items():
            parts[k] = parts.get(k, 0) + v
    parts.update(head_macs(config, plan.final_tokens))
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


def text_gflops(config) -> float:
    """MACs / 1e9 of one text through a text tower (models/text.py TextConfig), counted as for the
    image blocks: qkv + projection 4 L D^2, logits and weighted values 2 L^2 D, MLP 2 L D M, LayerNorms;
    then the pooling (MAP: a probe's attention and an MLP) and the head. The embedding is a lookup."""
    n, d, m = config.max_len, config.width, config.mlp_dim
    macs = config.depth * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m + 2 * n * d) + n * d
    if config.pool == "map":
        macs += 2 * n * d * d + 2 * d * d + 2 * n * d + 2 * d * m + d
    return (macs + d * config.embed_dim) / 1e9
