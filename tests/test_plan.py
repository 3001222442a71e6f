"""MergePlan construction against hand-computed tables."""

import warnings

import pytest

from fastvit_jax.config import variant_config

from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import lgtm_transition, make_plan


S16, L16 = variant_config("S/16"), variant_config("L/16")  # depth 12 and 24, both a 14 x 14 grid


def tokens(plan):
    return plan.summary()["tokens"]


def test_tome_depth12_r16():
    # ToMe ViT-S/16: 197 - 16 per block; the last block is clamped to (21 - 1) // 2 = 10.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clamping is data (plan.clamped), never a warning
        plan = make_plan(S16, MergeOptions("tome", 16))
    assert tokens(plan) == [197, 181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21, 11]
    assert plan.skip == 0 and plan.clamped


def test_dfe_defaults_skip_depth_over_6():
    plan = make_plan(S16, MergeOptions("dfe", 8))
    assert plan.skip == 2
    assert [op.kind for op in plan.ops[:3]] == ["none", "none", "global"]
    assert tokens(plan) == [197, 197, 197] + [197 - 8 * i for i in range(1, 11)]
    assert make_plan(L16, MergeOptions("dfe", 8)).skip == 4


def test_lgtm_depth12_r8():
    # After skip 2: window 7 on the 14x14 grid = 4 windows, ceil(8/4) = 2 merges each; the window
    # grows by one per block until it exceeds round(sqrt(tokens)) (13 > round(sqrt(156)) = 12).
    plan = make_plan(S16, MergeOptions("lgtm", 8))
    kinds = [(op.kind, op.window, op.num_windows, op.r) for op in plan.ops]
    assert kinds[:2] == [("none", 0, 0, 0)] * 2
    assert kinds[2:8] == [("local", w, 4, 2) for w in range(7, 13)]
    assert kinds[8:] == [("global", 0, 0, 8)] * 4
    assert plan.transition == 6
    # Blocks 2-5 merge 4 x 2 = 8. At w=11 the 164 patch tokens sit on a 13 x 13 grid (12 full rows
    # + 8): the bottom-right window holds only 2 real tokens, so it merges 1 (7 in all). At w=12
    # (157 tokens): windows hold 144, 12 (one column), 1 and 0 real tokens -> 2 + 2 + 0 + 0 = 4.
    assert tokens(plan) == [197, 197, 197, 189, 181, 173, 165, 158, 154, 146, 138, 130, 122]


def test_lgtm_depth24():
    plan = make_plan(L16, MergeOptions("lgtm", 8))
    assert plan.skip == 4
    assert [op.kind for op in plan.ops].count("local") == plan.transition == lgtm_transition((14, 14), 8, 7, 20)
    assert all(op.kind == "none" for op in plan.ops[:4])
    assert plan.ops[4].kind == "local" and plan.ops[4].window == 7
    assert plan.ops[-1].kind == "global"


def test_explicit_transition_and_window():
    plan = make_plan(S16, MergeOptions("lgtm", 8, skip=1, window=4, transition=2))
    assert [op.kind for op in plan.ops] == ["none", "local", "local"] + ["global"] * 9
    assert plan.ops[1].window == 4 and plan.ops[1].num_windows == 16 and plan.ops[1].r == 1
    assert plan.ops[2].window == 5


@pytest.mark.parametrize("kw,msg", [
    (dict(method="fast"), "unknown method"), (dict(method="tome", r=-1), "non-negative"),
    (dict(method="lgtm", r=4, window=1), "window must be >= 2"), (dict(method="tome", r=2, metric="w"), "unknown metric"),
    (dict(method="dfe", r=2, skip=13), "skip must be in"), (dict(method="lgtm", r=2, transition=-1), "transition"),
])
def test_bad_options(kw, msg):
    with pytest.raises(FastViTError, match=msg):
        make_plan(S16, MergeOptions(**kw))


def test_plan_is_hashable_and_static():
    a = make_plan(S16, MergeOptions("lgtm", 8))
    b = make_plan(S16, MergeOptions("lgtm", 8))
    assert a == b and hash(a) == hash(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_plan(S16, MergeOptions("tome", 8))  # no clamp, no warning


def test_aligned_plans_round_token_counts_and_budgets_hold():
    """--align K: every global block's output the multiple of K nearest plain r's count (unless the
    half-the-tokens bound stops it); a budget search keeps aligned plans at or under the budget."""
    from fastvit_jax.search import budget
    from fastvit_jax.config import variant_config
    from fastvit_jax.merge.flops import gflops
    from fastvit_jax.merge.bipartite import max_merges

    cfg = variant_config("Ti/16")
    for method, r in (("tome", 13), ("tome", 16), ("dfe", 10), ("pitome", 12), ("lgtm", 13)):
        plain, aligned = (make_plan(cfg, MergeOptions(method, r, align=a)) for a in (0, 8))
        for p_op, a_op in zip(plain.ops, aligned.ops):
            if a_op.kind == "global":
                assert a_op.tokens_out % 8 == 0 or a_op.r == max_merges(a_op.tokens_in, 1)
                assert abs(a_op.tokens_out - p_op.tokens_out) <= 8
    assert [op.tokens_out for op in make_plan(cfg, MergeOptions("tome", 13, align=8)).ops] == [
        184, 168, 160, 144, 128, 120, 104, 96, 80, 64, 56, 40]
    for r in (13, 16):
        target = gflops(cfg, make_plan(cfg, MergeOptions("tome", r)))
        placed = budget.options_for_gflops(cfg, MergeOptions("tome", align=8), target)
        assert gflops(cfg, make_plan(cfg, placed)) <= target and placed.align == 8
    assert make_plan(cfg, MergeOptions("tome", 0, align=8)).is_dense  # r = 0: nothing to align
    with pytest.raises(FastViTError, match="align must be >= 0"):
        MergeOptions("tome", 8, align=-1)


def test_fractional_r_with_align_follows_its_line_and_fills_the_budget():
    """With --align K a fractional r is the straight line the aligned counts round to (block i of a
    constant schedule from block 0: the multiple of K nearest N - r (i + 1)); a budget search uses it
    to place an aligned plan just under the budget, where whole r jump by a multiple of K at once."""
    from fastvit_jax.search import budget
    from fastvit_jax.config import variant_config
    from fastvit_jax.merge.flops import gflops
    from fastvit_jax.merge.bipartite import max_merges

    cfg = variant_config("Ti/16")
    options = MergeOptions("tome", 16.15, align=8)
    n, want = 197, []
    for i in range(cfg.depth):  # written from the rule, clamped by ToMe's half-the-tokens bound
        n = max(int(round((197 - 16.15 * (i + 1)) / 8)) * 8, n - max_merges(n, 1))
        want.append(n)
    assert [op.tokens_out for op in make_plan(cfg, options).ops] == want
    assert want[:10] == [184, 168, 152, 136, 120, 104, 80, 64, 48, 32]
    assert options.label == "tome r=16.15 align=8"
    assert MergeOptions.from_dict(options.to_dict()) == options
    assert MergeOptions("tome", 16.0, align=8).r == 16 and isinstance(MergeOptions("tome", 16.0).r, int)

    target = gflops(cfg, make_plan(cfg, MergeOptions("tome", 16)))
    placed = budget.options_for_gflops(cfg, MergeOptions("tome", align=8), target)
    assert placed.r == 16.15  # r = 16 (all counts round up) is over the budget; 16.14 is too
    cost = lambda r: gflops(cfg, make_plan(cfg, MergeOptions("tome", r, align=8)))  # noqa: E731
    assert cost(16.15) <= target < cost(16.14) and cost(16) > target
    assert cost(16.15) > 0.99 * target > cost(17)  # a whole r would fall to r = 17, 5% under

    for bad, match in (({"r": 16.5}, "fractional r needs --align"),
                       ({"r": 16.5, "align": 8, "method": "lgtm"}, "integer for lgtm"),
                       ({"r": float("nan"), "align": 8}, "r must be an integer"),
                       ({"r": -0.5, "align": 8}, "non-negative")):
        with pytest.raises(FastViTError, match=match):
            MergeOptions(**{"method": "tome", **bad})
