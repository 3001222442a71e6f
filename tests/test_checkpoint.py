"""Loading, inference, resizing, saving and converting checkpoints; every bad input's error."""

import math

import numpy as np
import pytest

from conftest import google_checkpoint
from checkpoints_convert import timm_vit
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.forward import make_forward
from fastvit_jax.checkpoints.registry import REGISTRY


def _write(tmp_path, flat, name="c.npz"):
    np.savez(tmp_path / name, **flat)
    return tmp_path / name


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_infer_config_for_every_registry_entry(name):
    cfg = REGISTRY[name].config
    shapes = checkpoint.expected_shapes(cfg)
    # zero-stride views: real shapes without allocating ViT-L
    params = checkpoint.unflatten({k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()})
    # shapes say the grid; a resolution the VALID patch convolution cuts (So400m/14 at 384 px: 27 x 14 =
    # 378) comes from the entry, which a file with the official name finds (test_zero_shot)
    assert checkpoint.infer_config(params, gelu=cfg.gelu) == cfg.replace(image_size=cfg.grid[0] * cfg.stride)


def test_posemb_resize_matches_linear_interpolation():
    rng = np.random.default_rng(0)
    pe = rng.standard_normal((1, 1 + 4 * 4, 3)).astype(np.float32)
    out = checkpoint.resize_posemb(pe, (7, 7))
    assert out.shape == (1, 50, 3)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])
    grid = pe[0, 1:].reshape(4, 4, 3)

    def interp(y, x):  # align-corners bilinear, written directly
        y0, x0 = min(int(y), 2), min(int(x), 2)
        dy, dx = y - y0, x - x0
        return ((1 - dy) * (1 - dx) * grid[y0, x0] + (1 - dy) * dx * grid[y0, x0 + 1]
                + dy * (1 - dx) * grid[y0 + 1, x0] + dy * dx * grid[y0 + 1, x0 + 1])

    want = np.array([interp(i * 3 / 6, j * 3 / 6) for i in range(7) for j in range(7)])
    np.testing.assert_allclose(out[0, 1:], want, atol=1e-5)


def test_load_resizes_posemb_for_new_resolution(tmp_path, tiny_config):
    path = _write(tmp_path, google_checkpoint(tiny_config))
    params, cfg = checkpoint.load(path, tiny_config.replace(image_size=48))
    assert cfg.grid == (12, 12)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 145, 32)
    assert make_forward(cfg)(params, np.zeros((1, 48, 48, 3), np.float32)).shape == (1, 10)


def test_wrong_model_names_first_mismatching_key(tmp_path, tiny_config):
    path = _write(tmp_path, google_checkpoint(tiny_config))
    with pytest.raises(FastViTError, match=r"c.npz: key Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias has shape \(64,\), expected \(128,\)"):
        checkpoint.load(path, tiny_config.replace(mlp_dim=128))
    with pytest.raises(FastViTError, match=r"head/bias has shape \(10,\), expected \(1000,\)|head/kernel"):
        checkpoint.load(path, tiny_config.replace(num_classes=1000))
    with pytest.raises(FastViTError, match="missing key Transformer/encoderblock_4"):
        checkpoint.load(path, tiny_config.replace(depth=5))


def test_truncated_and_missing_files(tmp_path, tiny_config):
    path = _write(tmp_path, google_checkpoint(tiny_config))
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastViTError, match=r"truncated.npz: not a readable .npz"):
        checkpoint.load(bad)
    with pytest.raises(FastViTError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    with pytest.raises(FastViTError, match="junk.npz"):
        checkpoint.load(junk)


def test_not_a_vit(tmp_path):
    path = _write(tmp_path, {"foo/kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(FastViTError, match="no known ViT layout .* foo/kernel"):
        checkpoint.load(path)


def test_npz_and_orbax_round_trip(tmp_path, tiny_config):
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    checkpoint.save_npz(params, tmp_path / "a.npz")
    checkpoint.save_orbax(params, tmp_path / "orbax")
    for p in (tmp_path / "a.npz", tmp_path / "orbax"):
        back, cfg = checkpoint.load(p)
        assert cfg == tiny_config
        for k, v in checkpoint.flatten(back).items():
            np.testing.assert_array_equal(v, flat[k])


def test_prefixed_keys_are_accepted(tmp_path, tiny_config):
    flat = {f"params/{k}": v for k, v in google_checkpoint(tiny_config).items()}
    _, cfg = checkpoint.load(_write(tmp_path, flat))
    assert cfg == tiny_config


def test_download_failure_names_url_and_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/vit_models/augreg/nothing.npz"
    with pytest.raises(FastViTError, match=rf"could not download {url} .*place it at {tmp_path}/vit_models/augreg/nothing.npz"):
        checkpoint.download(url, progress=False)
    assert not (tmp_path / "vit_models/augreg/nothing.npz").exists()


def test_same_file_names_in_different_folders_are_cached_apart():
    from fastvit_jax.checkpoints.registry import REGISTRY

    paths = [checkpoint.cache_path(e.url) for e in REGISTRY.values() if e.url]
    assert len(paths) == len(set(paths))
    assert checkpoint.cache_path(REGISTRY["vit_base_patch16_224_sam"].url).parts[-3:] == ("vit_models", "sam", "ViT-B_16.npz")


# ---------------------------------------------------------------- timm converter
def _timm_forward(sd, images, heads):
    """timm's ViT written on the timm state dict: NCHW conv, fused qkv, exact GELU, eps 1e-6."""
    from scipy.special import erf

    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    w = sd["patch_embed.proj.weight"]  # (D, 3, p, p)
    d, p = w.shape[0], w.shape[-1]
    x_nchw = images.transpose(0, 3, 1, 2).astype(np.float64)
    b, _, h, _ = x_nchw.shape
    g = h // p
    patches = x_nchw.reshape(b, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, 3 * p * p)
    x = patches @ w.reshape(d, -1).T + sd["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, d)), x], 1) + sd["pos_embed"]

    def ln(x, n):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * sd[n + ".weight"] + sd[n + ".bias"]

    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        pre = f"blocks.{i}."
        qkv = ln(x, pre + "norm1") @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"]
        qkv = qkv.reshape(b, -1, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv
        a = q @ k.transpose(0, 1, 3, 2) * (d // heads) ** -0.5
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
        x = x + o @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        y = ln(x, pre + "norm2") @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + erf(y / math.sqrt(2)))
        x = x + y @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        i += 1
    return ln(x, "norm")[:, 0] @ sd["head.weight"].T + sd["head.bias"]


def test_timm_conversion_matches_timm_forward(tmp_path, tiny_config):
    from safetensors.numpy import save_file

    cfg = tiny_config.replace(gelu="exact", width=192, heads=3, mlp_dim=96)
    sd = timm_vit.to_state_dict(checkpoint.unflatten(google_checkpoint(cfg)))
    assert "blocks.0.attn.qkv.weight" in sd and sd["blocks.0.attn.qkv.weight"].shape == (576, 192)
    save_file(sd, str(tmp_path / "m.safetensors"))
    params, loaded = checkpoint.load(tmp_path / "m.safetensors", cfg)
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(make_forward(loaded)(params, images), _timm_forward(sd, images, 3), atol=1e-4, rtol=1e-4)
    back = timm_vit.to_state_dict(params)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v)


def test_timm_errors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"cls_token": np.zeros((1, 1, 192), np.float32), "dist_token": np.zeros((1, 1, 192), np.float32)},
              str(tmp_path / "d.safetensors"))
    with pytest.raises(FastViTError, match="d.safetensors: not a timm ViT state dict: missing key patch_embed"):
        timm_vit.convert_file(tmp_path / "d.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(FastViTError, match="bad.safetensors: not a readable"):
        timm_vit.convert_file(tmp_path / "bad.safetensors")
