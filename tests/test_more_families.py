"""The ViT families beyond Google's files, as timm and transformers save them: DINOv2 (LayerScale, 14 px patches),
DINOv2 with registers (register tokens, position embeddings on the patches only), DeiT III
(LayerScale, no_embed_class) and CLIP image towers (a LayerNorm before the blocks, no patch bias,
LayerNorm eps 1e-5, QuickGELU for OpenAI's weights). Each folder is written in timm's exact key
layout with random values at trained scales (LayerScale gammas 1e-1 to 1e-5, not 1) and checked
against tests/reference.py's timm_forward, which reads timm's keys itself, in timm's token order:
dense, and with ToMe merging around the registers. transformers' `Dinov2Model`,
`Dinov2WithRegistersModel`, `CLIPVisionModel` and unprefixed (transformers 5) `SiglipVisionModel`
folders are written from the same numbers under transformers' names and must give the same outputs."""

import json

import jax
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


@pytest.mark.parametrize("family", ["dinov2_reg4", "dinov2", "deit3", "clip_quickgelu"])
def test_tome_on_a_timm_family_matches_the_reference_and_never_merges_registers(tmp_path, family):
    folder, sd = timm_folder(tmp_path / family, family, seed=3)
    model = fv.load(folder)
    x = images(seed=4)
    merged = model.merge("tome", r=8)
    gelu = "quick" if model.config.gelu == "quick" else "exact"
    want = reference.timm_forward(sd, x, heads=HEADS, gelu_kind=gelu, eps=model.config.ln_eps, r=8)
    np.testing.assert_allclose(outputs(merged, x), want, atol=5e-5, rtol=1e-4)
    # the registers are outside the merged tokens: every kept token holds patches (or is the class token)
    vit = VisionTransformer(model.config, merged.plan)
    _, state = jax.jit(lambda p, x: vit.apply({"params": p}, x, return_state=True))(model.params, jnp.asarray(x))
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


def split_qkv(sd, b):
    w, bias = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
    return [(w[i * WIDTH:(i + 1) * WIDTH], bias[i * WIDTH:(i + 1) * WIDTH]) for i in range(3)]


def transformers_dinov2(sd):
    """timm keys -> transformers' Dinov2Model (Dinov2WithRegistersModel with reg_token) keys."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.mask_token": np.zeros((1, WIDTH), np.float32),
           "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    if "reg_token" in sd:
        out["embeddings.register_tokens"] = sd["reg_token"]
    for i in range(DEPTH):
        b, t = f"blocks.{i}.", f"encoder.layer.{i}."
        for name, (w, bias) in zip(("query", "key", "value"), split_qkv(sd, b)):
            out[t + f"attention.attention.{name}.weight"], out[t + f"attention.attention.{name}.bias"] = w, bias
        pairs = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1",
                 "mlp.fc2": "mlp.fc2"}
        for src, dst in pairs.items():
            out[t + dst + ".weight"], out[t + dst + ".bias"] = sd[b + src + ".weight"], sd[b + src + ".bias"]
        out[t + "layer_scale1.lambda1"], out[t + "layer_scale2.lambda1"] = sd[b + "ls1.gamma"], sd[b + "ls2.gamma"]
    return out


def transformers_clip_vision(sd, prefix="vision_model."):
    """timm CLIP keys -> transformers' CLIPVisionModel keys (prefix "": transformers 5's unprefixed
    vision-model files use SigLIP's names the same way)."""
    v = prefix
    out = {v + "embeddings.class_embedding": sd["cls_token"][0, 0],
           v + "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
           v + "embeddings.position_embedding.weight": sd["pos_embed"][0],
           v + "pre_layrnorm.weight": sd["norm_pre.weight"], v + "pre_layrnorm.bias": sd["norm_pre.bias"],
           v + "post_layernorm.weight": sd["norm.weight"], v + "post_layernorm.bias": sd["norm.bias"]}
    for i in range(DEPTH):
        b, t = f"blocks.{i}.", f"{v}encoder.layers.{i}."
        for name, (w, bias) in zip(("q_proj", "k_proj", "v_proj"), split_qkv(sd, b)):
            out[t + f"self_attn.{name}.weight"], out[t + f"self_attn.{name}.bias"] = w, bias
        pairs = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for src, dst in pairs.items():
            out[t + dst + ".weight"], out[t + dst + ".bias"] = sd[b + src + ".weight"], sd[b + src + ".bias"]
    return out


def hf_folder(path, state, config, pre):
    path.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    return path


CROP = {"do_resize": True, "size": {"shortest_edge": 36}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_dinov2_folder_matches_the_reference(tmp_path, registers):
    sd = timm_state_dict(layerscale=True, registers=registers, classes=0, seed=7)
    pe = sd["pos_embed"]  # transformers embeds the class token and patches; the registers join after
    sd["pos_embed"] = np.ascontiguousarray(np.concatenate([pe[:, :1], pe[:, 1 + registers:]], axis=1))
    config = {"model_type": "dinov2_with_registers" if registers else "dinov2", "hidden_size": WIDTH,
              "num_attention_heads": HEADS, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": SIDE,
              "patch_size": PATCH, **({"num_register_tokens": registers} if registers else {})}
    model = fv.load(hf_folder(tmp_path / "dinov2", transformers_dinov2(sd), config, CROP))
    assert (model.config.registers, model.config.layerscale, model.config.image_size) == (registers, True, SIDE)
    assert (model.preprocessing.family, model.preprocessing.crop_pct) == ("hf_crop", 32 / 36)
    x = images(seed=8)
    want = reference.timm_forward(sd, x, heads=HEADS, eps=1e-6)
    np.testing.assert_allclose(outputs(model, x), want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(outputs(model.merge("tome", r=8), x),
                               reference.timm_forward(sd, x, heads=HEADS, eps=1e-6, r=8), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("prefix", ["vision_model.", ""])
def test_transformers_clip_vision_folder_matches_the_reference(tmp_path, prefix):
    sd = timm_state_dict(clip=True, classes=0, seed=9)
    config = {"model_type": "clip_vision_model", "hidden_size": WIDTH, "num_attention_heads": HEADS,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "image_size": SIDE, "patch_size": PATCH}
    state = transformers_clip_vision(sd, prefix)  # "": unprefixed, as transformers 5 saves a vision model
    model = fv.load(hf_folder(tmp_path / "clip", state, config, CROP))
    assert (model.config.pre_norm, model.config.patch_bias, model.config.gelu) == (True, False, "quick")
    x = images(seed=10)
    np.testing.assert_allclose(outputs(model, x), reference.timm_forward(sd, x, heads=HEADS, gelu_kind="quick", eps=1e-5),
                               atol=2e-5, rtol=1e-4)


# torch.nn.functional.interpolate(mode="bicubic", align_corners=False) applied to an identity, torch 2.13
TORCH_BICUBIC = {
    (5, 3, False): [[0.6851851, 0.3703704, -0.0555553, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, -0.0555558, 0.3703706, 0.685185]],
    (5, 3, True): [[0.5846153, 0.4461538, 0.0, -0.0307692, 0.0], [-0.0372093, 0.2465116, 0.5813953, 0.2465116, -0.0372093],
                   [0.0, -0.0307691, 0.0, 0.4461538, 0.5846152]],
    (3, 5, False): [[1.0960001, -0.096, 0.0], [0.6119997, 0.46, -0.0719998], [0.0, 1.0, 0.0],
                    [-0.0719998, 0.4599998, 0.6120001], [0.0, -0.096, 1.0960002]],
    (3, 5, True): [[1.0754716, -0.0754717, 0.0], [0.6492537, 0.3955224, -0.0447761], [0.0, 1.0, 0.0],
                   [-0.0447761, 0.3955222, 0.6492538], [0.0, -0.0754717, 1.0754716]],
}


@pytest.mark.parametrize("case", list(TORCH_BICUBIC))
def test_bicubic_resampling_is_torchs(case):
    from fastvit_jax.checkpoints.resample import bicubic_matrix

    n_in, n_out, antialias = case
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out, antialias), TORCH_BICUBIC[case], atol=1e-6)
    assert np.allclose(bicubic_matrix(7, 7, antialias), np.eye(7))  # same size: unchanged


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_dinov2_runs_at_its_processors_crop(tmp_path, registers):
    """Weights at a 10x10 grid, a processor cropping 32 px (8x8): transformers resamples the position
    embeddings to the input on every call (antialiased with registers); we do it once at load time."""
    from fastvit_jax.checkpoints.resample import resample_grid

    sd = timm_state_dict(layerscale=True, registers=registers, classes=0, seed=11)
    rng = np.random.default_rng(12)
    big = (0.02 * rng.standard_normal((1, 1 + 100, WIDTH))).astype(np.float32)  # the weights' own grid
    sd["pos_embed"] = big
    config = {"model_type": "dinov2_with_registers" if registers else "dinov2", "hidden_size": WIDTH,
              "num_attention_heads": HEADS, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 10 * PATCH,
              "patch_size": PATCH, **({"num_register_tokens": registers} if registers else {})}
    from fastvit_jax.checkpoints.checkpoint import describe

    folder = hf_folder(tmp_path / "dinov2", transformers_dinov2(sd), config, CROP)
    model = fv.load(folder)
    assert model.config.image_size == SIDE
    assert "resampled from the weights' 10x10 grid" in describe(folder)["description"]["sources"]["image_size"]
    fitted = resample_grid(big[0, 1:].reshape(10, 10, WIDTH), (8, 8), antialias=bool(registers)).reshape(1, 64, WIDTH)
    want_sd = {**sd, "pos_embed": np.concatenate([big[:, :1], fitted], 1)}
    x = images(seed=13)
    np.testing.assert_allclose(outputs(model, x), reference.timm_forward(want_sd, x, heads=HEADS, eps=1e-6),
                               atol=2e-5, rtol=1e-4)
