"""Every model family we load, against the independent numpy forward (tests/reference.py):
ResNet hybrids, GAP and MAP heads, sincos2d position embeddings, big_vision's key layouts.

Files are written by the tests in each original layout, with random values at realistic scales
(GroupNorm scales, including the zero-initialised gn3 of a fresh init, are around 1)."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig, variant_config
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.checkpoints.registry import ALIASES, REGISTRY, get_entry

SMALL = dict(width=32, depth=3, heads=2, mlp_dim=64, num_classes=10)
FAMILIES = {
    "hybrid": ViTConfig(**SMALL, patch=1, image_size=64, resnet=(1, 2), resnet_width=32),  # 8 x 8 tokens
    "hybrid_root_only": ViTConfig(**SMALL, patch=2, image_size=64, resnet=(), resnet_width=32),
    "hybrid_gap": ViTConfig(**SMALL, patch=2, image_size=64, resnet=(), resnet_width=32, pool="gap"),
    "gap": ViTConfig(**SMALL, patch=4, image_size=32, pool="gap"),
    "gap_pre_logits": ViTConfig(**SMALL, patch=4, image_size=32, pool="gap", pre_logits=24),
    "map": ViTConfig(**SMALL, patch=4, image_size=32, pool="map"),
    "gap_sincos": ViTConfig(**SMALL, patch=4, image_size=32, pool="gap", posemb="sincos2d"),
    "tok_sincos": ViTConfig(**SMALL, patch=4, image_size=32, posemb="sincos2d"),
}

# Parameter counts of google-research/vision_transformer's models_test.py (1000 classes, 224 px).
GOOGLE_SIZES = {
    "R+ViT-Ti_16": (variant_config("Ti/8", resnet=()), 6_337_704),
    "R26+ViT-S_32": (variant_config("S/1", resnet=(2, 2, 2, 2)), 36_431_912),
    "R26+ViT-B_32": (variant_config("B/1", resnet=(2, 2, 2, 2)), 101_383_976),
    "R50+ViT-B_16": (variant_config("B/1", resnet=(3, 4, 9)), 98_659_112),
    "R50+ViT-L_32": (variant_config("L/1", resnet=(3, 4, 6, 3)), 328_994_856),
    "ViT-B_8": (variant_config("B/8"), 86_576_872),
    "ViT-H_14": (variant_config("H/14"), 632_045_800),
    "ViT-S_16-gap-norep": (variant_config("S/16", pool="gap"), 22_049_896),
    "ViT-B_16-gap-norep": (variant_config("B/16", pool="gap"), 86_566_120),
    "ViT-S_16": (variant_config("S/16"), 22_050_664),
}


def _images(config, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, config.image_size, config.image_size, 3)).astype(np.float32)


def _write(tmp_path, flat, name="c.npz"):
    np.savez(tmp_path / name, **flat)
    return tmp_path / name


@pytest.mark.parametrize("name", sorted(GOOGLE_SIZES))
def test_parameter_counts_equal_googles_table(name):
    config, size = GOOGLE_SIZES[name]
    assert sum(int(np.prod(s)) for s in checkpoint.expected_shapes(config).values()) == size


def test_token_grids_of_the_hybrids():
    assert get_entry("R50+ViT-B_16").config.grid == (24, 24)  # the fine-tune is at 384
    assert get_entry("vit_base_r50_s16_224_in21k_orig").config.grid == (14, 14)
    assert get_entry("R26+ViT-S_32").config.grid == (7, 7)
    assert get_entry("vit_small_r26_s32_384").config.grid == (12, 12)
    # R+Ti/16: the root alone downsamples 4x, then 8 x 8 patches: 7 x 7 tokens (50 with the class token,
    # which the parameter count above confirms).
    assert get_entry("R+ViT-Ti_16").config.grid == (7, 7)


# Every family dense and with ToMe; every method on one family of each kind (stem, no class token, MAP).
CASES = [(f, m) for f in sorted(FAMILIES) for m in ("none", "tome")] + \
    [(f, m) for f in ("hybrid", "gap", "map") for m in ("lgtm", "drop", "dfe")]


@pytest.mark.parametrize("family,method", CASES)
def test_family_matches_numpy(tmp_path, family, method):
    config = FAMILIES[family]
    flat = google_checkpoint(config)
    path = _write(tmp_path, flat)
    # config inferred from keys and shapes; a sincos2d file cannot say its resolution
    params, loaded = checkpoint.load(path, config if config.posemb == "sincos2d" else None)
    assert loaded == config
    opts = MergeOptions(method, 3, window=3) if method == "lgtm" else MergeOptions(method, 0 if method == "none" else 6)
    plan = make_plan(config, opts)
    images = _images(config)
    got = np.asarray(make_forward(loaded, plan)(params, images))
    want = reference.forward(flat, images, heads=config.heads, plan=reference.plan_ops(plan), pool=config.pool)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_gap_r0_is_dense_bit_for_bit_and_pools_by_size(tiny_config):
    config = FAMILIES["gap"]
    params = checkpoint.unflatten(google_checkpoint(config))
    images = _images(config)
    dense = make_forward(config)(params, images)
    np.testing.assert_array_equal(make_forward(config, make_plan(config, MergeOptions("tome", 0)))(params, images), dense)

    plan = make_plan(config, MergeOptions("tome", 8))
    head = params["head"]
    features = VisionTransformer(config.replace(num_classes=0), plan)
    feat_params = {k: v for k, v in params.items() if k != "head"}
    pooled, state = jax.jit(lambda p, x: features.apply({"params": p}, x, return_state=True))(feat_params, images)
    size = np.asarray(state.size)
    assert size.sum(1).tolist() == [64.0, 64.0] and size.max() > 1  # merged tokens hold several patches
    want = (np.asarray(state.x) * size[..., None]).sum(1) / size.sum(1, keepdims=True)
    np.testing.assert_allclose(pooled, want, atol=1e-6)
    logits = make_forward(config, plan)(params, images)
    np.testing.assert_allclose(logits, want @ head["kernel"] + head["bias"], atol=1e-5)


def test_no_class_token_protects_nothing():
    config = FAMILIES["gap"]
    plan = make_plan(config, MergeOptions("tome", 32))  # half of 64 tokens: every A token may merge
    assert plan.num_prefix == 0 and plan.ops[0].tokens_out == 32


def test_unpooled_tokens_and_sources_return_to_the_grid():
    config = FAMILIES["hybrid_gap"]
    params = checkpoint.unflatten(google_checkpoint(config))
    plan = make_plan(config, MergeOptions("tome", 8), track_source=True)
    model = VisionTransformer(config, plan)
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, return_state=True))(params, _images(config))
    assert state.x.shape == (2, plan.final_tokens, 32) and plan.final_tokens < 64
    source = np.asarray(state.source)
    assert source.shape == (2, plan.final_tokens, 64)  # 8 x 8 grid: 64 px, root stride 4, 2 x 2 patches
    np.testing.assert_array_equal(source.sum(1), 1)  # every patch in exactly one token
    np.testing.assert_array_equal(source.sum(2), state.size)


# ---------------------------------------------------------------- hybrid errors
def test_hybrid_missing_unit_names_the_key(tmp_path):
    flat = google_checkpoint(FAMILIES["hybrid"])
    flat = {k: v for k, v in flat.items() if not k.startswith("block2/unit2/")}
    flat.update({k.replace("block2/unit1/", "block2/unit3/"): v for k, v in flat.items() if k.startswith("block2/unit1/")})
    with pytest.raises(FastViTError, match=r"c.npz: missing key block2/unit2/conv1/kernel \(expected shape \(1, 1, 256, 64\)\)"):
        checkpoint.load(_write(tmp_path, flat))


def test_hybrid_wrong_stage_shape_names_both_shapes(tmp_path):
    flat = google_checkpoint(FAMILIES["hybrid"])
    flat["block2/unit1/conv2/kernel"] = np.zeros((3, 3, 32, 64), np.float32)
    with pytest.raises(FastViTError, match=r"key block2/unit1/conv2/kernel has shape \(3, 3, 32, 64\), expected \(3, 3, 64, 64\)"):
        checkpoint.load(_write(tmp_path, flat))
    with pytest.raises(FastViTError, match=r"key block1/unit1/conv1/kernel has shape \(1, 1, 32, 32\), expected \(1, 1, 64, 64\)"):
        checkpoint.load(_write(tmp_path, google_checkpoint(FAMILIES["hybrid"])), FAMILIES["hybrid"].replace(resnet_width=64))


# ---------------------------------------------------------------- big_vision layout
BV_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
            "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}


def big_vision_file(flat, depth, *, stacked=False, prefix="params/"):
    """Our-layout keys written the way big_vision's models/vit.py names them."""
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        if key == "Transformer/posembed_input/pos_embedding":
            out["pos_embedding"] = value[:, 1:] if "cls" in flat else value  # added before the class token
            continue
        if parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = BV_BLOCK[parts[2]]
        out["/".join(parts)] = value
    if stacked:
        blocks = {}
        for key in [k for k in out if k.startswith("Transformer/encoderblock_")]:
            i, rest = key.split("/", 2)[1].split("_")[1], key.split("/", 2)[2]
            blocks.setdefault(rest, {})[int(i)] = out.pop(key)
        for rest, per in blocks.items():
            out[f"Transformer/encoderblock/{rest}"] = np.stack([per[i] for i in range(depth)])
    return {prefix + k: v for k, v in out.items()}


def _as_big_vision(config, flat):
    """The same model's numbers as big_vision defines them: the class slot of posemb is zero."""
    if "cls" in flat and "Transformer/posembed_input/pos_embedding" in flat:
        pe = flat["Transformer/posembed_input/pos_embedding"].copy()
        pe[:, 0] = 0
        flat = {**flat, "Transformer/posembed_input/pos_embedding": pe}
    return flat


@pytest.mark.parametrize("family", ["gap_sincos", "map", "tok", "gap_pre_logits"])
@pytest.mark.parametrize("stacked", [False, True])
def test_big_vision_layout_matches_numpy(tmp_path, family, stacked):
    config = FAMILIES.get(family) or ViTConfig(**SMALL, patch=4, image_size=32)
    flat = _as_big_vision(config, google_checkpoint(config, seed=3))
    path = _write(tmp_path, big_vision_file(flat, config.depth, stacked=stacked))
    params, loaded = checkpoint.load(path, config if config.posemb == "sincos2d" else None)
    assert loaded == config
    images = _images(config)
    for opts in (MergeOptions(), MergeOptions("tome", 6)):
        plan = make_plan(config, opts)
        want = reference.forward(flat, images, heads=config.heads, plan=reference.plan_ops(plan), pool=config.pool)
        np.testing.assert_allclose(make_forward(loaded, plan)(params, images), want, atol=1e-4, rtol=1e-4)
    assert checkpoint.describe(path)["layout"] == "big_vision"


def test_stacked_and_unstacked_give_the_same_params(tmp_path):
    config = FAMILIES["map"]
    flat = google_checkpoint(config)
    a, _ = checkpoint.load(_write(tmp_path, big_vision_file(flat, 3), "a.npz"))
    b, _ = checkpoint.load(_write(tmp_path, big_vision_file(flat, 3, stacked=True), "b.npz"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_two_tower_file_gives_its_image_tower(tmp_path):
    config = FAMILIES["map"].replace(num_classes=0)
    flat = {k: v for k, v in google_checkpoint(config).items()}
    tower = big_vision_file(flat, 3, prefix="params/img/")
    tower.update({"params/txt/Embed_0/embedding": np.ones((5, 32), np.float32), "params/t": np.ones((1,), np.float32)})
    path = _write(tmp_path, tower)
    params, loaded = checkpoint.load(path)
    assert loaded == config and loaded.num_classes == 0
    feats = make_forward(loaded)(params, _images(config))
    want = reference.forward(flat, _images(config), heads=2, pool="map")
    np.testing.assert_allclose(feats, want, atol=1e-4)
    with pytest.raises(FastViTError, match=r"no image tower 'txt'; towers found: img"):
        checkpoint.load(path, tower="txt")
    both = {**tower, **{k.replace("/img/", "/img2/"): v for k, v in tower.items() if "/img/" in k}}
    with pytest.raises(FastViTError, match=r"several image towers \(img, img2\); choose one with --tower"):
        checkpoint.load(_write(tmp_path, both, "both.npz"))


def test_malformed_big_vision_files_get_one_line(tmp_path):
    config = FAMILIES["gap"]
    bv = big_vision_file(google_checkpoint(config), 3, stacked=True)
    bv["params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"] = np.zeros((2, 32, 64), np.float32)
    with pytest.raises(FastViTError, match=r"stacked key Transformer/encoderblock/MlpBlock_0/Dense_0/kernel has shape "
                                           r"\(2, 32, 64\), expected a leading depth of 3"):
        checkpoint.load(_write(tmp_path, bv))
    bv = big_vision_file(google_checkpoint(FAMILIES["map"]), 3)
    bv["params/cls"] = np.zeros((1, 1, 32), np.float32)
    with pytest.raises(FastViTError, match=r"both a class token \(cls \(1, 1, 32\)\) and an attention-pooling head"):
        checkpoint.load(_write(tmp_path, bv, "both.npz"))


def test_sincos_file_without_a_model_uses_224_and_says_so(tmp_path):
    path = _write(tmp_path, google_checkpoint(FAMILIES["gap_sincos"]))
    notes = []
    _, loaded = checkpoint.load(path, notes=notes)
    assert loaded == FAMILIES["gap_sincos"].replace(image_size=224)
    assert len(notes) == 1 and "does not store its resolution: using 224 px" in notes[0]


def test_sincos_matches_big_vision_formula():
    from fastvit_jax.models.vit import posemb_sincos_2d

    np.testing.assert_allclose(posemb_sincos_2d((3, 5), 16)[0], reference.sincos_2d(3, 5, 16), atol=1e-6)


# ---------------------------------------------------------------- registry, GFLOPs, CLI
def test_google_names_are_aliases():
    assert get_entry("ViT-B_16").name == "vit_base_patch16_384_orig"
    assert get_entry("imagenet21k/ViT-H_14").config.pre_logits == 1280
    assert get_entry("R26+ViT-S_32").config.resnet == (2, 2, 2, 2)
    stem = REGISTRY["vit_small_r26_s32_224"].filename.removesuffix(".npz")
    assert get_entry(stem).name == "vit_small_r26_s32_224"
    assert all(target in REGISTRY for target in ALIASES.values())
    assert REGISTRY["vit_base_patch16_224_gsam"].url.endswith("/vit_models/gsam/ViT-B_16.npz")


@pytest.mark.parametrize("family", ["hybrid", "map", "gap_sincos"])
def test_gflops_count_the_stem_and_heads_like_xla(family):
    from fastvit_jax.merge.flops import model_macs, xla_flops

    config = FAMILIES[family].replace(width=192, heads=3, mlp_dim=768)  # MACs dominate as in real models
    params = checkpoint.unflatten(google_checkpoint(config))
    for opts in (MergeOptions(), MergeOptions("tome", 6)):
        plan = make_plan(config, opts)
        xla = xla_flops(make_forward(config, plan), params, np.zeros((1, config.image_size, config.image_size, 3), np.float32)) / 2
        ours = model_macs(config, plan)
        assert abs(xla / ours["total"] - 1) < 0.05, (family, xla, ours)
    assert ("stem_conv" in ours) == (config.resnet is not None) and ("map_head" in ours) == (config.pool == "map")


def test_real_hybrid_gflops():
    r26 = get_entry("R26+ViT-S_32").config
    assert 3.4 < gflops(r26) < 3.6  # timm lists 3.5 GMACs for vit_small_r26_s32_224
    assert gflops(r26, make_plan(r26, MergeOptions("tome", 4))) < gflops(r26)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", ["hybrid", "gap", "map"])
def test_predict_infers_the_family_and_matches_numpy(tmp_path, capsys, family):
    config = FAMILIES[family].replace(num_classes=1000)
    flat = google_checkpoint(config)
    if family == "map":
        flat = big_vision_file(flat, config.depth)
    path = _write(tmp_path, flat)
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(img)
    code, out, err = _run(capsys, "predict", img, "--checkpoint", path, "--json")
    assert code == 0, err
    from fastvit_jax.data import Preprocess, load_image

    x = Preprocess("inception", config.image_size)(load_image(img))[None]
    ref_flat = checkpoint.flatten(checkpoint.read_params(path))
    probs = reference.softmax(reference.forward(ref_flat, x, heads=config.heads, pool=config.pool))[0]
    top = json.loads(out)[0]["top5"]
    np.testing.assert_allclose([t["prob"] for t in top], np.sort(probs)[::-1][:5], atol=1e-4)
    code, out, _ = _run(capsys, "inspect", path)
    assert code == 0 and f"family: {config.family}" in out


@pytest.mark.slow
def test_eval_with_tome_reports_fewer_gflops_on_every_family(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(imgs / f"n01440764_{i}.png")
    for family in ("hybrid", "map", "gap_sincos"):
        config = FAMILIES[family].replace(num_classes=1000)
        if config.posemb == "sincos2d":  # read at 224 px (the file cannot say): 16 x 16 patches as S/16
            config = config.replace(patch=16, image_size=224)
        path = _write(tmp_path, google_checkpoint(config), f"{family}.npz")
        res = {}
        for method in ("none", "tome"):
            code, out, err = _run(capsys, "eval", "--checkpoint", path, "--data", imgs, "--method", method, "--r", 4,
                                  "--json", "--no-progress")
            assert code == 0, err
            res[method] = json.loads(out)["gflops"]
        assert res["tome"] < res["none"], family


def test_embed_a_siglip_like_tower_dense_and_merged(tmp_path, capsys):
    config = FAMILIES["map"].replace(num_classes=0)
    flat = google_checkpoint(config)
    tower = big_vision_file(flat, config.depth, prefix="params/img/")
    tower["params/txt/Embed_0/embedding"] = np.ones((5, 32), np.float32)
    path = _write(tmp_path, tower)
    imgs = []
    for i in range(3):
        imgs.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(imgs[-1])
    from fastvit_jax.data import Preprocess, load_image

    x = np.stack([Preprocess("inception", 32)(load_image(p)) for p in imgs])
    for method, r in (("none", 0), ("tome", 6)):
        out = tmp_path / f"{method}.npz"
        code, _, err = _run(capsys, "embed", *imgs, "--checkpoint", path, "--method", method, "--r", r, "--tokens",
                            "--out", out, "--batch-size", 2)
        assert code == 0, err
        got = np.load(out)
        plan = make_plan(config, MergeOptions(method, r))
        want = reference.forward(flat, x, heads=2, pool="map", plan=reference.plan_ops(plan))
        np.testing.assert_allclose(got["features"], want, atol=1e-4)
        assert got["paths"].tolist() == [str(p) for p in imgs]
        assert got["tokens"].shape == (3, plan.final_tokens, 32)
        np.testing.assert_array_equal(got["sources"].sum(1), 1)
    code, _, err = _run(capsys, "predict", imgs[0], "--checkpoint", path)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("fastvit: error: ") and "has no classification head (an image tower)" in last
    assert "fastvit embed" in last and "Traceback" not in err
