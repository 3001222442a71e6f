"""Vision Transformer in Flax linen whose parameter tree is Google's checkpoint tree.

Module names follow google-research/vision_transformer (models_vit.py) exactly, so an AugReg/SAM
.npz loads without renaming:
  [conv_root, gn_root, block{i}/unit{j}/...]  (hybrids: models/resnet.py)
  embedding, [cls], [dist], Transformer/posembed_input/pos_embedding  (absent for sincos2d),
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
                               LayerNorm_2, MlpBlock_3/{Dense_0, Dense_1}},
  Transformer/encoder_norm, [MAPHead_0], [pre_logits], [head], [head_dist].
Other layouts (big_vision, timm, transformers) are renamed onto this tree when read (checkpoints/).

Token merging happens between attention and MLP of each block, as the MergePlan says; the block
itself only hands its features to merge.apply.apply_op.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge import buckets, step
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.merge.state import TokenState, initial_state
from fastvit_jax.models.resnet import resnet_stem
from fastvit_jax.runtime import Runtime

Dtype = Any


class HeadsProjection(nn.Module):
    """Google's query/key/value parameters -- kernel (width, heads, head_dim), bias (heads, head_dim) --
    applied so the output is heads-first (B, heads, N, head_dim): the layout XLA's batched matmuls
    want on CPU (BENCHMARKS.md section 2).

    Also returns the mean over heads (B, N, head_dim), the merge feature of ToMe's "k" metric,
    written as a sum of the contiguous per-head slices: XLA:CPU fused `mean(axis=1)` badly, and a
    matmul with mean_h(kernel) is as fast but adds real FLOPs (BENCHMARKS.md section 2). Unused
    (dense blocks), XLA drops it. In a low-precision dtype the mean is that float32 matmul on the
    float32 input, so matching sees no bfloat16 rounding of its own: near-tied merges flip under
    key noise of a bfloat16 rounding's size (BENCHMARKS.md section 13)."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    tokens_first: bool = False  # (B, N, heads, head_dim): the layout jax.nn.dot_product_attention takes

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=(1, 2))
        kernel = self.param("kernel", init, (x.shape[-1], self.heads, self.head_dim))
        bias = self.param("bias", nn.initializers.zeros, (self.heads, self.head_dim))
        if self.tokens_first:
            heads = jnp.einsum("bnc,chd->bnhd", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
            per_head = lambda h: heads[:, :, h]
        else:
            heads = jnp.einsum("bnc,chd->bhnd", x.astype(self.dtype), kernel.astype(self.dtype)) \
                + bias[:, None, :].astype(self.dtype)
            per_head = lambda h: heads[:, h]
        if self.dtype == jnp.float32:
            head_mean = sum(per_head(h) for h in range(self.heads)) / self.heads
        else:
            head_mean = jnp.einsum("bnc,cd->bnd", x.astype(jnp.float32), jnp.mean(kernel, axis=1),
                                   precision=jax.lax.Precision.HIGHEST) + jnp.mean(bias, axis=0)
        return heads, head_mean


class OutProjection(nn.Module):
    """Google's out parameters -- kernel (heads, head_dim, width), bias (width,) -- on heads-first input."""

    width: int
    dtype: Dtype = jnp.float32
    tokens_first: bool = False  # input (B, N, heads, head_dim)

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
        heads, head_dim = (x.shape[2], x.shape[3]) if self.tokens_first else (x.shape[1], x.shape[3])
        kernel = self.param("kernel", init, (heads, head_dim, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        spec = "bnhd,hdc->bnc" if self.tokens_first else "bhnd,hdc->bnc"
        return jnp.einsum(spec, x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with Google's parameter layout; returns the output and merge features.

    size_log: optional (B, N) log token sizes added to the logits (ToMe's proportional attention).
    queries: optional (B, Q, D) inputs of the queries (attention pooling); default x itself.
    """

    heads: int
    dtype: Dtype = jnp.float32
    fused: bool = False  # jax.nn.dot_product_attention instead of the matmuls below (runtime.attention)

    @nn.compact
    def __call__(self, x, size_log=None, queries=None, feature=None, weights=None):
        """weights: a given attention map (B, H, N, N) (MCTF's merged one): only the values and the
        output projection are computed, from x."""
        width = x.shape[-1]
        head_dim = width // self.heads
        fused = self.fused and feature is None and weights is None  # the attention map never leaves the kernel
        proj = lambda name, inputs: HeadsProjection(
            self.heads, head_dim, self.dtype, tokens_first=fused, name=name)(inputs)
        if weights is not None:
            v, _ = proj("value", x)
            attended = weights.astype(self.dtype) @ v
            return OutProjection(width, self.dtype, name="out")(attended), {}
        (q, q_mean) = proj("query", x if queries is None else queries)
        (k, k_mean), (v, v_mean) = proj("key", x), proj("value", x)  # (B, H, N, Dh); fused: (B, N, H, Dh)
        if fused:  # projected tokens-first, the layout the fused kernel takes: no transposes around it
            bias = None if size_log is None else size_log[:, None, None, :].astype(q.dtype)
            attended = jax.nn.dot_product_attention(q, k, v, bias=bias)  # (B, N, H, Dh)
            out = OutProjection(width, self.dtype, tokens_first=True, name="out")(attended)
            return out, {"k": k_mean, "q": q_mean, "v": v_mean, "attention_feature": None, "weights": None,
                         "x_attn": attended.reshape(attended.shape[0], -1, width)}
        # float32 logits, as fused kernels keep them: a logit of 20 rounded to bfloat16 moves by 0.06
        logits = jnp.matmul(q / jnp.sqrt(head_dim).astype(q.dtype), k.swapaxes(-1, -2),
                            preferred_element_type=jnp.float32)
        if size_log is not None:
            logits = logits + size_log[:, None, None, :]
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = weights @ v  # (B, H, N, Dh)
        # what a merge rule reads of this attention (MCTF, PPT: its method's attention_feature)
        received = None if feature is None else feature(weights, v)
        out = OutProjection(width, self.dtype, name="out")(attended)
        feats = {"k": k_mean, "q": q_mean, "v": v_mean, "attention_feature": received, "weights": weights,
                 "x_attn": attended.transpose(0, 2, 1, 3).reshape(attended.shape[0], -1, width)}
        return out, feats


class MlpBlock(nn.Module):
    mlp_dim: int
    gelu: str = "tanh"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x)
        y = y * jax.nn.sigmoid(1.702 * y) if self.gelu == "quick" else nn.gelu(y, approximate=self.gelu == "tanh")
        return nn.Dense(width, dtype=self.dtype, name="Dense_1")(y)


class LayerScale(nn.Module):
    """A branch's output times a learned per-channel scale (DeiT III, DINOv2: timm's ls1/ls2 gamma)."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(1e-5), (x.shape[-1],))
        return x * scale.astype(x.dtype)


def with_registers(t, registers):
    """Tokens (B, N, ...) and the register tokens' (B, R, ...) as one sequence for attention and MLP:
    registers last (attention does not depend on the order), so the merged tokens keep their places."""
    return t if registers is None else jnp.concatenate([t, registers], axis=1)


class Encoder1DBlock(nn.Module):
    config: ViTConfig
    plan: MergePlan
    index: int
    runtime: Runtime = Runtime()  # resolved: no "auto" left
    bucketed: bool = False  # the tokens sit in slots the merge keeps (merge/buckets.py)
    padded: bool = False  # some slots hold padding, masked out of attention

    @property
    def dtype(self):
        return jnp.dtype(self.runtime.dtype)

    @nn.compact
    def __call__(self, state: TokenState, merge_key, registers=None, shared=None):
        """(state, registers) after the block; registers (B, R, D) or None: they attend and pass the
        MLP with the tokens but stay out of the state, so no merge ever sees them. shared: this
        block's r and margin (traced) and the run's r_max when it is one of a scanned run
        (merge/buckets.shared_runs), else the plan's."""
        cfg, op = self.config, self.plan.ops[self.index]
        n = state.x.shape[1]
        scale = (lambda name: LayerScale(name=name)) if cfg.layerscale else (lambda name: lambda t: t)
        ls1, ls2 = scale("ls1"), scale("ls2")
        # float32 out: the projections cast it to dtype, the merge feature reads it as it is
        norm = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=jnp.float32, name="LayerNorm_0")
        y = norm(with_registers(state.x, registers))
        size_log = step.key_bias(self.plan, self.index, state, padded=self.padded, bucketed=self.bucketed)
        if size_log is not None and registers is not None:  # a register stands for itself: log 1 = 0
            size_log = with_registers(size_log, jnp.zeros(registers.shape[:2], size_log.dtype))
        mha = MultiHeadDotProductAttention(cfg.heads, self.dtype, self.runtime.attention == "fused",
                                           name="MultiHeadDotProductAttention_1")
        attn, feats = mha(y, size_log, feature=step.attention_feature(op))
        attn = ls1(attn)
        if registers is not None:
            registers = registers + attn[:, n:]
            attn, y = attn[:, :n], y[:, :n]
            feats = {k: v if v is None or k == "weights" else v[:, :n] for k, v in feats.items()}
        inputs = step.BlockInputs(state, attn, {**feats, "x_pre": y},
                                  reattend=lambda merged, weights: ls1(mha(norm(merged.x), weights=weights)[0]))
        state, observed = step.block_step(op, self.plan, inputs, block=self.index, merge_key=merge_key,
                                          impl=self.runtime.merge_impl, bucketed=self.bucketed, shared=shared)
        for name, value in observed.items():  # read back by `observe`
            self.sow("intermediates", name, value)
        x = with_registers(state.x, registers)
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="LayerNorm_2")(x)
        x = x + ls2(MlpBlock(cfg.mlp_dim, cfg.gelu, self.dtype, name="MlpBlock_3")(y))
        n = state.x.shape[1]
        return state._replace(x=x[:, :n]), (None if registers is None else x[:, n:])


class AddPositionEmbs(nn.Module):
    @nn.compact
    def __call__(self, x):
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
        return x + pe.astype(x.dtype)


def posemb_sincos_2d(grid: tuple[int, int], width: int, temperature: float = 10_000.0):
    """big_vision's fixed position embedding (MoCo v3): per patch [sin x, cos x, sin y, cos y] with
    width/4 frequencies each; x is the column, y the row. (1, gh*gw, width) float32."""
    rows, cols = jnp.meshgrid(jnp.arange(grid[0], dtype=jnp.float32), jnp.arange(grid[1], dtype=jnp.float32),
                              indexing="ij")
    quarter = width // 4
    omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) / max(quarter - 1, 1))
    x = cols.reshape(-1, 1) * omega
    y = rows.reshape(-1, 1) * omega
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None]


class MAPHead(nn.Module):
    """big_vision's attention pooling: a learned probe attends over the tokens, then LayerNorm and a
    residual MLP. Merged tokens count for their patches through log(size) on the logits, as in
    proportional attention."""

    config: ViTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size_log=None):
        cfg = self.config
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]))
        probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        y, _ = MultiHeadDotProductAttention(cfg.heads, self.dtype, name="MultiHeadDotProductAttention_0")(
            x, size_log, queries=probe)
        z = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="LayerNorm_0")(y)
        y = y + MlpBlock(cfg.mlp_dim, cfg.gelu, self.dtype, name="MlpBlock_0")(z)
        return y[:, 0]


def pool_tokens(config: ViTConfig, plan: MergePlan, state: TokenState, dtype: Dtype, padded: bool = False):
    """The image's feature from the final tokens. After merging, the mean weighs each token by the
    patches it holds (as ToMe pools its global-pool models); before, it is the plain mean. padded:
    some final slots are padding (size 0: no weight in the mean, masked out of MAP's attention)."""
    x, merged = state.x, plan.merged_before(config.depth)
    if config.pool == "tok":  # distilled: the mean of both tokens, timm's pre-logits feature
        return (x[:, 0] + x[:, 1]) / 2 if config.distilled else x[:, 0]
    if config.pool == "gap":
        if not merged and not padded:
            return jnp.mean(x, axis=1)
        weights = state.size / jnp.sum(state.size, axis=1, keepdims=True)
        return jnp.einsum("bnd,bn->bd", x.astype(jnp.float32), weights).astype(x.dtype)
    bias = jnp.log(state.size) if merged and plan.prop_attn else buckets.attention_mask(state) if padded else None
    return MAPHead(config, dtype, name="MAPHead_0")(x, bias)


class Encoder(nn.Module):
    config: ViTConfig
    plan: MergePlan
    runtime: Runtime = Runtime()
    layout: buckets.Layout | None = None  # a shared program's (merge/buckets.shared_layout): r... as data

    @nn.compact
    def __call__(self, x, merge_key, registers=None, schedule=None):
        """x: (B, prefix + patches, D) embedded tokens; registers: (B, R, D) or None. schedule: with a
        shared layout, this plan's per-block data (buckets.schedule), else None."""
        cfg = self.config
        if cfg.posemb == "learn" and cfg.posemb_prefix:
            x = AddPositionEmbs(name="posembed_input")(x)
        elif cfg.posemb == "learn":  # on the patch tokens only (timm's no_embed_class)
            x = jnp.concatenate([x[:, :cfg.num_prefix], AddPositionEmbs(name="posembed_input")(x[:, cfg.num_prefix:])], 1)
        else:  # fixed, on the patch tokens only (big_vision adds it before the class token)
            pe = posemb_sincos_2d(cfg.grid, cfg.width)
            x = x + jnp.pad(pe, ((0, 0), (cfg.num_prefix, 0), (0, 0))).astype(x.dtype)
        if cfg.pre_norm:  # over every token, registers included (CLIP's ln_pre, timm's norm_pre)
            pre = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=jnp.float32, name="pre_norm")
            x, registers = pre(x), None if registers is None else pre(registers)
        state = initial_state(x, cfg.grid, self.plan.num_prefix, self.plan.track_source)
        sharing = self.layout is not None
        layout = self.layout or buckets.layout(self.plan, self.runtime.token_buckets)
        slots, padded = layout.slots, layout.padded
        bucketed = [bool(self.runtime.token_buckets or sharing) and buckets.bucketable(op) for op in self.plan.ops]
        runs = [(i, i + 1) for i in range(cfg.depth)]
        if (self.runtime.token_buckets or sharing) and not self.is_mutable_collection("intermediates"):
            runs = buckets.shared_runs(self.plan, slots, padded)  # observing: per block
        shares = {run: buckets.block_program(self.plan, run[0], slots[run[0]], padded[run[0]]) is not None
                  for run in runs}
        scans = [] if self.is_initializing() else [  # init creates each block's weights
            (start, end) for start, end in runs if end - start > 1 and shares[start, end]]
        stacked = self.stacked_blocks([i for start, end in scans for i in range(start, end)]) if scans else None
        for start, end in runs:
            if (start, end) in scans:
                state, registers = self.scanned(start, end, layout, state, merge_key, registers, stacked, schedule)
            else:
                for i in range(start, end):
                    shared = None  # a shared program's block takes its r, margin... from the schedule
                    if schedule is not None and shares[start, end]:
                        shared = {**{k: v[i] for k, v in schedule.items()}, **layout.statics(i, i + 1)}
                    state, registers = Encoder1DBlock(cfg, self.plan, i, self.runtime, bucketed[i], padded[i],
                                                      name=f"encoderblock_{i}")(state, merge_key, registers, shared)
            state = buckets.cut(state, slots[end])
        x = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=jnp.dtype(self.runtime.dtype), name="encoder_norm")(state.x)
        return state._replace(x=x)

    def stacked_blocks(self, blocks: list[int]) -> tuple[list[int], dict]:
        """(blocks, their weights stacked along a leading axis in that order): one stack per weight
        for all the forward's scanned runs, which index it; a stack per run would be a kernel of its
        own shape for XLA to compile (BENCHMARKS.md section 25)."""
        params = self.variables["params"]
        return blocks, jax.tree_util.tree_map(lambda *w: jnp.stack(w), *(params[f"encoderblock_{i}"] for i in blocks))

    def scanned(self, start: int, end: int, layout: buckets.Layout, state: TokenState, merge_key, registers,
                stacked: tuple[list[int], dict], schedule=None):
        """Blocks start..end-1, one program (merge/buckets.shared_runs), as one lax.scan over their
        weights in `stacked` (`stacked_blocks`), each block's data (r, margin, threshold, combine
        index: buckets.schedule; the plan's, or the given schedule's) scanned values: traced and
        compiled once."""
        blocks, stacked = stacked
        first = blocks.index(start)  # a run's blocks are consecutive in the stack
        if schedule is None:
            schedule = buckets.schedule(self.plan)
        values = {k: jnp.asarray(v[start:end]) for k, v in schedule.items()}
        statics = layout.statics(start, end)
        block = Encoder1DBlock(self.config, self.plan, buckets.representative(self.plan, start, end), self.runtime,
                               True, layout.padded[start])

        def body(carry, xs):
            index, shared = xs
            weights = jax.tree_util.tree_map(lambda w: jax.lax.dynamic_index_in_dim(w, index, keepdims=False), stacked)
            return block.apply({"params": weights}, carry[0], merge_key, carry[1],
                               shared={**shared, **statics}), None

        (state, registers), _ = jax.lax.scan(body, (state, registers), (jnp.arange(first, first + end - start), values))
        return state, registers


def dense_plan(config: ViTConfig) -> MergePlan:
    return make_plan(config)


class VisionTransformer(nn.Module):
    """ViT classifier. `plan=None` is the dense model. Call with images (B, H, W, 3) float.

    Returns logits, or with num_classes=0 (a tower without head) the pooled feature.
    merge_key: PRNG key for the `random` metric (defaults to PRNGKey(0): reproducible).
    return_state: also return the final TokenState: the per-token features after encoder_norm
    (unpooled), their sizes, positions and (plan.track_source) the patches each holds.
    layout (merge/buckets.shared_layout) with schedule (buckets.schedule(member)): one program for
    plans of one buckets.program_key, each plan's r and margins given as data; its logits are that plan's
    within rounding, padded slots included in a returned state.
    """

    config: ViTConfig
    plan: MergePlan | None = None
    runtime: Runtime = Runtime()  # how it runs (dtype, merge and attention implementations)
    layout: buckets.Layout | None = None  # shared by plans that differ in r (buckets.program_key)

    @property
    def dtype(self):
        return jnp.dtype(self.runtime.dtype)

    @nn.compact
    def __call__(self, images, *, merge_key=None, return_state: bool = False, schedule=None):
        cfg = self.config
        runtime = self.runtime if "auto" not in dataclasses.astuple(self.runtime) else self.runtime.resolved(cfg)
        plan = self.plan or dense_plan(cfg)
        if plan.depth != cfg.depth or tuple(plan.patch_grid) != cfg.grid:
            raise FastViTError(f"merge plan is for depth {plan.depth} grid {plan.patch_grid}, "
                               f"model has depth {cfg.depth} grid {cfg.grid}")
        check_images(images, cfg.image_size)
        merge_key = jax.random.PRNGKey(0) if merge_key is None else merge_key
        x = images.astype(self.dtype)
        if cfg.resnet is not None:
            x = resnet_stem(x, cfg.resnet, cfg.resnet_width, self.dtype)
        x = nn.Conv(cfg.width, (cfg.patch, cfg.patch), strides=(cfg.patch, cfg.patch), padding="VALID",
                    use_bias=cfg.patch_bias, dtype=self.dtype, name="embedding")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if cfg.pool == "tok":
            prefix = [self.param("cls", nn.initializers.zeros, (1, 1, c))]
            if cfg.distilled:
                prefix.append(self.param("dist", nn.initializers.zeros, (1, 1, c)))
            x = jnp.concatenate([jnp.tile(p.astype(x.dtype), (b, 1, 1)) for p in prefix] + [x], axis=1)
        registers = None
        if cfg.registers:
            registers = jnp.tile(self.param("reg", nn.initializers.zeros, (1, cfg.registers, c)), (b, 1, 1))
            registers = registers.astype(jnp.float32)
        # The residual stream, and so every merge's weighted mean, stays float32 whatever the dtype:
        # only the branches (attention, MLP) compute in it (BENCHMARKS.md section 13).
        x = x.astype(jnp.float32)
        state = Encoder(cfg, plan, runtime, self.layout, name="Transformer")(x, merge_key, registers, schedule)
        x = pool_tokens(cfg, plan, state, self.dtype, padded=self.layout is not None and self.layout.padded[-1])
        if cfg.pre_logits:
            x = jnp.tanh(nn.Dense(cfg.pre_logits, dtype=self.dtype, name="pre_logits")(x))
        if cfg.num_classes and cfg.distilled:  # timm's eval: the mean of the class and distillation heads
            x = (nn.Dense(cfg.num_classes, dtype=self.dtype, name="head")(state.x[:, 0])
                 + nn.Dense(cfg.num_classes, dtype=self.dtype, name="head_dist")(state.x[:, 1])) / 2
        elif cfg.num_classes:
            if cfg.l2_normalize:  # as big_vision's two_towers normalises an embedding
                x = x / (jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True) + 1e-8).astype(x.dtype)
            x = nn.Dense(cfg.num_classes, dtype=self.dtype, name="head")(x)
        logits = x.astype(jnp.float32)
        return (logits, state) if return_state else logits


def check_images(images, size: int) -> None:
    """Refuse, in one line, what is not a batch of preprocessed images (B, size, size, 3), floating."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise FastViTError(f"images must be a batch (B, {size}, {size}, 3), got shape {shape}"
                           + (": add a batch axis (images[None])" if len(shape) == 3 else ""))
    if shape[3] != 3 and shape[1] == 3:
        raise FastViTError(f"images are channels-first {shape}; the model expects channels-last (B, {size}, {size}, 3): "
                           f"images.transpose(0, 2, 3, 1)")
    if shape[3] != 3:
        raise FastViTError(f"images have {shape[3]} channels, the model expects 3 (RGB), shape (B, {size}, {size}, 3)")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise FastViTError(f"images are {images.dtype} pixels; the model takes preprocessed floating-point images "
                           f"(model.preprocess(...) or fastvit_jax.data.Preprocess)")
    if shape[1:3] != (size, size):
        raise FastViTError(f"images are {shape[1]}x{shape[2]}, model expects {size}x{size}")


def observe(model: VisionTransformer, params, images, schedule=None) -> tuple[jax.Array, list[dict]]:
    """(logits, per block {name: array}): the model's output and what each block observed (x_pre,
    x_attn, x_post, metric, size, merged_similarity: merge.step.block_step). Works under jit.
    schedule: a shared program's (model.layout); what it observes keeps every slot (padding: size 0)."""
    out, variables = model.apply({"params": params}, images, schedule=schedule, mutable=["intermediates"])
    blocks = variables["intermediates"]["Transformer"]
    return out, [{k: v[0] for k, v in blocks.get(f"encoderblock_{i}", {}).items()} for i in range(model.config.depth)]


def init_params(config: ViTConfig, key=None) -> dict:
    """Random parameters with the checkpoint's tree (for benchmarks and tests)."""
    key = jax.random.PRNGKey(0) if key is None else key
    model = VisionTransformer(config)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.jit(model.init)(key, images)["params"]
