"""PiToMe, ToFu and MCTF (merge/reducers.py) against the loop versions in tests/reference.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import model_macs
from fastvit_jax.models.forward import make_forward
from fastvit_jax.runtime import Runtime
from fastvit_jax.merge import reducers
from fastvit_jax.merge.methods import mctf as mctf_method
from fastvit_jax.merge.methods import pitome as pitome_method
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.merge.state import TokenState


def _metric(rng, n, c=6, ties=False):
    m = rng.standard_normal((n, c)).astype(np.float32)
    if ties:  # exact duplicates: equal similarities, equal energies, equal best partners
        m[5] = m[3]
        m[8] = m[3]
        m[9] = m[4]
        m[12 % n] = m[2]
    return m


def _groups(out_idx, merged):
    """Slot -> (receiver, sorted members) from a rule's output."""
    out_idx, merged = np.asarray(out_idx), np.asarray(merged)
    groups = []
    for t in range(out_idx.max() + 1):
        members = np.flatnonzero(out_idx == t)
        receivers = [i for i in members if not merged[i]]
        assert len(receivers) == 1, (t, members, merged[members])
        groups.append((receivers[0], sorted(members.tolist())))
    return groups


def _want(groups):
    return [(g[0], sorted(g)) for g in groups]


@pytest.mark.parametrize("n,r,prefix,ties", [(17, 4, 1, False), (17, 4, 1, True), (16, 8, 0, True), (21, 1, 1, True)])
def test_pitome_rule_matches_reference(n, r, prefix, ties):
    metric = _metric(np.random.default_rng(n + r), n, ties=ties)
    margin = 0.5
    out_idx, merged, score = pitome_method.pitome_slots(metric, r, num_prefix=prefix, margin=margin)
    assert _groups(out_idx, merged) == _want(reference.pitome_groups(metric, r, margin, prefix))
    assert int(np.sum(merged)) == r and np.all(np.asarray(score)[np.asarray(merged)] >= -1)


@pytest.mark.parametrize("n,r,prefix,ties", [(17, 5, 1, False), (17, 6, 1, True), (16, 7, 0, True), (17, 1, 1, True)])
def test_mctf_rule_matches_reference(n, r, prefix, ties):
    rng = np.random.default_rng(10 * n + r)
    metric = _metric(rng, n, ties=ties)
    received = rng.uniform(0.01, 0.2, n).astype(np.float32)
    size = rng.integers(1, 5, n).astype(np.float32)
    if ties:
        received[5], received[8], size[5], size[8] = received[3], received[3], size[3], size[3]
    out_idx, merged, _ = mctf_method.mctf_slots(metric, received, size, r, num_prefix=prefix, distill_token=False)
    got = _groups(out_idx, merged)
    assert got == _want(reference.mctf_groups(metric, received, size, r, prefix))
    assert int(np.sum(merged)) == r


def test_mctf_rule_with_distill_token_matches_reference_without_b0():
    """With a distill token, B 0 neither receives nor moves: the same as the reference run on the
    tokens without it, with B 0 put back second."""
    rng = np.random.default_rng(5)
    n, r = 19, 6
    metric = _metric(rng, n, ties=True)
    received = rng.uniform(0.01, 0.2, n).astype(np.float32)
    size = rng.integers(1, 5, n).astype(np.float32)
    out_idx, merged, _ = mctf_method.mctf_slots(metric, received, size, r, num_prefix=2, distill_token=True)
    got = _groups(out_idx, merged)
    assert got[1] == (1, [1]) and sum(len(m) for _, m in got) == n and len(got) == n - r
    assert all(1 not in members for _, members in got[:1] + got[2:])


@pytest.mark.parametrize("how", reducers.COMBINES)
def test_combine_matches_reference(how):
    rng = np.random.default_rng(1)
    n, r = 15, 5
    metric = _metric(rng, n)
    x = (3 * rng.standard_normal((n, 8))).astype(np.float32)
    size = rng.integers(1, 4, n).astype(np.float32)
    pos = rng.integers(0, 6, (n, 2)).astype(np.float32)
    received = rng.uniform(0.01, 0.2, n).astype(np.float32)
    out_idx, merged, _ = reducers.tome_slots(metric, r, num_prefix=1, distill_token=False)
    state = TokenState(x, size, pos * size[:, None])
    new = reducers.combine(state, out_idx, merged, n - r, how, received)
    groups = [[g[0]] + [i for i in g[1] if i != g[0]] for g in _groups(out_idx, merged)]
    want_x, want_size, want_pos = reference.reduce_combine(groups, x.astype(np.float64), size, pos, how, received)
    np.testing.assert_allclose(new.x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.size, want_size)
    np.testing.assert_allclose(np.asarray(new.pos_sum) / np.asarray(new.size)[:, None], want_pos, rtol=1e-6)
    singles = [t for t, g in enumerate(groups) if len(g) == 1 or how == "prune"]
    np.testing.assert_array_equal(np.asarray(new.x)[singles], x[[groups[t][0] for t in singles]])


# ---------------------------------------------------------------- whole models
CASES = [
    ("pitome", 6, {}), ("pitome", 0, {"keep": 0.9125}), ("tofu", 5, {"prune_blocks": 2}), ("mctf", 6, {}),
    ("mctf", 7, {"metric": "x_pre"}), ("dfe", 6, {"reducer": "mctf", "skip": 1}),
    ("lgtm", 8, {"reducer": "pitome", "window": 5, "transition": 1}), ("tofu", 4, {"prop_attn": False}),
    ("ppt", 6, {}), ("ppt", 6, {"threshold": 1.0}), ("ppt", 6, {"threshold": 0.0}),  # per image; all pool; all prune
]


def _similar_keys(flat, scale=1.5):
    """Keys sharing a large common part (as trained ViTs' do): cosines near PiToMe's margins, where its
    ELU((cos - m) / 0.01) is not saturated at -1, so no ranking is decided by float rounding."""
    out = dict(flat)
    for key in [k for k in flat if k.endswith("key/bias")]:
        out[key] = flat[key] + scale * np.random.default_rng(7).standard_normal(flat[key].shape[-1]).astype(np.float32)
    return out


@pytest.mark.parametrize("method,r,kw", CASES)
def test_reducer_models_match_reference(tiny_config, method, r, kw):
    flat = google_checkpoint(tiny_config)
    if "pitome" in (method, kw.get("reducer")):
        flat = _similar_keys(flat)
    params = checkpoint.unflatten(flat)
    plan = make_plan(tiny_config, MergeOptions(method, r, **kw))
    assert any(op.kind == "global" and (op.rule, op.combine) != ("tome", "mean") for op in plan.ops)
    images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = make_forward(tiny_config, plan)(params, images)
    want = reference.forward(flat, images, heads=tiny_config.heads, plan=reference.plan_ops(plan),
                             metric_name=plan.metric, prop_attn=plan.prop_attn)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
    # the reducer steps are one implementation; LGTM's local blocks differ by float rounding
    np.testing.assert_allclose(got, make_forward(tiny_config, plan, Runtime(merge_impl="dense"))(params, images), atol=2e-5)


def test_gap_model_without_class_token(tiny_config):
    config = ViTConfig(width=32, depth=3, heads=2, mlp_dim=64, patch=4, image_size=28, num_classes=5, pool="gap")
    flat = _similar_keys(google_checkpoint(config))
    params = checkpoint.unflatten(flat)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    for options in (MergeOptions("pitome", 5), MergeOptions("mctf", 5), MergeOptions("tofu", 5, prune_blocks=1)):
        plan = make_plan(config, options)
        want = reference.forward(flat, images, heads=config.heads, plan=reference.plan_ops(plan), pool="gap",
                                 prop_attn=plan.prop_attn, metric_name=plan.metric)
        np.testing.assert_allclose(make_forward(config, plan)(params, images), want, atol=2e-4, rtol=2e-4)


def test_r0_is_the_dense_model_bit_for_bit(tiny_config):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    dense = np.asarray(make_forward(tiny_config, None)(params, images))
    for method in ("pitome", "tofu", "mctf"):
        got = make_forward(tiny_config, make_plan(tiny_config, MergeOptions(method, 0)))(params, images)
        np.testing.assert_array_equal(np.asarray(got), dense)


# ---------------------------------------------------------------- plans and options
def test_plan_data(tiny_config):
    depth = tiny_config.depth
    pitome = make_plan(tiny_config, MergeOptions("pitome", 4))
    assert [op.rule for op in pitome.ops] == ["pitome"] * depth
    assert [op.margin for op in pitome.ops] == pytest.approx([0.95 - 0.95 * i / depth for i in range(depth)])
    tofu = make_plan(tiny_config, MergeOptions("tofu", 4))
    assert [op.combine for op in tofu.ops] == ["prune"] * (depth // 4) + ["mlerp"] * (depth - depth // 4)
    mctf = make_plan(tiny_config, MergeOptions("dfe", 4, reducer="mctf", skip=1))
    assert [op.kind for op in mctf.ops] == ["none"] + ["global"] * (depth - 1)
    assert {(op.rule, op.combine) for op in mctf.ops[1:]} == {("mctf", "attn")}
    # the same schedule either way of saying it
    assert make_plan(tiny_config, MergeOptions("pitome", 4, skip=1)).ops == \
        make_plan(tiny_config, MergeOptions("dfe", 4, reducer="pitome", skip=1)).ops
    assert MergeOptions("lgtm", 4, reducer="pitome").label == "lgtm+pitome r=4"
    assert MergeOptions("pitome", 4).label == "pitome r=4"


@pytest.mark.parametrize("kw,match", [
    ({"method": "drop", "r": 4, "reducer": "pitome"}, "not to method 'drop'"),
    ({"method": "pitome", "r": 4, "reducer": "mctf"}, "contradicts"),
    ({"method": "tome", "r": 4, "reducer": "fast"}, "unknown reducer 'fast'; allowed: tome, pitome, tofu, mctf"),
    ({"method": "tofu", "r": 4, "prune_blocks": -1}, "prune_blocks must be >= 0"),
])
def test_bad_reducer_options(kw, match):
    with pytest.raises(FastViTError, match=match):
        MergeOptions(**kw)


def test_pitome_flops_count_all_patch_pairs(tiny_config):
    tome = model_macs(tiny_config, make_plan(tiny_config, MergeOptions("tome", 4)))
    pitome = model_macs(tiny_config, make_plan(tiny_config, MergeOptions("pitome", 4)))
    m = [64, 60, 56, 52]  # patch tokens entering each block
    assert pitome["match"] == sum(k * k * tiny_config.head_dim for k in m)
    assert pitome["total"] - tome["total"] == pitome["match"] - tome["match"]


def test_reducers_have_no_sort_scatter_gather(tiny_config):
    """One implementation serves GPU/TPU too: the lowering has no sort, scatter or gather ops
    beyond those of the dense model."""
    from jax import export

    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = np.zeros((1, 32, 32, 3), np.float32)

    def count(options):
        fwd = make_forward(tiny_config, make_plan(tiny_config, options), Runtime(merge_impl="dense"))
        text = export.export(jax.jit(lambda p, x: fwd(p, x)), platforms=["cuda"])(params, images).mlir_module()
        return {op: text.count(f"stablehlo.{op}") for op in ("sort", "scatter", "gather")}

    dense = count(MergeOptions())
    for method in ("pitome", "tofu", "mctf"):
        assert count(MergeOptions(method, 4)) == dense, method


def test_ppt_chooses_per_image_at_its_blocks(tiny_config):
    """PPT's README setting on DeiT-Tiny's shape: blocks 3, 6, 9 remove 50, 50 and (bounded) 48 tokens;
    on a batch, one image can pool while another prunes, each as it would alone."""
    deit = ViTConfig(width=192, depth=12, heads=3, mlp_dim=768, patch=16, image_size=224, num_classes=1000)
    plan = make_plan(deit, MergeOptions("ppt", 50))
    assert plan.summary()["tokens"] == [197] * 4 + [147] * 3 + [97] * 3 + [49] * 3
    assert [op.threshold for op in plan.ops if op.kind == "global"] == [7e-5] * 3 and plan.prop_attn
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    images = np.random.default_rng(3).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    plan = make_plan(tiny_config, MergeOptions("ppt", 6))
    both = np.asarray(make_forward(tiny_config, plan)(params, images))
    for i in range(4):
        alone = reference.forward(flat, images[i:i + 1], heads=tiny_config.heads, plan=reference.plan_ops(plan))
        np.testing.assert_allclose(both[i], np.asarray(alone).reshape(-1), atol=2e-4, rtol=2e-4)
