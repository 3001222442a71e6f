"""MergeOptions as one value: validation, round trip through JSON, parsing from the command line,
plans built from it, and the free-merging plan op against the numpy reference."""

import argparse
import json

import numpy as np
import pytest

import reference
from conftest import TINY, google_checkpoint
from fastvit_jax.cli import arguments
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import variant_config
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import DEFAULT_WINDOW, MergeOptions, parse_methods, parse_points
from fastvit_jax.merge.plan import free_merging, make_plan

S16 = variant_config("S/16")


@pytest.mark.parametrize("kw,msg", [
    (dict(method="fast"), "unknown method 'fast'; allowed: none, tome, dfe, lgtm, drop"),
    (dict(metric="w"), "unknown metric 'w'"), (dict(r=-1), "non-negative"), (dict(r="3"), "r must be an integer"),
    (dict(r=2.5), "r must be an integer"), (dict(window=1), "window must be >= 2"), (dict(skip=-1), "skip must be >= 0"),
    (dict(transition=-2), "transition must be >= 0"),
])
def test_bad_options_name_the_problem(kw, msg):
    with pytest.raises(FastViTError, match=msg):
        MergeOptions(**kw)


def test_round_trip_through_json():
    o = MergeOptions("lgtm", 8, skip=1, window=5, transition=3, metric="x_pre", prop_attn=False)
    back = MergeOptions.from_dict(json.loads(json.dumps(o.to_dict())))
    assert back == o and hash(back) == hash(o)
    assert make_plan(S16, back) == make_plan(S16, o)
    with pytest.raises(FastViTError, match="unknown merge option.*speed"):
        MergeOptions.from_dict({**o.to_dict(), "speed": 2})


def test_plan_keeps_the_options_and_resolves_defaults():
    o = MergeOptions("dfe", 8)
    plan = make_plan(S16, o)
    assert plan.options == o and o.skip is None and plan.skip == 2  # depth // 6
    assert (plan.method, plan.r, plan.metric, plan.prop_attn, plan.window) == ("dfe", 8, "k", True, 0)
    lgtm = make_plan(S16, MergeOptions("lgtm", 8))
    assert lgtm.window == DEFAULT_WINDOW == 7 and lgtm.transition == 6
    with pytest.raises(FastViTError, match=r"skip must be in \[0, 12\]"):
        make_plan(S16, MergeOptions("dfe", 2, skip=13))


def test_clamping_is_data():
    plan = make_plan(S16, MergeOptions("tome", 16))
    assert plan.clamped and plan.summary()["clamped"] and "fewer than r" in plan.describe()
    assert not make_plan(S16, MergeOptions("tome", 8)).clamped


def _parser(**kw):
    p = argparse.ArgumentParser()
    arguments.add_merge_args(p, **kw)
    return p


def test_one_argument_group_for_one_point_and_for_a_grid():
    args = _parser().parse_args(["--method", "lgtm", "--r", "8", "--skip", "1", "--metric", "v", "--no-prop-attn"])
    assert arguments.merge_options(args) == MergeOptions("lgtm", 8, skip=1, metric="v", prop_attn=False)
    assert _parser().parse_args([]).window == DEFAULT_WINDOW
    grid = _parser(several=True).parse_args(["--methods", "tome,lgtm", "--r", "0:8:4", "--transition", "2"])
    assert arguments.merge_points(grid) == [MergeOptions(m, r, transition=2) for m in ("tome", "lgtm") for r in (0, 4, 8)]
    alias = _parser(several=True).parse_args(["--method", "dfe", "--r-values", "3,5"])
    assert arguments.merge_points(alias) == [MergeOptions("dfe", 3), MergeOptions("dfe", 5)]
    with pytest.raises(FastViTError, match="bad --methods 'tome,fast'"):
        parse_methods("tome,fast")


def test_parse_points():
    assert parse_points("none:0,tome:8") == [MergeOptions(), MergeOptions("tome", 8)]
    with pytest.raises(FastViTError, match="METHOD:R"):
        parse_points("tome")


@pytest.mark.parametrize("method,kw", [("tome", {}), ("lgtm", {"window": 3}), ("dfe", {"skip": 1})])
def test_free_merging_keeps_token_counts_and_matches_reference(method, kw):
    plan = make_plan(TINY, MergeOptions(method, 5, **kw))
    free = free_merging(plan)
    assert [(o.tokens_in, o.tokens_out) for o in free.ops] == [(o.tokens_in, o.tokens_out) for o in plan.ops]
    assert {o.kind for o in free.ops} <= {"none", "truncate"} and "truncate" in {o.kind for o in free.ops}
    flat = google_checkpoint(TINY)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = make_forward(TINY, free)(checkpoint.unflatten(flat), images)
    want = reference.forward(flat, images, heads=TINY.heads, plan=reference.plan_ops(free))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
