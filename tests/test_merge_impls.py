"""The two merge implementations ("gather": top_k/gather/scatter; "dense": comparisons and one-hot
matmuls) make the same merges with the same tie-breaking, and the dense one lowers for GPU/TPU with
no sort, scatter or gather. References: numpy's stable argsort, the gather implementation (itself
checked against the loop-based numpy reference in test_merge.py), and reference.forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge import bipartite, local, metrics, onehot
from fastvit_jax.merge.apply import global_merge
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import local_block, make_plan
from fastvit_jax.runtime import Runtime, resolve_merge_impl
from fastvit_jax.merge.state import TokenState, initial_state


def _groups(source):
    return [np.flatnonzero(row).tolist() for row in np.asarray(source)]


def _state(rng, n, sizes=True):
    x = rng.standard_normal((n, 5)).astype(np.float32)
    size = rng.integers(1, 4, n).astype(np.float32) if sizes else np.ones(n, np.float32)
    pos_sum = rng.integers(0, 9, (n, 2)).astype(np.float32) * size[:, None]
    return TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos_sum), jnp.eye(n, dtype=jnp.float32))


def _same_state(got, want, atol=1e-5):
    assert _groups(got.source) == _groups(want.source)  # the same tokens merged, in the same output order
    np.testing.assert_array_equal(got.size, want.size)
    np.testing.assert_array_equal(got.pos_sum, want.pos_sum)  # sums of integers: exact in both
    np.testing.assert_allclose(got.x, want.x, atol=atol)


# ---------------------------------------------------------------- ranks without sorting
@pytest.mark.parametrize("seed", range(4))
def test_ranks_equal_stable_argsort(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 4, 23).astype(np.float32)  # many ties
    v[[2, 7]] = -np.inf
    desc = np.empty(23, int)
    desc[np.argsort(-v, kind="stable")] = np.arange(23)
    np.testing.assert_array_equal(onehot.descending_rank(jnp.asarray(v)), desc)
    w = rng.integers(0, 3, 23).astype(np.float32)
    lex = np.empty(23, int)
    lex[np.lexsort((np.arange(23), w, v))] = np.arange(23)
    np.testing.assert_array_equal(onehot.lexicographic_rank(jnp.asarray(v), jnp.asarray(w)), lex)
    flags = rng.random(23) < 0.5
    np.testing.assert_array_equal(onehot.count_before(jnp.asarray(flags)), np.concatenate([[0], np.cumsum(flags)[:-1]]))


def test_grid_rank_is_grid_order():
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 6, (40, 2)).astype(np.float32) / rng.integers(1, 4, (40, 1))  # mean positions, ties
    for grid in [(5, 8), (7, 6), (40, 1)]:
        order = np.asarray(local.grid_order(jnp.asarray(pos), grid))
        np.testing.assert_array_equal(np.argsort(np.asarray(onehot.grid_rank(jnp.asarray(pos), grid))), order)


# ---------------------------------------------------------------- one merge step, both ways
@pytest.mark.parametrize("n,r,prefix,distill,ties", [
    (17, 5, 1, False, False), (16, 7, 1, False, True), (9, 4, 1, False, True), (30, 1, 0, False, False),
    (21, 10, 0, False, True), (12, 5, 2, True, False), (15, 6, 2, True, True), (6, 3, 0, False, True)])
def test_global_merge_same_both_ways(n, r, prefix, distill, ties):
    rng = np.random.default_rng(n * 7 + r)
    metric = (np.eye(4)[rng.integers(0, 3, n)] if ties else rng.standard_normal((n, 6))).astype(np.float32)
    state = _state(rng, n)
    r = min(r, bipartite.max_merges(n, prefix))
    want, want_scores = global_merge(state, jnp.asarray(metric), r=r, num_prefix=prefix, distill_token=distill)
    got, scores = onehot.global_merge(state, jnp.asarray(metric), r=r, num_prefix=prefix, distill_token=distill)
    _same_state(got, want)
    merged = np.asarray(scores) > -1.5
    assert merged.sum() == r
    np.testing.assert_allclose(np.sort(np.asarray(scores)[merged]), np.sort(np.asarray(want_scores)), atol=1e-6)


@pytest.mark.parametrize("n,r,prefix", [(17, 5, 1), (12, 11, 1), (9, 3, 0)])
def test_drop_same_both_ways(n, r, prefix):
    rng = np.random.default_rng(n + r)
    feature = np.round(rng.standard_normal((n, 3)), 0).astype(np.float32)  # tied norms
    state = _state(rng, n)
    want = metrics.drop_lowest_norm(state, jnp.asarray(feature), r=r, num_prefix=prefix)
    got = onehot.drop_lowest_norm(state, jnp.asarray(feature), r=r, num_prefix=prefix)
    _same_state(got, want, atol=0)  # a kept token is copied exactly


@pytest.mark.parametrize("m_tokens,patch_grid,window,r", [
    (196, (14, 14), 7, 13), (196, (14, 14), 5, 8), (49, (7, 7), 3, 1), (170, (14, 14), 8, 13), (30, (14, 14), 9, 4)])
@pytest.mark.parametrize("scattered", [False, True])
def test_local_merge_same_both_ways(m_tokens, patch_grid, window, r, scattered):
    """Windows that tile the grid and windows that need padding; tokens in grid order (the static
    partition of the first local block) and scattered (data-dependent order after earlier merges)."""
    if not scattered and m_tokens != patch_grid[0] * patch_grid[1]:
        pytest.skip("fewer tokens than the grid only happens after merges")
    rng = np.random.default_rng(m_tokens + window)
    batch, n = 2, m_tokens + 1
    if scattered:
        states = [_state(rng, n) for _ in range(batch)]
        state = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *states)
    else:
        state = initial_state(jnp.asarray(rng.standard_normal((batch, n, 5)).astype(np.float32)), patch_grid, 1, True)
    metric = jnp.asarray(rng.standard_normal((batch, n, 6)).astype(np.float32))
    op, _ = local_block(n, 1, patch_grid, window, r)
    kw = dict(r=op.r, window=op.window, grid=op.grid, tokens_out=op.tokens_out, num_prefix=1)
    want, want_scores = local.local_merge(state, metric, **kw)
    got, scores = onehot.local_merge(state, metric, ordered=not scattered, **kw)
    for i in range(batch):
        _same_state(jax.tree_util.tree_map(lambda t: t[i], got), jax.tree_util.tree_map(lambda t: t[i], want))
    mean = lambda s: np.where(s > -1.5, s, 0).sum(-1) / np.maximum((s > -1.5).sum(-1), 1)  # apply_op's mean
    np.testing.assert_allclose(mean(np.asarray(scores)), mean(np.asarray(want_scores)), atol=1e-6)


# ---------------------------------------------------------------- whole models
@pytest.mark.parametrize("method,r,metric,kw", [
    ("dfe", 7, "v", {}), ("tome", 4, "x_pre", {"prop_attn": False}), ("drop", 5, "k", {}),
    ("lgtm", 6, "x_attn", {"window": 3, "skip": 1}), ("lgtm", 8, "k", {"window": 5}), ("tome", 3, "random", {})])
def test_dense_impl_model_matches_reference(tiny_config, method, r, metric, kw):
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    plan = make_plan(tiny_config, MergeOptions(method, r, metric=metric, **kw))
    images = np.random.default_rng(3).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    got = make_forward(tiny_config, plan, Runtime(merge_impl="dense"))(params, images)
    gathered = make_forward(tiny_config, plan, Runtime(merge_impl="gather"))(params, images)
    np.testing.assert_allclose(got, gathered, atol=2e-5, rtol=2e-5)
    if metric != "random":
        want = reference.forward(flat, images, heads=tiny_config.heads, plan=reference.plan_ops(plan),
                                 metric_name=metric, prop_attn=plan.prop_attn)
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.slow
def test_gap_model_with_odd_token_counts_same_both_ways():
    """No class token (nothing protected), 7 x 7 grid: odd token counts in every block."""
    config = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=4, image_size=28, num_classes=5, pool="gap")
    params = checkpoint.unflatten(google_checkpoint(config))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    for options in (MergeOptions("tome", 5), MergeOptions("lgtm", 4, window=3, skip=0)):
        plan = make_plan(config, options)
        np.testing.assert_allclose(make_forward(config, plan, Runtime(merge_impl="dense"))(params, images),
                                   make_forward(config, plan, Runtime(merge_impl="gather"))(params, images), atol=2e-5)


def test_r0_is_the_dense_model_bit_for_bit(tiny_config):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    dense = np.asarray(make_forward(tiny_config, None)(params, images))
    for impl in ("gather", "dense"):
        for options in (MergeOptions("tome", 0), MergeOptions("lgtm", 0), MergeOptions()):
            got = np.asarray(make_forward(tiny_config, make_plan(tiny_config, options), Runtime(merge_impl=impl))(params, images))
            np.testing.assert_array_equal(got, dense)


# ---------------------------------------------------------------- choosing, and what it compiles to
def test_auto_picks_by_backend():
    assert resolve_merge_impl("auto", "cpu") == resolve_merge_impl("auto", "gpu") == "gather"
    assert resolve_merge_impl("auto", "tpu") == "dense"
    assert resolve_merge_impl("gather", "tpu") == "gather"
    with pytest.raises(FastViTError, match="allowed: auto, gather, dense"):
        resolve_merge_impl("scatter")


@pytest.mark.parametrize("options", [MergeOptions("tome", 6), MergeOptions("lgtm", 6, window=3, skip=1),
                                     MergeOptions("drop", 4)])
def test_dense_impl_lowers_without_sort_scatter_gather(tiny_config, options):
    params = jax.eval_shape(lambda: checkpoint.unflatten(google_checkpoint(tiny_config)))
    images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    plan = make_plan(tiny_config, options)
    hazards = ("stablehlo.sort", "stablehlo.scatter", "stablehlo.gather", "chlo.top_k")
    for impl, expect_none in (("dense", True), ("gather", False)):
        fn = make_forward(tiny_config, plan, Runtime(examples_per_step=None, merge_impl=impl))
        text = export.export(fn, platforms=["cuda", "tpu"])(params, images).mlir_module()
        found = [h for h in hazards if h in text]
        assert (found == []) == expect_none, (impl, found)


@pytest.mark.slow
def test_cli_merge_impl(capsys):
    assert main(["bench", "--model", "vit_tiny_patch16_224", "--method", "tome", "--r", "8", "--runs", "1",
                 "--batch-size", "2", "--merge-impl", "dense", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"merge_impl": "dense"' in out
    assert main(["bench", "--merge-impl", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastvit: error:") and "fast" in err[0] and "dense" in err[0]
