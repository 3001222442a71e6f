"""Painted regions are exactly the tracked sources."""

import json

import numpy as np

from conftest import TINY, google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.checkpoints.registry import asset_path
from fastvit_jax.studies.visualize import final_sources, paint, region_stats, token_map


def test_paint_uses_source_regions():
    rng = np.random.default_rng(0)
    params = checkpoint.unflatten(google_checkpoint(TINY))
    x = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    plan = make_plan(TINY, MergeOptions("lgtm", 6, window=3))
    source = final_sources(TINY, plan, params, x)
    assert source.shape == (plan.final_tokens, 64)
    ids = token_map(source, TINY.grid)
    rgb = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
    painted = paint(rgb, ids, TINY.patch, border=False)
    for t in range(1, source.shape[0]):  # token 0 is cls: it holds no patch
        patches = np.flatnonzero(source[t])
        assert len(patches) and (ids.ravel()[patches] == t).all()
        mask = np.zeros((8, 8), bool)
        mask.ravel()[patches] = True
        pix = np.kron(mask, np.ones((4, 4), bool))
        np.testing.assert_array_equal(painted[pix], np.broadcast_to(rgb[pix].mean(0).round(), painted[pix].shape))


def test_visualize_cli_384(tmp_path, capsys):
    """A 384px model (24 x 24 grid) through the CLI; lgtm and tome side by side."""
    from fastvit_jax.config import ViTConfig

    cfg = ViTConfig(width=16, depth=2, heads=2, mlp_dim=16, patch=16, image_size=384, num_classes=1000)
    np.savez(tmp_path / "m.npz", **google_checkpoint(cfg))
    img = sorted(asset_path("images").iterdir())[0]
    code = main(["visualize", str(img), "--checkpoint", str(tmp_path / "m.npz"), "--method", "lgtm", "--r", "20",
                 "--window", "8", "--compare", "--out", str(tmp_path / "v.png"), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and (tmp_path / "v.png").stat().st_size > 1000
    assert res["regions"]["tome"]["tokens"] == 576 - 40 and set(res["regions"]) == {"tome", "lgtm"}
    code = main(["visualize", str(img), "--checkpoint", str(tmp_path / "m.npz"), "--method", "lgtm", "--r", "20",
                 "--window", "8", "--compare", "--out", str(tmp_path / "w.png")])
    out = capsys.readouterr().out
    assert code == 0 and "connected_share = share of those" in out and "not the same cost" in out


def test_region_stats_by_hand():
    """Token 1 is an L (connected, extent 3), token 2 two separate cells (extent 4), token 3 a singleton."""
    ids = np.array([[1, 1, 0, 2],
                    [1, 0, 0, 0],
                    [1, 0, 3, 0],
                    [0, 0, 0, 2]])
    stats = region_stats(ids)
    # multi-patch tokens: 0 (connected, spans 4), 1 (connected, spans 3), 2 (split, spans 4)
    assert stats == {"tokens": 4, "merged_tokens": 3, "connected_share": 2 / 3, "mean_extent": (4 + 3 + 4) / 3}


def test_cifar_colours_are_the_input_pixels(tmp_path, capsys):
    """The `crop` family (pixels in [-1, 1], center 28 of 32): the input panel is the image's own pixels."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cifar.png")
    code = main(["visualize", str(tmp_path / "cifar.png"), "--model", "vit_cifar_adamw", "--method", "tome",
                 "--r", "8", "--out", str(tmp_path / "v.png"), "--json"])
    assert code == 0
    panel = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))[22:22 + 28, 8:8 + 28]
    np.testing.assert_array_equal(panel, rgb[2:30, 2:30])
