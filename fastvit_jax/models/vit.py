"""Vision Transformer in Flax linen whose parameter tree is Google's checkpoint tree.

Module names follow google-research/vision_transformer (models_vit.py) exactly, so an AugReg/SAM
.npz loads without renaming:
  embedding, cls, Transformer/posembed_input/pos_embedding,
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
                               LayerNorm_2, MlpBlock_3/{Dense_0, Dense_1}},
  Transformer/encoder_norm, [pre_logits], head.

Token merging happens between attention and MLP of each block, as the MergePlan says; the block
itself only hands its features to merge.apply.apply_op.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.apply import apply_op
from fastvit_jax.merge.metrics import random_metric
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.merge.state import TokenState, initial_state

Dtype = Any


class HeadsProjection(nn.Module):
    """Google's query/key/value parameters -- kernel (width, heads, head_dim), bias (heads, head_dim) --
    applied so the output is heads-first (B, heads, N, head_dim): the layout XLA's batched matmuls
    want on CPU (BENCHMARKS.md section 2).

    Also returns the mean over heads (B, N, head_dim), the merge feature of ToMe's "k" metric,
    written as a sum of the contiguous per-head slices: XLA:CPU fused `mean(axis=1)` badly, and a
    matmul with mean_h(kernel) is as fast but adds real FLOPs (BENCHMARKS.md section 2). Unused
    (dense blocks), XLA drops it."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2))
        kernel = self.param("kernel", init, (x.shape[-1], self.heads, self.head_dim))
        bias = self.param("bias", nn.initializers.zeros, (self.heads, self.head_dim))
        heads = jnp.einsum("bnc,chd->bhnd", x, kernel.astype(self.dtype)) + bias[:, None, :].astype(self.dtype)
        head_mean = sum(heads[:, h] for h in range(self.heads)) / self.heads
        return heads, head_mean


class OutProjection(nn.Module):
    """Google's out parameters -- kernel (heads, head_dim, width), bias (width,) -- on heads-first input."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
        kernel = self.param("kernel", init, (x.shape[1], x.shape[3], self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        return jnp.einsum("bhnd,hdc->bnc", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with Google's parameter layout; returns the output and merge features.

    size_log: optional (B, N) log token sizes added to the logits (ToMe's proportional attention).
    """

    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size_log=None):
        width = x.shape[-1]
        head_dim = width // self.heads
        proj = lambda name: HeadsProjection(self.heads, head_dim, self.dtype, name=name)(x)
        (q, q_mean), (k, k_mean), (v, v_mean) = proj("query"), proj("key"), proj("value")  # (B, H, N, Dh)
        logits = (q / jnp.sqrt(head_dim).astype(q.dtype)) @ k.swapaxes(-1, -2)
        logits = logits.astype(jnp.float32)
        if size_log is not None:
            logits = logits + size_log[:, None, None, :]
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = weights @ v  # (B, H, N, Dh)
        out = OutProjection(width, self.dtype, name="out")(attended)
        feats = {"k": k_mean, "q": q_mean, "v": v_mean,
                 "x_attn": attended.transpose(0, 2, 1, 3).reshape(x.shape[:2] + (width,))}
        return out, feats


class MlpBlock(nn.Module):
    mlp_dim: int
    gelu: str = "tanh"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x)
        y = nn.gelu(y, approximate=self.gelu == "tanh")
        return nn.Dense(width, dtype=self.dtype, name="Dense_1")(y)


class Encoder1DBlock(nn.Module):
    config: ViTConfig
    plan: MergePlan
    index: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, state: TokenState, merge_key):
        cfg, op = self.config, self.plan.ops[self.index]
        x = state.x
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="LayerNorm_0")(x)
        # log(size) is exactly 0 until something merged; skipping it then keeps dense runs bit-exact.
        size_log = jnp.log(state.size) if self.plan.prop_attn and self.plan.merged_before(self.index) else None
        attn, feats = MultiHeadDotProductAttention(cfg.heads, self.dtype, name="MultiHeadDotProductAttention_1")(y, size_log)
        feats["x_pre"] = y
        self.sow("intermediates", "x_pre", y)
        self.sow("intermediates", "x_attn", feats["x_attn"])
        x = x + attn
        self.sow("intermediates", "x_post", x)
        state = state._replace(x=x)
        if op.kind != "none" and op.r > 0:
            metric = (random_metric(jax.random.fold_in(merge_key, self.index), feats["k"].shape)
                      if self.plan.metric == "random" else feats[self.plan.metric])
            state, merged_sim = apply_op(op, self.plan, state, metric)
            if merged_sim is not None:
                self.sow("intermediates", "merged_similarity", merged_sim)
        x = state.x
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(cfg.mlp_dim, cfg.gelu, self.dtype, name="MlpBlock_3")(y)
        return state._replace(x=x + y)


class AddPositionEmbs(nn.Module):
    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        return x + pe.astype(x.dtype)


class Encoder(nn.Module):
    config: ViTConfig
    plan: MergePlan
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, merge_key):
        cfg = self.config
        x = AddPositionEmbs(name="posembed_input")(x)
        state = initial_state(x, cfg.grid, self.plan.num_prefix, self.plan.track_source)
        for i in range(cfg.depth):
            state = Encoder1DBlock(cfg, self.plan, i, self.dtype, name=f"encoderblock_{i}")(state, merge_key)
        x = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="encoder_norm")(state.x)
        return state._replace(x=x)


def dense_plan(config: ViTConfig) -> MergePlan:
    return make_plan(config)


class VisionTransformer(nn.Module):
    """ViT classifier. `plan=None` is the dense model. Call with images (B, H, W, 3) float.

    merge_key: PRNG key for the `random` metric (defaults to PRNGKey(0): reproducible).
    return_state: also return the final TokenState (sizes, positions, sources of the tokens).
    """

    config: ViTConfig
    plan: MergePlan | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images, *, merge_key=None, return_state: bool = False):
        cfg = self.config
        plan = self.plan or dense_plan(cfg)
        if plan.depth != cfg.depth or tuple(plan.patch_grid) != cfg.grid:
            raise FastViTError(f"merge plan is for depth {plan.depth} grid {plan.patch_grid}, "
                               f"model has depth {cfg.depth} grid {cfg.grid}")
        if images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise FastViTError(f"images are {images.shape[1]}x{images.shape[2]}, "
                               f"model expects {cfg.image_size}x{cfg.image_size}")
        merge_key = jax.random.PRNGKey(0) if merge_key is None else merge_key
        x = nn.Conv(cfg.width, (cfg.patch, cfg.patch), strides=(cfg.patch, cfg.patch), padding="VALID",
                    dtype=self.dtype, name="embedding")(images.astype(self.dtype))
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
        state = Encoder(cfg, plan, self.dtype, name="Transformer")(x, merge_key)
        x = state.x[:, 0]
        if cfg.pre_logits:
            x = jnp.tanh(nn.Dense(cfg.pre_logits, dtype=self.dtype, name="pre_logits")(x))
        logits = nn.Dense(cfg.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
        return (logits, state) if return_state else logits


def init_params(config: ViTConfig, key=None) -> dict:
    """Random parameters with the checkpoint's tree (for benchmarks and tests)."""
    key = jax.random.PRNGKey(0) if key is None else key
    model = VisionTransformer(config)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.jit(model.init)(key, images)["params"]
