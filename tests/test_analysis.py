"""Analysis numbers against direct numpy computations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, google_checkpoint
from fastvit_jax.studies import analysis
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import build_parser, main
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.checkpoints.registry import asset_path


def test_mean_pairwise_cosine_by_loops():
    h = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    want = np.mean([h[i] @ h[j] / np.linalg.norm(h[i]) / np.linalg.norm(h[j])
                    for i in range(5) for j in range(5) if i != j])
    np.testing.assert_allclose(analysis.mean_pairwise_cosine(jnp.asarray(h)), want, rtol=1e-5)


@pytest.mark.slow
def test_block_statistics_match_intermediates():
    params = checkpoint.unflatten(google_checkpoint(TINY))
    images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    plan = make_plan(TINY, MergeOptions("tome", 5))
    stats = analysis.block_statistics(TINY, params, images, plan)
    model = VisionTransformer(TINY, plan)
    _, inter = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(params, images)
    blk = inter["intermediates"]["Transformer"]["encoderblock_2"]
    x = np.asarray(blk["x_post"][0])  # (3, n, d) tokens after attention, before merging
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    n = x.shape[1]
    want = np.mean([(u[b] @ u[b].T - np.eye(n)).sum() / (n * (n - 1)) for b in range(3)])
    np.testing.assert_allclose(stats["x_post"][2], want, rtol=1e-4)
    assert all(m is not None and -1 <= m <= 1 for m in stats["merged"])
    assert analysis.block_statistics(TINY, params, images, None)["merged"] == [None] * TINY.depth


def test_posemb_similarity():
    params = checkpoint.unflatten(google_checkpoint(TINY))
    maps = analysis.posemb_similarity(params, TINY, [(1, 2)])
    pe = params["Transformer"]["posembed_input"]["pos_embedding"][0, 1:]
    ref = pe[1 * 8 + 2]
    want = pe @ ref / np.linalg.norm(pe, axis=-1) / np.linalg.norm(ref)
    np.testing.assert_allclose(maps[(1, 2)].ravel(), want, rtol=1e-5)
    assert abs(maps[(1, 2)][1, 2] - 1) < 1e-6


def test_posemb_similarity_without_class_token_and_for_sincos():
    gap = TINY.replace(pool="gap")
    params = checkpoint.unflatten(google_checkpoint(gap))
    pe = params["Transformer"]["posembed_input"]["pos_embedding"][0]  # no class slot: all 64 are patches
    maps = analysis.posemb_similarity(params, gap, [(0, 0)])
    np.testing.assert_allclose(maps[(0, 0)].ravel(), pe @ pe[0] / np.linalg.norm(pe, axis=-1) / np.linalg.norm(pe[0]),
                               rtol=1e-5)
    sincos = analysis.posemb_similarity({}, TINY.replace(posemb="sincos2d"), [(3, 3)])[(3, 3)]
    assert sincos.shape == (8, 8) and abs(sincos[3, 3] - 1) < 1e-6 and sincos[3, 4] > sincos[3, 7]


@pytest.mark.slow
def test_analyze_cli(tmp_path, capsys):
    code = main(["analyze", "--data", str(asset_path("images")), "--num-images", "4", "--r-values", "8",
                 "--out", str(tmp_path), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and len(res["token_similarity"]["x_pre"]) == 12 and "tome r=8" in res["merged_similarity"]
    for f in ("analysis.json", "analysis.csv", "token_similarity.png", "merged_similarity.svg", "posemb_similarity.png"):
        assert (tmp_path / f).exists()
    code = main(["analyze", "--data", str(asset_path("images")), "--num-images", "2", "--r-values", "8", "--out",
                 str(tmp_path / "text")])
    out = capsys.readouterr().out
    assert code == 0 and "x_pre = the attention input" in out and "x_post = after the attention residual" in out
    help_text = build_parser()._subparsers._group_actions[0].choices["analyze"].format_help()
    assert "images analysed, spread over --data" in help_text and "folder for analysis.json" in help_text



def test_block_statistics_of_a_one_step_ahead_plan(tiny_config):
    """MCTF's blocks merge before their attention output; they report the same stages as any block."""
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    stats = analysis.block_statistics(tiny_config, params, images,
                                      make_plan(tiny_config, MergeOptions("mctf", 6, skip=1)))
    assert all(np.isfinite(v) for k in analysis.STAGES for v in stats[k])
    assert [m is not None for m in stats["merged"]] == [False, True, True, True]
