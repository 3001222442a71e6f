"""Shared programs (merge/buckets.program_key, shared_layout, schedule): plans that differ only in their
padded blocks' r and margins run as one compiled program, each member's r and margins handed in as
data. Reference: each member's own exact (unpadded) model, itself pinned to the numpy forward in
test_merge.py and test_model.py: same logits within rounding, same tokens in the same order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.merge import buckets
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.forward import make_forward
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime

DEEP = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=10)

GROUPS = {
    "tome": [MergeOptions("tome", r=6), MergeOptions("tome", r=5, inflect=-0.5), MergeOptions("tome", r=7, align=4),
             MergeOptions("tome", r=3)],
    "tome skip 1, no prop_attn": [MergeOptions("tome", r=6, skip=1, prop_attn=False),
                                  MergeOptions("tome", r=8, skip=1, prop_attn=False, inflect=0.5)],
    "pitome": [MergeOptions("pitome", r=6), MergeOptions("pitome", keep=0.8), MergeOptions("pitome", r=3)],
    "tofu": [MergeOptions("tofu", r=6, prune_blocks=2), MergeOptions("tofu", r=4, prune_blocks=3),
             MergeOptions("tofu", r=5, prune_blocks=0)],  # prune or MLERP per block: data
    "atm": [MergeOptions("atm", r=6, size_split=3), MergeOptions("atm", r=4, size_split=3)],
    "mctf": [MergeOptions("mctf", r=6, skip=1), MergeOptions("mctf", r=4, skip=1)],
    # blocks that merge in one plan and nothing in another: they skip the merge (lax.cond on r)
    "skips": [MergeOptions("tome", r=6, skip=2), MergeOptions("tome", r=4), MergeOptions("tome", r=5, skip=1)],
    "mctf skips": [MergeOptions("mctf", r=4), MergeOptions("mctf", r=6, skip=2)],
    "ppt": [MergeOptions("ppt", r=6, threshold=1.0), MergeOptions("ppt", r=9, threshold=0.0)],  # threshold: data
    # local windows: the window, the grid and r per window are data (windows of 2-6 in one program)
    "lgtm": [MergeOptions("lgtm", r=6, window=2), MergeOptions("lgtm", r=4, window=2), MergeOptions("lgtm", r=5, window=3),
             MergeOptions("lgtm", r=8, window=3, transition=2)],
}


def test_program_key_ignores_r_and_margin_only():
    plans = [make_plan(DEEP, o) for o in GROUPS["tome"]]
    assert len({buckets.program_key(p) for p in plans}) == 1
    pitome = [make_plan(DEEP, o) for o in GROUPS["pitome"]]
    assert len({buckets.program_key(p) for p in pitome}) == 1
    assert pitome[0].ops[1].margin != pitome[1].ops[1].margin or pitome[0].ops[1].r != pitome[1].ops[1].r
    others = [MergeOptions("tome", r=6, skip=1), MergeOptions("tome", r=6, prop_attn=False),
              MergeOptions("tome", r=6, metric="x"), MergeOptions("tome", r=6, skip=2), MergeOptions("tofu", r=6),
              MergeOptions("pitome", r=6), MergeOptions("mctf", r=6)]
    keys = [buckets.program_key(plans[0])] + [buckets.program_key(make_plan(DEEP, o)) for o in others]
    assert len(set(keys)) == len(keys)  # structure, metric, rule and combine each make another program
    # no padded form: the whole plan, counts included, is the key
    drop = [make_plan(DEEP, MergeOptions("drop", r=r)) for r in (4, 6)]
    assert buckets.program_key(drop[0]) != buckets.program_key(drop[1])
    lgtm = [make_plan(DEEP, o) for o in GROUPS["lgtm"]]  # windows and r are data; local or global blocks are not
    assert len({buckets.program_key(p) for p in lgtm[:3]}) == 1 != len({buckets.program_key(p) for p in lgtm})
    assert len(buckets.group_plans(lgtm)) == 2
    # a block merging in one plan and nothing in another: one program; merging otherwise: two
    skips = [make_plan(DEEP, o) for o in GROUPS["skips"]]
    assert len({buckets.program_key(p) for p in skips}) == 3 and len(buckets.group_plans(skips)) == 1
    mixed = skips + [make_plan(DEEP, MergeOptions("pitome", r=6, skip=1)), make_plan(DEEP, MergeOptions("drop", r=4)),
                     make_plan(DEEP, MergeOptions("drop", r=4, skip=1))]
    assert [len(g) for g in buckets.group_plans(mixed)] == [3, 1, 1, 1]  # drop has no padded form
    random = [make_plan(DEEP, MergeOptions("tome", r=r, metric="random")) for r in (4, 6)]
    assert buckets.program_key(random[0]) != buckets.program_key(random[1])


def test_shared_layout_covers_every_member():
    plans = [make_plan(DEEP, o) for o in GROUPS["tome"]]
    for n in (1, 2):
        layout = buckets.shared_layout(plans, n)
        for p in plans:
            counts = [op.tokens_in for op in p.ops] + [p.final_tokens]
            assert all(s >= c for s, c in zip(layout.slots, counts))
            assert all(m >= op.r for m, op in zip(layout.r_max, p.ops))
        assert len(set(layout.slots[:-1])) <= n
    with pytest.raises(ValueError, match="not one program"):
        buckets.shared_layout([plans[0], make_plan(DEEP, MergeOptions("pitome", r=6))], 1)


def _states(config, plan, layout=None, buckets_=None):
    """jit(params, images, schedule) -> (logits, final state), one program per call of this."""
    model = VisionTransformer(config, plan, Runtime(token_buckets=buckets_), layout)
    return jax.jit(lambda p, x, s: model.apply({"params": p}, x, return_state=True, schedule=s))


@pytest.mark.parametrize("group", GROUPS)
def test_each_plan_on_the_shared_program_is_its_exact_model(group):
    config = ViTConfig(**{**DEEP.__dict__, "pool": "gap"}) if group == "tome" else DEEP
    params = checkpoint.unflatten(google_checkpoint(config, seed=1))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, 32, 3)), jnp.float32)
    plans = [make_plan(config, o) for o in GROUPS[group]]
    if group == "lgtm":  # two programs: all-local plans and local-then-global ones
        plans = plans[:3]
    assert len(buckets.group_plans(plans)) == 1
    exact = [_states(config, plan)(params, images, None) for plan in plans]
    for n in (1, 2) if group == "tome" else (1,):
        layout = buckets.shared_layout(plans, n)
        shared_states = _states(config, buckets.envelope(plans), layout, n)
        for plan, (logits, exact_state) in zip(plans, exact):
            got, state = shared_states(params, images, buckets.schedule(plan))
            np.testing.assert_allclose(got, logits, atol=2e-5, rtol=1e-5)
            final = plan.final_tokens  # the member's tokens first, in its order, then padding
            np.testing.assert_array_equal(state.size[:, :final], exact_state.size)
            np.testing.assert_array_equal(state.pos_sum[:, :final], exact_state.pos_sum)
            np.testing.assert_array_equal(state.size[:, final:], 0.0)
        assert shared_states._cache_size() == 1  # one compiled program for the whole group


@pytest.mark.parametrize("pool", ["tok", "map"])
def test_shared_program_pools_past_padding(pool):
    """Members end with different token counts: the final padded slots take no part in pooling
    (MAP without proportional attention masks them)."""
    config = ViTConfig(**{**DEEP.__dict__, "pool": pool})
    params = checkpoint.unflatten(google_checkpoint(config, seed=2))
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    plans = [make_plan(config, MergeOptions("tome", r=r, prop_attn=False)) for r in (6, 3)]
    layout = buckets.shared_layout(plans, 1)
    assert layout.padded[-1]
    forward = make_forward(config, plans[0], Runtime(token_buckets=1), layout)
    for plan in plans:
        np.testing.assert_allclose(forward(params, images, None, buckets.schedule(plan)),
                                   make_forward(config, plan)(params, images), atol=2e-5, rtol=1e-5)


def test_an_images_logits_do_not_depend_on_its_batch():
    """tune's stage 2 reuses stage 1's results for the subset's images: the same program gives an
    image the same logits, bit for bit, whatever else its batch holds and wherever it sits."""
    params = checkpoint.unflatten(google_checkpoint(DEEP, seed=3))
    images = jnp.asarray(np.random.default_rng(2).standard_normal((6, 32, 32, 3)), jnp.float32)
    plans = [make_plan(DEEP, o) for o in GROUPS["pitome"]]
    forward = make_forward(DEEP, plans[0], Runtime(token_buckets=1, examples_per_step=2),
                           buckets.shared_layout(plans, 1))
    schedule = buckets.schedule(plans[1])
    first = np.asarray(forward(params, images[:4], None, schedule))
    other = np.asarray(forward(params, images[jnp.asarray([5, 3, 0, 4])], None, schedule))
    np.testing.assert_array_equal(other[[1, 2]], first[[3, 0]])
