"""Token-count buckets (runtime.token_buckets): ToMe-style blocks on padded slots make the merges the
exact model makes, in its order, with its logits within rounding; the slot schedule pads the fewest
slots (checked against every possible cut); other rules keep their exact counts. References: the
exact (unpadded) model, itself pinned to the numpy forward in test_merge.py and test_model.py, and a
brute-force search over cuts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge import buckets, local
from fastvit_jax.merge.apply import global_merge
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import local_block, make_plan
from fastvit_jax.merge.state import TokenState
from fastvit_jax.models.forward import make_forward
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime

DEEP = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=10)


@pytest.mark.parametrize("counts", [[9, 7, 5, 3], [20, 20, 17, 12, 12, 6, 5], [4], [8, 8, 8]])
@pytest.mark.parametrize("segments", [1, 2, 3])
def test_fewest_padded_is_the_best_cut(counts, segments):
    def slots(cuts):
        bounds = [0, *cuts, len(counts)]
        return sum(counts[a] * (b - a) for a, b in zip(bounds, bounds[1:]))

    best = min(slots(c) for k in range(segments) for c in itertools.combinations(range(1, len(counts)), k))
    runs = buckets.fewest_padded(counts, segments)
    assert len(runs) <= segments and runs[0][0] == 0 and runs[-1][1] == len(counts)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    assert sum(counts[a] * (b - a) for a, b in runs) == best


def test_slots_pad_only_tome_style_blocks():
    plan = make_plan(DEEP, MergeOptions("tome", r=6))
    assert buckets.token_slots(plan, None) == tuple(op.tokens_in for op in plan.ops) + (plan.final_tokens,)
    slots = buckets.token_slots(plan, 2)
    assert len(set(slots[:-1])) == 2 and slots[-1] == plan.final_tokens
    assert all(s >= op.tokens_in for s, op in zip(slots, plan.ops))
    drop = make_plan(DEEP, MergeOptions("drop", r=6))  # dropping: no padded form
    assert buckets.token_slots(drop, 2)[:-1] == tuple(op.tokens_in for op in drop.ops)
    lgtm = make_plan(DEEP, MergeOptions("lgtm", r=6, window=2))  # local windows pad too
    assert buckets.token_slots(lgtm, 1)[:-1] == (lgtm.ops[0].tokens_in,) * lgtm.depth


@pytest.mark.parametrize("distill", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_padded_merge_is_the_exact_merge_then_padding(distill, seed):
    rng = np.random.default_rng(seed)
    real, slots, r = 13, 19, 4
    x = rng.standard_normal((slots, 6)).astype(np.float32)
    size = np.concatenate([rng.integers(1, 4, real), np.zeros(slots - real)]).astype(np.float32)
    pos = rng.integers(0, 9, (slots, 2)).astype(np.float32)
    metric = rng.integers(0, 3, (slots, 5)).astype(np.float32)  # ties: the same tie-breaking is needed
    prefix = 2 if distill else 1
    padded = TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos))
    exact = TokenState(*(jnp.asarray(a[:real]) for a in (x, size, pos)))
    got, got_score = buckets.padded_global_merge(padded, jnp.asarray(metric), r=r, num_prefix=prefix,
                                                 distill_token=distill)
    want, want_score = global_merge(exact, jnp.asarray(metric[:real]), r=r, num_prefix=prefix, distill_token=distill)
    assert got.x.shape == (slots, 6)
    np.testing.assert_array_equal(got.size[:real - r], want.size)
    np.testing.assert_array_equal(got.size[real - r:], 0.0)  # the rest is padding
    np.testing.assert_array_equal(got.pos_sum[:real - r], want.pos_sum)
    np.testing.assert_allclose(got.x[:real - r], want.x, atol=1e-6)
    np.testing.assert_allclose(got_score, want_score, atol=1e-6)  # one matmul of another size: rounding


@pytest.mark.parametrize("seed", range(6))
def test_padded_local_merge_is_the_exact_local_merge_then_padding(seed):
    """LGTM's windows on padded slots, window, grid and r as data under larger static bounds: the
    same merges and output order as merge/local.local_merge on the real tokens alone. Odd seeds tie
    (integer features) with the bounds at the exact window, where both rank the same slots; even
    seeds take continuous features under larger bounds (the windows' similarity matmuls then differ
    in shape, so exact ties could round apart)."""
    rng = np.random.default_rng(seed)
    patch_grid = (int(rng.integers(5, 15)), int(rng.integers(5, 15)))
    m = int(rng.integers(patch_grid[0] * patch_grid[1] // 3, patch_grid[0] * patch_grid[1] + 1))
    prefix, window, ties = seed % 3 == 0, int(rng.integers(2, 6)), seed % 2 == 1
    op, _ = local_block(m + prefix, prefix, patch_grid, window, int(rng.integers(1, 40)))
    grow = 0 if ties else 2
    bounds = {"r_max": op.r + grow, "window_max": window + grow, "windows_max": op.num_windows + grow}
    n, pad = prefix + m, int(rng.integers(0, 20))
    size = rng.integers(1, 4, n).astype(np.float32)
    pos = (rng.integers(0, max(patch_grid), (n, 2)) * size[:, None]).astype(np.float32)  # sums of positions
    x = rng.standard_normal((n, 8)).astype(np.float32)
    metric = rng.integers(0, 3, (n, 5)).astype(np.float32) if ties else rng.standard_normal((n, 5)).astype(np.float32)
    exact = jax.jit(lambda s, mt: local.local_merge(s, mt, r=op.r, window=window, grid=op.grid, tokens_out=op.tokens_out,
                                                    num_prefix=prefix))
    want, want_score = exact(TokenState(*(jnp.asarray(a)[None] for a in (x, size, pos))), jnp.asarray(metric)[None])
    padded = lambda a: jnp.asarray(np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]))
    merge = jax.jit(lambda s, mt, r, w, c: local.padded_local_merge(s, mt, r=r, window=w, cols=c, num_prefix=prefix, **bounds))
    got, got_score = merge(TokenState(padded(x), padded(size), padded(pos)), padded(metric), op.r, window, op.grid[1])
    out = op.tokens_out
    np.testing.assert_array_equal(got.size[:out], want.size[0])
    np.testing.assert_array_equal(got.size[out:], 0.0)
    np.testing.assert_array_equal(got.pos_sum[:out], want.pos_sum[0])
    np.testing.assert_allclose(got.x[:out], want.x[0], atol=1e-6)
    real = lambda s: np.sort(np.asarray(s).ravel()[np.asarray(s).ravel() > -1.5])
    np.testing.assert_allclose(real(got_score), real(want_score), atol=1e-6)


POINTS = [MergeOptions("tome", r=6), MergeOptions("tome", r=5, prop_attn=False, inflect=0.5), MergeOptions("dfe", r=8),
          MergeOptions("lgtm", r=6), MergeOptions("atm", r=6, size_split=3), MergeOptions("tome", r=6, metric="random"),
          MergeOptions("pitome", r=6), MergeOptions("pitome", keep=0.8, skip=1), MergeOptions("tofu", r=6, prune_blocks=2),
          MergeOptions("tofu", r=5, prune_blocks=0), MergeOptions("mctf", r=5, skip=1),
          MergeOptions("ppt", r=8, threshold=0.0), MergeOptions("ppt", r=7, threshold=1.0)]


def _run(config, plan, runtime, params, images):
    model = VisionTransformer(config, plan, runtime)
    return jax.jit(lambda p, x: model.apply({"params": p}, x, return_state=True))(params, images)


def _same_as_exact(config, options, bucket_counts, seed=1):
    params = checkpoint.unflatten(google_checkpoint(config, seed=seed))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, 32, 3)), jnp.float32)
    plan = make_plan(config, options)
    exact, exact_state = _run(config, plan, Runtime(), params, images)
    for n in bucket_counts:
        got, state = _run(config, plan, Runtime(token_buckets=n), params, images)
        np.testing.assert_allclose(got, exact, atol=2e-5, rtol=1e-5)
        np.testing.assert_array_equal(state.size, exact_state.size)  # same tokens, same order
        np.testing.assert_array_equal(state.pos_sum, exact_state.pos_sum)


@pytest.mark.parametrize("pool", ["tok", "gap", "map"])
def test_bucketed_model_is_the_exact_model_for_every_pooling(pool):
    _same_as_exact(ViTConfig(**{**DEEP.__dict__, "pool": pool}), MergeOptions("tome", r=6), (1, 2) if pool == "tok" else (2,))


@pytest.mark.parametrize("options", POINTS[1:], ids=lambda o: o.label + (" random" if o.metric == "random" else ""))
def test_bucketed_model_is_the_exact_model_for_every_tome_style_method(options):
    _same_as_exact(DEEP, options, (2,))


def test_bucketed_distilled_model_matches_numpy_reference():
    config = ViTConfig(**{**DEEP.__dict__, "distilled": True})
    flat = google_checkpoint(config, seed=2)
    images = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
    plan = make_plan(config, MergeOptions("tome", r=6))
    got = make_forward(config, plan, Runtime(token_buckets=2))(checkpoint.unflatten(flat), jnp.asarray(images))
    want = reference.forward(flat, images, heads=config.heads,
                             plan=[("global", op.r) if op.kind == "global" else None for op in plan.ops])
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("value", ["0", "none", None])
def test_no_buckets_is_exact(value):
    assert Runtime(token_buckets=value).token_buckets is None
    assert "token_buckets" not in Runtime().to_dict()  # records written before buckets stay equal


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_buckets_refused(value):
    with pytest.raises(FastViTError, match="token buckets"):
        Runtime(token_buckets=value)


@pytest.mark.parametrize("flag,value,msg", [("--token-buckets", "two", "token buckets must be 'none' or a positive"),
                                            ("--examples-per-step", "-3", "examples per step must be 'auto'")])
def test_bad_runtime_flags_are_one_line(capsys, flag, value, msg):
    from fastvit_jax.cli import main

    code = main(["plan", "--method", "tome", "--r", "8", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("fastvit: error:") and msg in err


@pytest.mark.parametrize("r", [0, 2, 4])
def test_padded_merge_with_r_as_data_is_the_exact_merge(r):
    """A scanned block's r is a traced value below a static r_max: the same merge as r fixed."""
    rng = np.random.default_rng(r)
    real, slots, r_max = 13, 19, 5
    x = rng.standard_normal((slots, 6)).astype(np.float32)
    size = np.concatenate([rng.integers(1, 4, real), np.zeros(slots - real)]).astype(np.float32)
    pos = rng.integers(0, 9, (slots, 2)).astype(np.float32)
    metric = rng.integers(0, 3, (slots, 5)).astype(np.float32)
    padded = TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos))
    merge = jax.jit(lambda s, m, r: buckets.padded_global_merge(s, m, r=r, r_max=r_max, num_prefix=1,
                                                                distill_token=False))
    got, score = merge(padded, jnp.asarray(metric), jnp.int32(r))
    if r == 0:  # nothing merges, nothing moves
        for a, b in zip(got, padded):
            np.testing.assert_array_equal(a, b)
        return
    exact = TokenState(*(jnp.asarray(a[:real]) for a in (x, size, pos)))
    want, want_score = global_merge(exact, jnp.asarray(metric[:real]), r=r, num_prefix=1, distill_token=False)
    np.testing.assert_array_equal(got.size[:real - r], want.size)
    np.testing.assert_array_equal(got.size[real - r:], 0.0)
    np.testing.assert_array_equal(got.pos_sum[:real - r], want.pos_sum)
    np.testing.assert_allclose(got.x[:real - r], want.x, atol=1e-6)
    np.testing.assert_allclose(score[:r], want_score, atol=1e-6)
    np.testing.assert_array_equal(score[r:], -2.0)


def test_blocks_of_one_bucket_share_one_scanned_program():
    """With one bucket, ToMe's merging blocks are one run (one lax.scan; r is data, the clamped last
    block included): before the first merge the bias on the keys is log 1 = 0 (or a mask of no
    padding), the same program as after it, and blocks that merge nothing join the run (they skip
    the merge). Each way of merging (a rule and combine, local windows) makes its own run; rules
    without a padded form stand alone."""
    config = ViTConfig(**{**DEEP.__dict__, "depth": 6})
    runs = lambda options: buckets.shared_runs(p := make_plan(config, options), buckets.token_slots(p, 1))
    assert runs(MergeOptions("tome", r=6)) == [(0, 6)]
    assert buckets.shared_runs(make_plan(config), buckets.token_slots(make_plan(config), 1)) == [(0, 6)]
    assert runs(MergeOptions("tome", r=6, prop_attn=False)) == [(0, 6)]  # padded blocks: the mask
    assert runs(MergeOptions("tome", r=6, skip=2)) == [(0, 6)]  # the skipped blocks too
    for method in ("pitome", "tofu", "mctf"):  # PiToMe's margin, ToFu's prune or MLERP: data; MCTF one step ahead
        assert runs(MergeOptions(method, r=6)) == [(0, 6)], method
    assert runs(MergeOptions("ppt", r=6)) == [(0, 6)]  # its three reducing blocks and those between
    assert runs(MergeOptions("atm", r=6, size_split=3)) == [(0, 3), (3, 6)]  # ToMe's rule, then ATM's
    assert runs(MergeOptions("drop", r=6, skip=1)) == [(i, i + 1) for i in range(6)]  # no padded form
    lgtm = make_plan(config, MergeOptions("lgtm", r=6, window=2))  # windows of every size: one program
    assert [str(op)[:5] for op in lgtm.ops] == ["-", "local", "local", "local", "local", "globa"]
    assert runs(MergeOptions("lgtm", r=6, window=2)) == [(0, 1), (1, 5), (5, 6)]  # windows take no skipped block
    assert lgtm.ops[1].window != lgtm.ops[2].window
    # the scanned runs index one stack of their blocks' weights: blocks 1-4 (the first scan starts
    # past block 0), blocks 0, 1, 4, 5 (blocks 2 and 3 run apart between two scans)
    _same_as_exact(config, MergeOptions("lgtm", r=6, window=2), (1,))
    atm = MergeOptions("atm", r=6, size_split=3)
    atm_plan = make_plan(config, atm)
    assert buckets.shared_runs(atm_plan, buckets.token_slots(atm_plan, 3)) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    _same_as_exact(config, atm, (3,))
    plan = make_plan(config, MergeOptions("tome", r=6))
    params = checkpoint.unflatten(google_checkpoint(config, seed=4))
    images = jnp.zeros((1, 32, 32, 3))
    text = make_forward(config, plan, Runtime(token_buckets=1)).lower(params, images).as_text()
    assert text.count("stablehlo.while") >= 1  # the scan
    exact = make_forward(config, plan, Runtime()).lower(params, images).as_text()
    assert "stablehlo.while" not in exact


@pytest.mark.parametrize("rule,combine", [("tome", "prune"), ("tome", "mlerp"), ("tome", "plain"), ("pitome", "plain"),
                                          ("atm", "mean")])
@pytest.mark.parametrize("seed", range(2))
def test_padded_rules_are_the_exact_rules_then_padding(rule, combine, seed):
    """ToFu's combines on ToMe's matching, PiToMe's and ATM's rules on padded slots (r and margin
    traced) give the unpadded step's tokens, sizes and positions, then slots of size 0."""
    from fastvit_jax.merge.apply import global_reduce
    from fastvit_jax.merge.plan import BlockOp

    rng = np.random.default_rng(seed)
    # margin -1: no similarity saturates, so no two energies tie but for rounding (which a padded
    # row's sum may break the other way)
    real, slots, r, margin = 15, 21, 3, -1.0
    x = rng.standard_normal((slots, 6)).astype(np.float32)
    size = np.concatenate([rng.integers(1, 4, real), np.zeros(slots - real)]).astype(np.float32)
    pos = rng.integers(0, 9, (slots, 2)).astype(np.float32)
    metric = rng.standard_normal((slots, 5)).astype(np.float32)
    padded = TokenState(jnp.asarray(x), jnp.asarray(size), jnp.asarray(pos))
    op = BlockOp("global", real, real - r, r, rule=rule, combine=combine, margin=margin)
    if rule != "tome":
        step = lambda s, m, r, g: buckets.padded_reduce(s, m, None, op=op, r=r, margin=g, threshold=0.0,
                                                        num_prefix=1, distill_token=False)
    else:
        step = lambda s, m, r, g: buckets.padded_global_merge(s, m, r=r, r_max=5, num_prefix=1,
                                                              distill_token=False, combine=combine)
    got, _ = jax.jit(step)(padded, jnp.asarray(metric), jnp.int32(r), jnp.float32(margin))
    exact = TokenState(*(jnp.asarray(a[:real]) for a in (x, size, pos)))
    want, _ = global_reduce(exact, jnp.asarray(metric[:real]), None, op=op, num_prefix=1, distill_token=False)
    np.testing.assert_array_equal(got.size[:real - r], want.size)
    np.testing.assert_array_equal(got.size[real - r:], 0.0)
    np.testing.assert_array_equal(got.pos_sum[:real - r], want.pos_sum)
    np.testing.assert_allclose(got.x[:real - r], want.x, atol=1e-5)
    assert np.isfinite(np.asarray(got.x)).all()  # padding stays finite: masked keys must not meet NaN
