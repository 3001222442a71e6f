"""Analytic MACs against the paper's numbers and XLA's own count of the compiled forward."""

import numpy as np
import pytest

from fastvit_jax.config import variant_config
from fastvit_jax.merge.flops import gflops, model_macs, xla_flops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.vit import init_params


def test_dense_gflops_as_in_the_paper():
    assert round(gflops(variant_config("S/16")), 1) == 4.6  # also DeiT-S
    assert round(gflops(variant_config("B/16")), 1) == 17.6
    assert round(gflops(variant_config("Ti/16")), 2) == 1.25


def test_tome_vit_b_r16():
    cfg = variant_config("B/16")
    plan = make_plan(cfg, MergeOptions("tome", 16))
    assert round(gflops(cfg, plan), 1) == 8.8  # ToMe paper: 8.78


def test_block_formula_by_hand():
    cfg = variant_config("S/16")
    n, d, m = 197, 384, 1536
    parts = model_macs(cfg)
    assert parts["qkv"] == 12 * 3 * n * d * d
    assert parts["attn"] == 12 * 2 * n * n * d
    assert parts["mlp"] == 12 * 2 * n * d * m
    assert parts["patch_embed"] == 196 * 16 * 16 * 3 * d
    assert parts["head"] == d * 1000


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "tome", "lgtm", "drop"])
def test_matches_xla_cost_analysis(method):
    cfg = variant_config("Ti/16")
    params = init_params(cfg)
    plan = make_plan(cfg, MergeOptions(method, 8))
    xla = xla_flops(make_forward(cfg, plan), params, np.zeros((1, 224, 224, 3), np.float32)) / 2
    ours = model_macs(cfg, plan)["total"]
    assert abs(xla / ours - 1) < 0.03, (xla, ours)


def test_text_tower_gflops_match_xla():
    import jax
    import jax.numpy as jnp

    from fastvit_jax.merge.flops import text_gflops
    from fastvit_jax.models.text import TextConfig, TextTransformer, init_text_params

    for pool in ("last", "map"):
        cfg = TextConfig(vocab_size=500, width=64, depth=2, heads=4, mlp_dim=256, max_len=16, embed_dim=48, pool=pool)
        params = init_text_params(cfg)
        fn = jax.jit(lambda p, t, cfg=cfg: TextTransformer(cfg).apply({"params": p}, t))
        xla = xla_flops(fn, params, jnp.zeros((1, 16), jnp.int32)) / 2
        assert abs(xla / (text_gflops(cfg) * 1e9) - 1) < 0.05, (pool, xla, text_gflops(cfg) * 1e9)
