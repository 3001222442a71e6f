"""Same weights in timm (+ facebookresearch-style ToMe) and fastvit give the same top-5.

Skipped unless torch and timm are installed (they are not part of CI)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from conftest import google_checkpoint  # noqa: E402
from fastvit_jax.checkpoints import checkpoint  # noqa: E402
from fastvit_jax.config import variant_config  # noqa: E402
from fastvit_jax.models.forward import make_forward  # noqa: E402
from fastvit_jax.merge.options import MergeOptions  # noqa: E402
from fastvit_jax.merge.plan import make_plan  # noqa: E402


def peer_module():
    """benchmarks/timm_tome.py: the peer lives beside the benchmarks, outside the shipped package."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "timm_tome.py"
    spec = importlib.util.spec_from_file_location("timm_tome", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("r", [0, 8, 16])
def test_tome_matches_timm_peer(r):
    timm_tome = peer_module()

    config = variant_config("S/16")
    params = checkpoint.unflatten(google_checkpoint(config, seed=3))
    images = np.random.default_rng(0).uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
    peer = timm_tome.make_model("vit_small_patch16_224", r)
    timm_tome.load_google_params(peer, params)
    want = timm_tome.logits(peer, images)
    got = np.asarray(make_forward(config, make_plan(config, MergeOptions("tome", r)))(params, images))
    softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
    p_got, p_want = softmax(got), softmax(want)
    np.testing.assert_array_equal(np.argsort(-p_got, -1)[:, :5], np.argsort(-p_want, -1)[:, :5])
    np.testing.assert_allclose(p_got, p_want, atol=1e-3)


@pytest.mark.parametrize("r", [0, 8])
def test_hybrid_tome_matches_timm_peer(tmp_path, r):
    """R+ViT-Ti/16 in Google's layout, read by timm's own npz loader into vit_tiny_r_s16_p8_224 (its
    ResNet root included), with facebookresearch-style ToMe patched in (issue 15)."""
    from timm.models.vision_transformer import _load_weights

    timm_tome = peer_module()
    from fastvit_jax.checkpoints.registry import get_entry

    config = get_entry("vit_tiny_r_s16_p8_224").config
    flat = google_checkpoint(config, seed=4)
    path = tmp_path / "r_ti_16.npz"
    np.savez(path, **flat)
    params, loaded = checkpoint.load(path)
    assert loaded.resnet == () and loaded.grid == (7, 7)
    images = np.random.default_rng(1).uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    peer = timm_tome.make_model("vit_tiny_r_s16_p8_224", r)
    _load_weights(peer, str(path))
    want = timm_tome.logits(peer, images)
    got = np.asarray(make_forward(loaded, make_plan(loaded, MergeOptions("tome", r)))(params, images))
    softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
    np.testing.assert_array_equal(np.argsort(-softmax(got), -1)[:, :5], np.argsort(-softmax(want), -1)[:, :5])
    np.testing.assert_allclose(softmax(got), softmax(want), atol=1e-3)
