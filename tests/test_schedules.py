"""Schedules as data: constant r, ToMe's (r, inflect), an explicit list, a keep ratio; stored in
options, plan files and rows, and placed on a budget like r."""

import json

import pytest

from conftest import TINY
from fastvit_jax.search import budget
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import gflops
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan

DEIT_TINY = ViTConfig(width=192, depth=12, heads=3, mlp_dim=768, patch=16, image_size=224, num_classes=1000)


def removed(plan):
    return [op.tokens_in - op.tokens_out for op in plan.ops]


def tome_parse_r(num_layers, r, inflect):
    """ToMe's tome/utils.py parse_r for a (r, inflect) pair, written out from its docstring's rule:
    a line from r (1 - inflect) to r (1 + inflect), each value truncated toward zero."""
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    return [int(lo + (hi - lo) * i / (num_layers - 1)) for i in range(num_layers)]


@pytest.mark.parametrize("r,inflect", [(8, -0.5), (8, 0.5), (13, -1.0), (16, 1.0), (5, 0.25)])
def test_inflect_schedule_is_tomes(r, inflect):
    plan = make_plan(DEIT_TINY, MergeOptions("tome", r, inflect=inflect))
    n, want = 197, []
    for value in tome_parse_r(12, r, inflect):  # ToMe's bound: r = min(r, (tokens - class token) // 2)
        want.append(min(value, (n - 1) // 2))
        n -= want[-1]
    assert removed(plan) == want
    assert plan.summary()["schedule"] == f"r {r} inflect {inflect:g}"


def test_keep_ratio_is_pitomes_release():
    """PiToMe's main_ic.py default ratio on DeiT (196 patch tokens): floor(T - T * 0.9125) per block."""
    plan = make_plan(DEIT_TINY, MergeOptions("pitome", keep=0.9125))
    assert removed(plan) == [17, 15, 14, 13, 11, 11, 10, 9, 8, 7, 7, 6]
    assert all(op.rule == "pitome" and op.combine == "plain" for op in plan.ops)
    assert not plan.prop_attn  # the release's sizes never reach the attention
    assert MergeOptions("pitome", keep=0.9125).label == "pitome keep=0.9125"


def test_r_list_runs_block_by_block_and_any_method_takes_any_schedule():
    plan = make_plan(DEIT_TINY, MergeOptions("mctf", r_list=(0, 4, 9, 0, 3)))
    assert removed(plan) == [0, 4, 9, 0, 3] + [0] * 7
    assert removed(make_plan(DEIT_TINY, MergeOptions("dfe", r_list=(5,) * 12))) == [0, 0] + [5] * 10  # skip holds
    assert removed(make_plan(DEIT_TINY, MergeOptions("tome", keep=0.9125))) == [17, 15, 14, 13, 11, 11, 10, 9, 8, 7, 7, 6]
    assert make_plan(DEIT_TINY, MergeOptions("tome", keep=1.0)).is_dense
    assert make_plan(DEIT_TINY, MergeOptions("none", keep=0.5)).is_dense


@pytest.mark.parametrize("kw,msg", [
    ({"r": 4, "keep": 0.9}, "keep replaces r"),
    ({"keep": 0.9, "inflect": 0.5}, "one schedule at a time"),
    ({"r_list": (1, 2), "keep": 0.9}, "one schedule at a time"),
    ({"r": 4, "inflect": 1.5}, "inflect must be in [-1, 1]"),
    ({"keep": 0.0}, "keep must be a ratio in (0, 1]"),
    ({"keep": True}, "keep must be a ratio"),
    ({"r_list": (1, -2)}, "r_list entries must be >= 0"),
    ({"r_list": "12"}, "r_list must be a list"),
])
def test_bad_schedules_are_one_line(kw, msg):
    with pytest.raises(FastViTError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        MergeOptions("tome", **kw)


def test_schedules_round_trip_through_dicts_and_plan_files(tmp_path):
    from fastvit_jax.checkpoints.plan_file import load_plan_options, save_plan

    for options in (MergeOptions("pitome", keep=0.9125), MergeOptions("tome", 8, inflect=-0.5),
                    MergeOptions("mctf", r_list=(3, 3, 2))):
        assert MergeOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
        path = save_plan(tmp_path / "p.json", TINY, make_plan(TINY, options))
        assert load_plan_options(path, TINY) == options


@pytest.mark.parametrize("options", [MergeOptions("pitome", keep=1.0), MergeOptions("tome", inflect=-0.5),
                                     MergeOptions("tome")])
def test_budget_places_every_schedule_at_or_under_it(options):
    target = 0.75 * gflops(DEIT_TINY)
    placed = budget.options_for_gflops(DEIT_TINY, options, target)
    assert gflops(DEIT_TINY, make_plan(DEIT_TINY, placed)) <= target
    if options.keep is not None:  # the largest keep ratio on its grid that meets the budget
        assert placed.keep < 1.0 and placed.inflect == 0.0
        above = placed.replace(keep=round(placed.keep + budget.KEEP_STEP, 6))
        assert gflops(DEIT_TINY, make_plan(DEIT_TINY, above)) > target
    else:  # the smallest r, the inflection kept
        assert placed.inflect == options.inflect
        assert gflops(DEIT_TINY, make_plan(DEIT_TINY, placed.replace(r=placed.r - 1))) > target
    with pytest.raises(FastViTError, match="no knob"):
        budget.options_for_gflops(DEIT_TINY, MergeOptions("tome", r_list=(4, 4)), target)


def test_cli_plan_with_a_keep_ratio(capsys):
    assert main(["plan", "--model", "deit_tiny_patch16_224", "--method", "pitome", "--keep", "0.9125", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["options"]["keep"] == 0.9125 and res["plan"]["schedule"] == "keep 0.9125"
    assert res["plan"]["tokens"] == [197, 180, 165, 151, 138, 127, 116, 106, 97, 89, 82, 75, 69]
    assert main(["plan", "--model", "deit_tiny_patch16_224", "--method", "tome", "--r", "4", "--keep", "0.9"]) == 2
    assert "keep replaces r" in capsys.readouterr().err
    assert main(["plan", "--model", "deit_tiny_patch16_224", "--method", "tome", "--keep", "1.5"]) == 2
    assert "expected a ratio in (0, 1]" in capsys.readouterr().err
