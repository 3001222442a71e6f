"""Checkpoints as users download them (issue 25), each written here in its original key layout and
dtype with random values at realistic scales, loaded with no --model, against the independent numpy
forward (tests/reference.py): transformers ViT folders (safetensors, Flax msgpack), SigLIP vision
towers, timm folders with their pretrained_cfg, distilled DeiT, Google's hybrids with (1, 1, 1, C)
GroupNorm leaves, bfloat16 npz files, one tower of a two-tower file, and every refusal in one line.

The test writers below are the inverse mappings, written from the original layouts' documentation
(transformers' modeling_vit / modeling_siglip names, timm's VisionTransformer), not from our readers.
"""

import json

import ml_dtypes
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.forward import make_forward
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan

CFG = ViTConfig(width=32, depth=3, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=10)
ATT = "Transformer/encoderblock_{}/MultiHeadDotProductAttention_1/"


def _images(n=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _linear(kernel, bias):
    return kernel.reshape(kernel.shape[0], -1).T.copy(), bias.reshape(-1).copy()


def hf_vit(flat, depth, prefix="vit."):
    """Our flat Google tree -> transformers' ViTForImageClassification state dict."""
    sd, e = {}, prefix + "embeddings."
    sd[e + "cls_token"] = flat["cls"]
    sd[e + "position_embeddings"] = flat["Transformer/posembed_input/pos_embedding"]
    sd[e + "patch_embeddings.projection.weight"] = flat["embedding/kernel"].transpose(3, 2, 0, 1).copy()
    sd[e + "patch_embeddings.projection.bias"] = flat["embedding/bias"]
    for i in range(depth):
        b, a, blk = f"{prefix}encoder.layer.{i}.", ATT.format(i), f"Transformer/encoderblock_{i}/"
        for n in ("query", "key", "value"):
            sd[b + f"attention.attention.{n}.weight"], sd[b + f"attention.attention.{n}.bias"] = \
                _linear(flat[a + n + "/kernel"], flat[a + n + "/bias"])
        w = flat[a + "out/kernel"]
        sd[b + "attention.output.dense.weight"] = w.reshape(-1, w.shape[-1]).T.copy()
        sd[b + "attention.output.dense.bias"] = flat[a + "out/bias"]
        for ours, theirs in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
            sd[b + theirs + ".weight"], sd[b + theirs + ".bias"] = flat[blk + ours + "/scale"], flat[blk + ours + "/bias"]
        for ours, theirs in (("Dense_0", "intermediate.dense"), ("Dense_1", "output.dense")):
            sd[b + theirs + ".weight"] = flat[blk + f"MlpBlock_3/{ours}/kernel"].T.copy()
            sd[b + theirs + ".bias"] = flat[blk + f"MlpBlock_3/{ours}/bias"]
    sd[prefix + "layernorm.weight"] = flat["Transformer/encoder_norm/scale"]
    sd[prefix + "layernorm.bias"] = flat["Transformer/encoder_norm/bias"]
    if "head/kernel" in flat:
        sd["classifier.weight"], sd["classifier.bias"] = flat["head/kernel"].T.copy(), flat["head/bias"]
    return sd


HF_CONFIG = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 32,
             "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64, "hidden_act": "gelu",
             "layer_norm_eps": 1e-12, "image_size": 32, "patch_size": 4, "num_channels": 3, "qkv_bias": True,
             "id2label": {str(i): f"class{i}" for i in range(10)}}
HF_PRE = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
          "image_std": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor"}


def _folder(path, files: dict, config=HF_CONFIG, pre=HF_PRE):
    path.mkdir(parents=True, exist_ok=True)
    for name, sd in files.items():
        save_file(sd, str(path / name))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if pre is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(pre))
    return path


def _forward(params, config, images, plan=None):
    return np.asarray(make_forward(config, plan or make_plan(config))(params, images))


def test_transformers_vit_folder_matches_the_reference(tmp_path):
    flat = google_checkpoint(CFG, seed=3)
    folder = _folder(tmp_path / "hf", {"model.safetensors": hf_vit(flat, 3)})
    notes = []
    params, config, pre = load_model(path=folder, notes=notes)
    assert (config.gelu, config.ln_eps, config.num_classes, notes) == ("exact", 1e-12, 10, [])
    assert (pre.family, pre.interpolation, pre.mean, pre.std, pre.size) == \
        ("inception", "bilinear", (0.5,) * 3, (0.5,) * 3, 32)
    images = _images()
    want = reference.forward(flat, images, heads=2, gelu_exact=True, eps=1e-12)
    np.testing.assert_allclose(_forward(params, config, images), want, atol=2e-4, rtol=1e-4)
    # the same weights as a single file inside the folder, and as ViTModel (no prefix, a tanh pooler)
    assert checkpoint.load(folder / "model.safetensors")[1] == config
    model = hf_vit(flat, 3, prefix="")
    model.pop("classifier.weight"), model.pop("classifier.bias")
    rng = np.random.default_rng(0)
    model["pooler.dense.weight"] = (rng.standard_normal((32, 32)) / 6).astype(np.float32)
    model["pooler.dense.bias"] = (0.02 * rng.standard_normal(32)).astype(np.float32)
    params, config = checkpoint.load(_folder(tmp_path / "vitmodel", {"model.safetensors": model}))
    assert (config.num_classes, config.pre_logits) == (0, 32)


def test_transformers_flax_msgpack_is_the_same_model(tmp_path):
    from flax import serialization

    flat = google_checkpoint(CFG, seed=4)
    sd = hf_vit(flat, 3)
    tree = {}
    for key, value in sd.items():  # transformers' Flax names: kernel (in, out) / HWIO, LayerNorm scale
        *path, leaf = key.split(".")
        if leaf == "weight":
            is_norm = path[-1].startswith("layernorm")
            leaf = "scale" if is_norm else "kernel"
            value = value if is_norm else value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(value)
    folder = _folder(tmp_path / "flax", {})
    (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    params, config = checkpoint.load(folder)
    images = _images()
    want = reference.forward(flat, images, heads=2, gelu_exact=True, eps=1e-12)
    np.testing.assert_allclose(_forward(params, config, images), want, atol=2e-4, rtol=1e-4)


def hf_siglip_vision(flat, depth):
    """Our flat tree of a MAP-head tower -> a transformers SiglipModel's vision_model.* state dict."""
    v, sd = "vision_model.", {}
    sd[v + "embeddings.patch_embedding.weight"] = flat["embedding/kernel"].transpose(3, 2, 0, 1).copy()
    sd[v + "embeddings.patch_embedding.bias"] = flat["embedding/bias"]
    sd[v + "embeddings.position_embedding.weight"] = flat["Transformer/posembed_input/pos_embedding"][0]
    for i in range(depth):
        b, a, blk = f"{v}encoder.layers.{i}.", ATT.format(i), f"Transformer/encoderblock_{i}/"
        for n, t in (("query", "q"), ("key", "k"), ("value", "v")):
            sd[b + f"self_attn.{t}_proj.weight"], sd[b + f"self_attn.{t}_proj.bias"] = \
                _linear(flat[a + n + "/kernel"], flat[a + n + "/bias"])
        sd[b + "self_attn.out_proj.weight"] = flat[a + "out/kernel"].reshape(-1, 32).T.copy()
        sd[b + "self_attn.out_proj.bias"] = flat[a + "out/bias"]
        for ours, theirs in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_2", "layer_norm2")):
            sd[b + theirs + ".weight"], sd[b + theirs + ".bias"] = flat[blk + ours + "/scale"], flat[blk + ours + "/bias"]
        for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[b + f"mlp.{theirs}.weight"] = flat[blk + f"MlpBlock_3/{ours}/kernel"].T.copy()
            sd[b + f"mlp.{theirs}.bias"] = flat[blk + f"MlpBlock_3/{ours}/bias"]
    sd[v + "post_layernorm.weight"] = flat["Transformer/encoder_norm/scale"]
    sd[v + "post_layernorm.bias"] = flat["Transformer/encoder_norm/bias"]
    m, h = "MAPHead_0/", v + "head."
    sd[h + "probe"] = flat[m + "probe"]
    qkv = [_linear(flat[m + f"MultiHeadDotProductAttention_0/{n}/kernel"], flat[m + f"MultiHeadDotProductAttention_0/{n}/bias"])
           for n in ("query", "key", "value")]
    sd[h + "attention.in_proj_weight"] = np.concatenate([w for w, _ in qkv])
    sd[h + "attention.in_proj_bias"] = np.concatenate([b for _, b in qkv])
    sd[h + "attention.out_proj.weight"] = flat[m + "MultiHeadDotProductAttention_0/out/kernel"].reshape(-1, 32).T.copy()
    sd[h + "attention.out_proj.bias"] = flat[m + "MultiHeadDotProductAttention_0/out/bias"]
    sd[h + "layernorm.weight"], sd[h + "layernorm.bias"] = flat[m + "LayerNorm_0/scale"], flat[m + "LayerNorm_0/bias"]
    for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        sd[h + f"mlp.{theirs}.weight"] = flat[m + f"MlpBlock_0/{ours}/kernel"].T.copy()
        sd[h + f"mlp.{theirs}.bias"] = flat[m + f"MlpBlock_0/{ours}/bias"]
    return sd


def test_siglip_vision_tower_of_a_siglip_model(tmp_path):
    """transformers' SiglipModel: the vision half (MAP head) is read, the text half left alone."""
    cfg = ViTConfig(width=32, depth=2, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=0, pool="map")
    flat = google_checkpoint(cfg, seed=5)
    sd = hf_siglip_vision(flat, 2)
    sd["text_model.embeddings.token_embedding.weight"] = np.ones((7, 32), np.float32)
    sd["logit_scale"], sd["logit_bias"] = np.ones(1, np.float32), np.zeros(1, np.float32)
    config = {"model_type": "siglip", "vision_config": {"hidden_size": 32, "num_attention_heads": 2,
                                                       "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                                                       "image_size": 32, "patch_size": 4}}
    pre = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    folder = _folder(tmp_path / "siglip", {"model.safetensors": sd}, config, pre)
    params, config, pre = load_model(path=folder)
    assert (config.pool, config.gelu, pre.interpolation) == ("map", "tanh", "bicubic")
    images = _images()
    want = reference.forward(flat, images, heads=2, pool="map", features=True)
    from fastvit_jax.studies.embed import embed

    np.testing.assert_allclose(embed(config, params, images)["features"], want, atol=2e-4, rtol=1e-4)


def _timm(flat, cfg):
    from checkpoints_convert.timm_vit import to_state_dict

    return to_state_dict(checkpoint.unflatten(flat))


def test_timm_folder_says_its_preprocessing(tmp_path):
    """A timm AugReg folder's pretrained_cfg (mean = std = 0.5, bicubic, crop 0.9) is what runs;
    the same file without its config.json gets a note naming every assumed field."""
    flat = google_checkpoint(CFG, seed=6)
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "num_features": 32,
              "model_args": {"num_heads": 2},
              "pretrained_cfg": {"tag": "augreg_in21k_ft_in1k", "input_size": [3, 32, 32], "interpolation": "bicubic",
                                 "crop_pct": 0.9, "crop_mode": "center", "mean": [0.5, 0.5, 0.5],
                                 "std": [0.5, 0.5, 0.5], "num_classes": 10}}
    folder = _folder(tmp_path / "timm", {"model.safetensors": _timm(flat, CFG)}, config, None)
    notes = []
    params, cfg, pre = load_model(path=folder, notes=notes)
    assert notes == [] and (cfg.gelu, pre.family, pre.mean, pre.std, pre.interpolation, pre.crop_pct) == \
        ("exact", "deit", (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9)
    images = _images()
    np.testing.assert_allclose(_forward(params, cfg, images),
                               reference.forward(flat, images, heads=2, gelu_exact=True), atol=2e-4, rtol=1e-4)
    bare = tmp_path / "bare.safetensors"
    save_file(_timm(google_checkpoint(variant_cfg := CFG.replace(width=192, heads=3), seed=7), variant_cfg),
              str(bare))
    notes = []
    _, _, pre = load_model(path=bare, notes=notes)
    assert pre.family == "deit" and len(notes) == 1 and "does not state its family, mean, std" in notes[0]
    bad = dict(config, num_classes=7)
    _folder(tmp_path / "timm_bad", {"model.safetensors": _timm(flat, CFG)}, bad, None)
    with pytest.raises(FastViTError, match="num_classes 7 but the head has 10"):
        load_model(path=tmp_path / "timm_bad")


def test_distilled_deit_matches_reference_dense_and_merged(tmp_path):
    cfg = CFG.replace(distilled=True, width=192, heads=3)  # a bare timm file: heads from DeiT's width table
    flat = google_checkpoint(cfg, seed=8)
    assert {"dist", "head_dist/kernel"} <= set(flat)
    path = tmp_path / "deit_distilled.safetensors"
    save_file(_timm(flat, cfg), str(path))
    params, config = checkpoint.load(path)
    assert config.distilled and config.num_prefix == 2 and config.gelu == "exact"
    images = _images()
    np.testing.assert_allclose(_forward(params, config, images),
                               reference.forward(flat, images, heads=3, gelu_exact=True), atol=2e-4, rtol=1e-4)
    plan = make_plan(config, MergeOptions("tome", r=6))
    assert plan.distill_token and plan.ops[0].tokens_out == 66 - 6
    want = reference.forward(flat, images, heads=3, gelu_exact=True, plan=reference.plan_ops(plan))
    np.testing.assert_allclose(_forward(params, config, images, plan), want, atol=2e-4, rtol=1e-4)


def test_google_hybrid_with_published_groupnorm_shapes(tmp_path):
    """vision_transformer's published hybrids store GroupNorm scale/bias as (1, 1, 1, C)."""
    cfg = ViTConfig(width=32, depth=2, heads=2, mlp_dim=64, patch=2, image_size=64, num_classes=10, resnet=(),
                    resnet_width=32)
    flat = google_checkpoint(cfg, seed=9)
    published = {k: v.reshape(1, 1, 1, -1) if "/gn" in "/" + k and k.endswith(("scale", "bias")) else v
                 for k, v in flat.items()}
    assert published["gn_root/scale"].shape == (1, 1, 1, 32)
    np.savez(tmp_path / "r.npz", **published)
    params, config = checkpoint.load(tmp_path / "r.npz")
    images = _images(size=64)
    np.testing.assert_allclose(_forward(params, config, images), reference.forward(flat, images, heads=2),
                               atol=2e-4, rtol=1e-4)


def test_bfloat16_npz_and_one_tower_of_two(tmp_path):
    """big_vision writes bf16 arrays (raw '|V2' in the npz); a two-tower file gives its image tower
    without reading the other tower (here a text member whose bytes are garbage)."""
    cfg = CFG.replace(pool="map", num_classes=0)
    flat = google_checkpoint(cfg, seed=10)
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()}
    np.savez(tmp_path / "bf16.npz", **bf16)
    with np.load(tmp_path / "bf16.npz") as z:
        assert z["embedding/kernel"].dtype.str == "|V2"  # as numpy stores them
    params, config = checkpoint.load(tmp_path / "bf16.npz")
    exact = {k: np.asarray(v, np.float32) for k, v in bf16.items()}
    images = _images()
    from fastvit_jax.studies.embed import embed

    want = reference.forward(exact, images, heads=2, pool="map", features=True)
    np.testing.assert_allclose(embed(config, params, images)["features"], want, atol=2e-4, rtol=1e-4)
    two = {f"params/img/{k}": v for k, v in bf16.items()}
    two["params/txt/Embed_0/embedding"] = np.ones((4, 32), np.float32)
    two["params/t"] = np.ones((1,), np.float32)
    np.savez(tmp_path / "two.npz", **two)
    import zipfile

    with zipfile.ZipFile(tmp_path / "two.npz") as z:  # corrupt the text member's data (stored, uncompressed)
        info = z.getinfo("params/txt/Embed_0/embedding.npy")
    raw = bytearray((tmp_path / "two.npz").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start:start + 10] = b"garbage!!!"
    (tmp_path / "two.npz").write_bytes(bytes(raw))
    params2, config2 = checkpoint.load(tmp_path / "two.npz")
    assert config2 == config
    np.testing.assert_array_equal(embed(config2, params2, images)["features"], embed(config, params, images)["features"])


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_files_get_one_line(tmp_path, capsys):
    flat = google_checkpoint(CFG, seed=11)
    sd = hf_vit(flat, 3)
    cases = {}
    cases["contradicting config.json"] = (
        _folder(tmp_path / "a", {"model.safetensors": sd}, dict(HF_CONFIG, hidden_size=64)), "hidden_size 64 contradicts")
    cases["LayerScale"] = (_folder(tmp_path / "b", {"model.safetensors": {
        **sd, "vit.encoder.layer.0.lambda1": np.ones(32, np.float32)}}), "key(s) this ViT does not have")
    cases["no config.json"] = (_folder(tmp_path / "c", {"model.safetensors": sd}, None, None), "needs its config.json")
    trunc = _folder(tmp_path / "d", {"model.safetensors": sd})
    (trunc / "model.safetensors").write_bytes((trunc / "model.safetensors").read_bytes()[:5000])
    cases["truncated"] = (trunc, "not a readable .safetensors file")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text("{not json")
    (tmp_path / "e" / "model.safetensors").write_bytes(b"")
    cases["bad json"] = (tmp_path / "e", "config.json: not valid JSON")
    cases["hidden_act"] = (_folder(tmp_path / "f", {"model.safetensors": sd}, dict(HF_CONFIG, hidden_act="relu")),
                           "hidden_act 'relu' is not supported")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    for what, (path, msg) in cases.items():
        code, out, err = run(capsys, "predict", str(img), "--checkpoint", str(path))
        assert code == 2 and msg in err and err.count("\n") == 1 and err.startswith("fastvit: error:"), (what, err)


def test_inspect_names_the_layout_and_sources(tmp_path, capsys):
    folder = _folder(tmp_path / "hf", {"model.safetensors": hf_vit(google_checkpoint(CFG), 3)})
    code, out, _ = run(capsys, "inspect", str(folder), "--json")
    d = json.loads(out)
    assert code == 0 and d["layout"] == "transformers" and d["config"]["ln_eps"] == 1e-12
    assert d["description"]["sources"]["ln_eps"] == "config.json layer_norm_eps"
    assert d["description"]["sources"]["mean"] == "preprocessor_config.json.image_mean"
    code, out, _ = run(capsys, "inspect", str(folder))
    assert "transformers layout" in out and "<- config.json hidden_act 'gelu'" in out


def test_convert_keeps_what_the_folder_said(tmp_path, capsys):
    """`fastvit convert FOLDER OUT.npz` writes the folder's description into OUT, so OUT loads the same
    model with the same preprocessing and no note."""
    flat = google_checkpoint(CFG, seed=12)
    folder = _folder(tmp_path / "hf", {"model.safetensors": hf_vit(flat, 3)})
    code, out, _ = run(capsys, "convert", str(folder), str(tmp_path / "out.npz"))
    assert code == 0 and "assumed" not in out
    notes = []
    p1, c1, pre1 = load_model(path=folder)
    p2, c2, pre2 = load_model(path=tmp_path / "out.npz", notes=notes)
    assert (c1, pre1, notes) == (c2, pre2, [])
    images = _images()
    np.testing.assert_array_equal(_forward(p1, c1, images), _forward(p2, c2, images))


def test_wrong_types_and_shapes_in_a_folder_are_one_line(tmp_path, capsys):
    """Config values of the wrong type, and arrays of the wrong shape for their key: exit 2, one line."""
    flat = google_checkpoint(CFG, seed=13)
    sd = hf_vit(flat, 3)
    cases = {
        "resample as a word": (_folder(tmp_path / "a", {"model.safetensors": sd}, HF_CONFIG, dict(HF_PRE, resample="bicubic")),
                               "not a readable transformers checkpoint: ValueError"),
        "mean not numbers": (_folder(tmp_path / "b", {"model.safetensors": sd}, HF_CONFIG,
                                     dict(HF_PRE, image_mean=["a", "b", "c"])), "not a readable transformers checkpoint"),
        "heads not a number": (_folder(tmp_path / "c", {"model.safetensors": sd}, dict(HF_CONFIG, num_attention_heads="x")),
                               "not a readable transformers checkpoint"),
        "query of the wrong shape": (_folder(tmp_path / "d", {"model.safetensors": {
            **sd, "vit.encoder.layer.0.attention.attention.query.weight": np.ones((32, 31), np.float32)}}),
            "query/kernel has shape (31, 2, 16), expected (32, 2, 16)"),
        "query that splits into no heads": (_folder(tmp_path / "e", {"model.safetensors": {
            **sd, "vit.encoder.layer.0.attention.attention.query.weight": np.ones((31, 32), np.float32)}}),
            "attention.query.bias has shape (32,), expected (31,)"),
    }
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    for what, (path, msg) in cases.items():
        code, _, err = run(capsys, "predict", str(img), "--checkpoint", str(path))
        assert code == 2 and msg in err and err.count("\n") == 1 and err.startswith("fastvit: error:"), (what, err)
    from fastvit_jax.data import Preprocess

    with pytest.raises(FastViTError, match="preprocessing mean must be 3 numbers, got 'abc'"):
        Preprocess(mean="abc")


def test_transformers_class_names_and_processor_config(tmp_path, capsys):
    """id2label names the outputs (predict prints them); transformers 5's processor_config.json (the
    image processor nested inside) is read like preprocessor_config.json; placeholders are not names."""
    import fastvit_jax as fv
    from fastvit_jax.cli import main

    flat = google_checkpoint(CFG, seed=3)
    pre = {**HF_PRE, "image_mean": [0.4, 0.5, 0.6], "resample": 3}
    folder = _folder(tmp_path / "hf5", {"model.safetensors": hf_vit(flat, 3)}, pre=None)
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": pre, "processor_class": "x"}))
    model = fv.load(folder)
    assert model.labels == [f"class{i}" for i in range(10)] and not model.notes
    assert (model.preprocessing.mean, model.preprocessing.interpolation) == ((0.4, 0.5, 0.6), "bicubic")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(folder), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top5"][0]
    assert top["label"] == f"class{top['index']}"
    placeholders = {**HF_CONFIG, "id2label": {str(i): f"LABEL_{i}" for i in range(10)}}
    assert fv.load(_folder(tmp_path / "plain", {"model.safetensors": hf_vit(flat, 3)}, config=placeholders)
                   ).class_names is None


def test_a_note_gives_each_reason_once(tmp_path):
    flat = google_checkpoint(CFG, seed=3)
    notes = []
    load_model(path=_folder(tmp_path / "nopre", {"model.safetensors": hf_vit(flat, 3)}, pre=None), notes=notes)
    assert len(notes) == 1 and notes[0].count("no preprocessor_config.json in the folder") == 1, notes
    assert "ViTImageProcessor's defaults, a square resize" in notes[0]
