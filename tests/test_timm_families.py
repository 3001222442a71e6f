"""The ViT families beyond Google's files, as timm saves them: DINOv2 (LayerScale, 14 px patches),
DINOv2 with registers (register tokens, position embeddings on the patches only), DeiT III
(LayerScale, no_embed_class) and CLIP image towers (a LayerNorm before the blocks, no patch bias,
LayerNorm eps 1e-5, QuickGELU for OpenAI's weights). Each folder is written in timm's exact key
layout with random values at trained scales (LayerScale gammas 1e-1 to 1e-5, not 1) and checked
against tests/reference.py's timm_forward, which reads timm's keys itself, in timm's token order:
dense, and with ToMe merging around the registers."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import reference
import fastvit_jax as fv
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.forward import make_forward
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime

WIDTH, HEADS, DEPTH, MLP, PATCH, SIDE = 32, 2, 3, 64, 4, 32


def timm_state_dict(*, registers=0, layerscale=False, no_embed_class=False, clip=False, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    g = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
    grid = (SIDE // PATCH) ** 2
    sd = {"cls_token": g(1, 1, WIDTH, s=0.5), "patch_embed.proj.weight": g(WIDTH, 3, PATCH, PATCH, s=1 / np.sqrt(3 * PATCH ** 2)),
          "pos_embed": g(1, grid + (0 if no_embed_class else 1 + registers), WIDTH, s=0.5),
          "norm.weight": 1 + g(WIDTH, s=0.1), "norm.bias": g(WIDTH, s=0.02)}
    if not clip:
        sd["patch_embed.proj.bias"] = g(WIDTH, s=0.02)
    else:
        sd["norm_pre.weight"], sd["norm_pre.bias"] = 1 + g(WIDTH, s=0.1), g(WIDTH, s=0.02)
    if registers:
        sd["reg_token"] = g(1, registers, WIDTH, s=0.5)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + g(WIDTH, s=0.1), b + "norm1.bias": g(WIDTH, s=0.02),
                   b + "attn.qkv.weight": g(3 * WIDTH, WIDTH, s=1 / np.sqrt(WIDTH)), b + "attn.qkv.bias": g(3 * WIDTH, s=0.02),
                   b + "attn.proj.weight": g(WIDTH, WIDTH, s=1 / np.sqrt(WIDTH)), b + "attn.proj.bias": g(WIDTH, s=0.02),
                   b + "norm2.weight": 1 + g(WIDTH, s=0.1), b + "norm2.bias": g(WIDTH, s=0.02),
                   b + "mlp.fc1.weight": g(MLP, WIDTH, s=1 / np.sqrt(WIDTH)), b + "mlp.fc1.bias": g(MLP, s=0.02),
                   b + "mlp.fc2.weight": g(WIDTH, MLP, s=1 / np.sqrt(MLP)), b + "mlp.fc2.bias": g(WIDTH, s=0.02)})
        if layerscale:  # trained gammas span 1e-1 .. 1e-5 (DINOv2 starts at 1e-5, DeiT III at 1e-6)
            sd[b + "ls1.gamma"] = (10.0 ** rng.uniform(-5, -1, WIDTH)).astype(np.float32)
            sd[b + "ls2.gamma"] = (10.0 ** rng.uniform(-5, -1, WIDTH)).astype(np.float32)
    if classes:
        sd["head.weight"], sd["head.bias"] = g(classes, WIDTH, s=1 / np.sqrt(WIDTH)), g(classes, s=0.02)
    return sd


FAMILIES = {
    "dinov2": dict(layerscale=True, classes=0),
    "dinov2_reg4": dict(layerscale=True, registers=4, no_embed_class=True, classes=0),
    "deit3": dict(layerscale=True, no_embed_class=True),
    "clip": dict(clip=True, classes=0),
    "clip_quickgelu": dict(clip=True, classes=0),
}


def timm_folder(path, family: str, seed=0):
    sd = timm_state_dict(seed=seed, **FAMILIES[family])
    path.mkdir(parents=True)
    save_file(sd, str(path / "model.safetensors"))
    arch = {"dinov2": "vit_small_patch14_dinov2", "dinov2_reg4": "vit_small_patch14_reg4_dinov2",
            "deit3": "deit3_small_patch16_224", "clip": "vit_base_patch16_clip_224",
            "clip_quickgelu": "vit_base_patch16_clip_quickgelu_224"}[family]
    classes = FAMILIES[family].get("classes", 10)
    (path / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": classes, "num_features": WIDTH, "model_args": {"num_heads": HEADS},
        "pretrained_cfg": {"tag": "lvd142m", "input_size": [3, SIDE, SIDE], "interpolation": "bicubic", "crop_pct": 1.0,
                           "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "num_classes": classes}}))
    return path, sd


def outputs(model, x):
    """Logits, or a headless tower's pooled feature (the class token after the final norm)."""
    return model(jnp.asarray(x)) if model.config.num_classes else model.embed(x)["features"]


def images(n=2, seed=1):
    return np.random.default_rng(seed).standard_normal((n, SIDE, SIDE, 3)).astype(np.float32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_family_folder_matches_the_timm_reference(tmp_path, family):
    folder, sd = timm_folder(tmp_path / family, family)
    model = fv.load(folder)
    cfg = model.config
    assert (cfg.layerscale, cfg.registers, cfg.pre_norm, cfg.patch_bias) == (
        FAMILIES[family].get("layerscale", False), FAMILIES[family].get("registers", 0),
        FAMILIES[family].get("clip", False), not FAMILIES[family].get("clip", False))
    gelu = "quick" if family == "clip_quickgelu" else "exact"
    assert cfg.gelu == gelu and cfg.ln_eps == (1e-5 if "clip" in family else 1e-6)
    x = images()
    want = reference.timm_forward(sd, x, heads=HEADS, gelu_kind=gelu, eps=cfg.ln_eps)
    np.testing.assert_allclose(outputs(model, x), want, atol=2e-5, rtol=1e-4)
    # ToMe r = 0 is the dense model, bit for bit
    np.testing.assert_array_equal(outputs(model.merge("tome", r=0), x), outputs(model, x))


@pytest.mark.parametrize("family", ["dinov2_reg4", "deit3"])
def test_tome_on_a_timm_family_matches_the_reference_and_never_merges_registers(tmp_path, family):
    folder, sd = timm_folder(tmp_path / family, family, seed=3)
    model = fv.load(folder)
    x = images(seed=4)
    merged = model.merge("tome", r=8)
    want = reference.timm_forward(sd, x, heads=HEADS, eps=model.config.ln_eps, r=8)
    np.testing.assert_allclose(outputs(merged, x), want, atol=5e-5, rtol=1e-4)
    # the registers are outside the merged tokens: every kept token holds patches (or is the class token)
    _, state = VisionTransformer(model.config, merged.plan).apply({"params": model.params}, jnp.asarray(x),
                                                                   return_state=True)
    assert state.x.shape[1] == merged.plan.final_tokens
    assert float(jnp.sum(state.size[:, 1:])) == x.shape[0] * (SIDE // PATCH) ** 2  # patches only, none lost


def test_buckets_and_registers_together(tmp_path):
    folder, _ = timm_folder(tmp_path / "reg", "dinov2_reg4", seed=5)
    model = fv.load(folder)
    plan = make_plan(model.config, MergeOptions("tome", r=8))
    x = jnp.asarray(images(seed=6))
    exact = make_forward(model.config, plan, Runtime())(model.params, x)
    np.testing.assert_allclose(make_forward(model.config, plan, Runtime(token_buckets=1))(model.params, x), exact,
                               atol=2e-5, rtol=1e-5)


def test_mctf_one_step_ahead_refuses_registers(tmp_path):
    folder, _ = timm_folder(tmp_path / "reg", "dinov2_reg4")
    model = fv.load(folder)
    with pytest.raises(FastViTError, match="register tokens"):
        make_plan(model.config, MergeOptions("mctf", r=4))
