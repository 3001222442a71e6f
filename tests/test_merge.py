"""Merging against the independent loop-based numpy reference, and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge import bipartite
from fastvit_jax.merge.local import local_merge, sort_grid
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.merge.state import TokenState, initial_state, merge_into
from fastvit_jax.models.vit import VisionTransformer


def _groups_from_source(source):
    return [sorted(np.flatnonzero(row).tolist()) for row in np.asarray(source)]


@pytest.mark.parametrize("n,r", [(17, 5), (16, 8), (9, 4), (30, 1), (11, 0)])
def test_bipartite_matches_reference(n, r):
    rng = np.random.default_rng(n * 31 + r)
    metric = rng.standard_normal((n, 6)).astype(np.float32)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    size = rng.integers(1, 4, n).astype(np.float32)
    pos = rng.uniform(0, 5, (n, 2)).astype(np.float32)
    r = min(r, bipartite.max_merges(n, 1))
    m = bipartite.match(jnp.asarray(metric), r, class_token=True)
    got = merge_into(TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos * size[:, None])),
                     *bipartite.token_indices(m, n))
    groups, scores = reference.bipartite_groups(metric, r)
    wx, ws, wp = reference.combine(groups, x.astype(np.float64), size.astype(np.float64), pos.astype(np.float64))
    np.testing.assert_allclose(got.x, wx, atol=1e-5)
    np.testing.assert_allclose(got.size, ws)
    np.testing.assert_allclose(np.asarray(got.pos_sum) / np.asarray(got.size)[:, None], wp, atol=1e-5)
    np.testing.assert_allclose(np.sort(np.asarray(m.score)), np.sort(scores), atol=1e-5)
    assert float(got.size[0]) == size[0] and np.allclose(got.x[0], x[0])  # cls untouched, first


@pytest.mark.parametrize("n,r", [(17, 5), (24, 11), (9, 4)])
def test_bipartite_ties_match_reference(n, r):
    """Repeated features (flat image regions) tie exactly; ties go to the lower index, as in the reference."""
    rng = np.random.default_rng(n + r)
    metric = np.eye(4, dtype=np.float32)[rng.integers(0, 3, n)]  # one-hot: every cosine exactly 0 or 1
    m = bipartite.match(jnp.asarray(metric), r, class_token=True)
    got = merge_into(TokenState(jnp.asarray(np.eye(n, dtype=np.float32)), jnp.ones(n), jnp.zeros((n, 2))),
                     *bipartite.token_indices(m, n))
    groups, _ = reference.bipartite_groups(metric, r)
    assert [np.flatnonzero(row).tolist() for row in np.asarray(got.x) > 0] == [sorted(g) for g in groups]


@pytest.mark.parametrize("r", [0, 1, 5, 12])
def test_split_top_is_a_stable_argsort_split(r):
    values = np.random.default_rng(r).integers(0, 4, 12).astype(np.float32)  # many ties
    values[3] = -np.inf
    top, rest = bipartite.split_top(jnp.asarray(values), r)
    order = np.argsort(-values, kind="stable")
    np.testing.assert_array_equal(top, order[:r])
    np.testing.assert_array_equal(rest, np.sort(order[r:]))


def test_distill_token_protected():
    rng = np.random.default_rng(0)
    metric = rng.standard_normal((12, 4)).astype(np.float32)
    metric[1] = metric[2]  # the distill token (B[0]) is the best partner of A[1]; it must not receive it
    m = bipartite.match(jnp.asarray(metric), 5, class_token=True, distill_token=True)
    assert 0 not in np.asarray(m.dst_idx) and 0 not in np.asarray(m.src_idx)
    src, dst, keep = map(np.asarray, bipartite.token_indices(m, 12, distill_token=True))
    assert keep[0] == 0 and keep[1] == 1  # cls then distill stay in front, unchanged
    assert not {0, 1} & set(src.tolist() + dst.tolist())
    assert sorted(keep.tolist() + src.tolist()) == list(range(12))


@pytest.mark.parametrize("m_tokens,grid_in,window,r", [(64, (8, 8), 3, 2), (64, (8, 8), 4, 3), (49, (7, 7), 3, 1),
                                                     (56, (8, 8), 5, 2)])
def test_local_matches_reference(m_tokens, grid_in, window, r):
    rng = np.random.default_rng(m_tokens + window)
    n = m_tokens + 1
    metric = rng.standard_normal((n, 8)).astype(np.float32)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    size = np.ones(n, np.float32)
    # scattered positions (as after earlier merges), cls first
    pos = np.concatenate([[[-1, -1]], rng.uniform(0, grid_in[0] - 1, (m_tokens, 2))]).astype(np.float32)
    grid = sort_grid(m_tokens, grid_in)
    groups = reference.local_groups(metric[1:], pos[1:], r, window, grid)
    out_n = 1 + len(groups)
    state = TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos), jnp.asarray(np.eye(n, dtype=np.float32)))
    state = jax.tree_util.tree_map(lambda t: t[None], state)  # a batch of one
    got, _ = local_merge(state, jnp.asarray(metric)[None], r=r, window=window, grid=grid, tokens_out=out_n, num_prefix=1)
    got = jax.tree_util.tree_map(lambda t: t[0], got)
    want_groups = [[0]] + [[t + 1 for t in g] for g in groups]
    assert [sorted(g) for g in want_groups] == _groups_from_source(got.source)
    wx, ws, _ = reference.combine(want_groups, x.astype(np.float64), size.astype(np.float64), pos.astype(np.float64))
    np.testing.assert_allclose(got.x, wx, atol=1e-5)
    np.testing.assert_allclose(got.size, ws)


@pytest.mark.parametrize("method,r,metric,kw", [
    ("tome", 6, "k", {}), ("tome", 5, "x_pre", {}), ("dfe", 7, "v", {}), ("tome", 4, "q", {"prop_attn": False}),
    ("lgtm", 4, "k", {"window": 3}), ("lgtm", 6, "x_attn", {"window": 3, "skip": 1}), ("drop", 5, "k", {}),
    ("drop", 3, "x_pre", {}),
])
def test_merged_model_matches_reference(tiny_config, method, r, metric, kw):
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    plan = make_plan(tiny_config, MergeOptions(method, r, metric=metric, **kw))
    images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = make_forward(tiny_config, plan)(params, images)
    want = reference.forward(flat, images, heads=tiny_config.heads, plan=reference.plan_ops(plan),
                             metric_name=metric, prop_attn=plan.prop_attn)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("method", ["tome", "lgtm", "drop"])
def test_examples_merge_independently(tiny_config, method):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    plan = make_plan(tiny_config, MergeOptions(method, 6, window=3))
    images = np.random.default_rng(4).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    fwd = make_forward(tiny_config, plan)
    batch = np.asarray(fwd(params, images))
    other = images.copy()
    other[1:] = np.random.default_rng(5).uniform(-1, 1, other[1:].shape)
    np.testing.assert_allclose(np.asarray(fwd(params, other))[0], batch[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(fwd(params, images[2:3]))[0], batch[2], atol=1e-5)


def test_random_metric_reproducible(tiny_config):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    plan = make_plan(tiny_config, MergeOptions("tome", 6, metric="random"))
    images = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    fwd = make_forward(tiny_config, plan)
    a = fwd(params, images, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, fwd(params, images, jax.random.PRNGKey(1)))
    assert not np.allclose(a, fwd(params, images, jax.random.PRNGKey(2)))


@pytest.mark.slow
@settings(max_examples=3, deadline=None)  # each example compiles a plan (~20 s on 2 cores)
@given(method=st.sampled_from(["tome", "dfe", "lgtm"]), r=st.integers(0, 40), window=st.integers(2, 5),
       seed=st.integers(0, 1000))
@pytest.mark.slow
def test_merge_invariants(method, r, window, seed):
    """Sizes sum to the patch count (+ cls), each token is the size-weighted mean of its sources,
    the cls token is never merged, and no block merges more than half its tokens."""
    from conftest import TINY as tiny_config

    plan = make_plan(tiny_config, MergeOptions(method, r, window=window), track_source=True)
    for op in plan.ops:
        assert op.tokens_in - op.tokens_out <= (op.tokens_in - 1) // 2 or op.kind == "local"
        assert op.tokens_out >= 2
    params = checkpoint.unflatten(google_checkpoint(tiny_config, seed=seed % 3))
    images = np.random.default_rng(seed).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    model = VisionTransformer(tiny_config, plan)
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, return_state=True))(params, images)  # one compile
    size, source = np.asarray(state.size[0]), np.asarray(state.source[0])
    assert size.shape[0] == plan.final_tokens
    assert size.sum() == tiny_config.num_patches + 1
    np.testing.assert_array_equal(source.sum(1)[1:], size[1:])  # sources are the sizes
    assert source[0].sum() == 0 and size[0] == 1  # cls alone, first
    np.testing.assert_array_equal(source.sum(0), np.ones(tiny_config.num_patches))  # each patch once


def test_merged_token_is_weighted_mean_of_sources():
    """One merge step with source tracking: token = sum of its sources' features / size."""
    rng = np.random.default_rng(0)
    n = 21
    x = jnp.asarray(rng.standard_normal((1, n, 4)), jnp.float32)
    state = initial_state(x, (4, 5), 1, track_source=True)
    m = bipartite.match(jnp.asarray(rng.standard_normal((n, 3)), jnp.float32), 7)
    new = merge_into(jax.tree_util.tree_map(lambda t: t[0], state), *bipartite.token_indices(m, n))
    src = np.asarray(new.source)[1:]
    np.testing.assert_allclose(np.asarray(new.x)[1:], src @ np.asarray(x[0, 1:]) / src.sum(1, keepdims=True), atol=1e-5)
