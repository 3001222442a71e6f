"""Plan files (--plan, `fastvit plan`), `fastvit tune`, and the paired intervals it reports."""

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import google_checkpoint, interrupt_on_call, labelled_images
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.checkpoints.plan_file import load_plan_options, save_plan
from fastvit_jax.util.stats import paired_difference, wilson_interval
from fastvit_jax.search.tune import candidates

CFG = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=16, image_size=224, num_classes=1000)


@pytest.fixture
def setup(tmp_path):
    ckpt = tmp_path / "m.npz"
    np.savez(ckpt, **google_checkpoint(CFG))
    return ckpt, labelled_images(tmp_path / "imgs")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- intervals
def test_wilson_interval_matches_its_formula_and_scipy():
    lo, hi = wilson_interval(80, 100)
    ci = scipy_stats.binomtest(80, 100).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_paired_difference():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.7
    b = a.copy()
    flip = rng.random(2000) < 0.05
    b[flip] = ~b[flip]
    d = paired_difference(a, b)
    diff = a.astype(float) - b.astype(float)
    half = 1.959963984540054 * diff.std(ddof=1) / np.sqrt(2000)
    assert d["diff"] == pytest.approx(a.mean() - b.mean())
    assert (d["lo"], d["hi"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert d["a_only"] == int((a & ~b).sum()) and d["b_only"] == int((b & ~a).sum())
    # pairing makes the interval much tighter than either accuracy's own
    lo, hi = wilson_interval(int(a.sum()), 2000)
    assert d["hi"] - d["lo"] < (hi - lo) / 2
    with pytest.raises(ValueError):
        paired_difference(a, b[:10])


# ---------------------------------------------------------------- plan files
def test_plan_file_round_trip_and_refusals(tmp_path):
    options = MergeOptions("lgtm", 9, reducer="pitome", window=5, metric="x_pre")
    path = save_plan(tmp_path / "p.json", CFG, make_plan(CFG, options), model_name="tiny", command="fastvit plan ...")
    assert load_plan_options(path, CFG) == options
    other = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=16, image_size=384, num_classes=1000)
    with pytest.raises(FastViTError, match=r"is for depth 4, grid 14x14, 1 prefix token\(s\) \(tiny\); "
                                           r"this model has depth 4, grid 24x24"):
        load_plan_options(path, other)
    record = json.loads(path.read_text())
    record["plan"]["tokens"][-1] += 1
    path.write_text(json.dumps(record))
    with pytest.raises(FastViTError, match="its options now give tokens per block"):
        load_plan_options(path, CFG)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FastViTError, match="format 'something-else', expected 'fastvit-plan/1'"):
        load_plan_options(path, CFG)
    record["plan"]["tokens"][-1] -= 1
    record["options"]["speed"] = 3
    path.write_text(json.dumps(record))
    with pytest.raises(FastViTError, match="unknown merge option"):
        load_plan_options(path, CFG)


@pytest.mark.slow
def test_plan_command_and_plan_flag(setup, capsys, tmp_path):
    ckpt, imgs = setup
    plan = tmp_path / "plan.json"
    code, out, _ = run(capsys, "plan", "--checkpoint", ckpt, "--method", "mctf", "--r", "12", "--out", plan)
    assert code == 0 and "mctf-attn(12)" in out and plan.exists()
    record = json.loads(plan.read_text())
    assert record["command"].startswith("fastvit plan --checkpoint") and "--method mctf --r 12" in record["command"]
    code, out, _ = run(capsys, "eval", "--checkpoint", ckpt, "--data", imgs, "--plan", plan, "--json", "--no-progress")
    res = json.loads(out)
    assert code == 0 and res["options"] == MergeOptions("mctf", 12).to_dict()
    code, out, _ = run(capsys, "eval", "--checkpoint", ckpt, "--data", imgs, "--method", "mctf", "--r", "12", "--json",
                       "--no-progress")
    assert json.loads(out)["top1"] == res["top1"]
    code, out, _ = run(capsys, "bench", "--checkpoint", ckpt, "--plan", plan, "--runs", "1", "--batch-size", "2", "--json")
    assert code == 0 and json.loads(out)["options"]["method"] == "mctf"
    sweep = tmp_path / "sweep"
    code, out, _ = run(capsys, "sweep", "--checkpoint", ckpt, "--data", imgs, "--plan", plan, "--plan", plan,
                       "--out", sweep, "--bench-runs", "1", "--json")
    assert code == 0 and [(r["method"], r["r"]) for r in json.loads(out)] == [("mctf", 12)]


@pytest.mark.parametrize("argv,msg", [
    (["predict", "IMAGE", "--checkpoint", "CKPT", "--method", "tome", "--r", "4"],
     "--plan gives the merge options; leave out --method/--r/--target-*"),
    (["bench", "--model", "vit_small_patch16_384"], "this model has depth 12, grid 24x24"),
])
def test_plan_flag_errors_are_one_line(setup, capsys, tmp_path, argv, msg):
    ckpt, imgs = setup
    plan = tmp_path / "plan.json"
    run(capsys, "plan", "--checkpoint", ckpt, "--method", "tome", "--r", "4", "--out", plan)
    argv = [{"IMAGE": next(imgs.iterdir()), "CKPT": ckpt}.get(a, a) for a in argv] + ["--plan", plan]
    code, _, err = run(capsys, *argv)
    errors = [line for line in err.splitlines() if not line.startswith("fastvit: note:")]  # the npz is unnamed
    assert code == 2 and len(errors) == 1 and errors[0].startswith("fastvit: error: ") and msg in errors[0]


# ---------------------------------------------------------------- tune
def test_candidates_meet_the_budget():
    from fastvit_jax.merge.flops import gflops

    target = gflops(CFG, make_plan(CFG, MergeOptions("tome", 20)))
    found, skipped = candidates(CFG, ["tome", "pitome", "tofu", "mctf", "lgtm"], ["k"], target)
    assert {o.method for o in found} == {"tome", "pitome", "tofu", "mctf", "lgtm"}
    for o in found:  # each is the smallest r (the largest keep ratio) meeting the budget
        less = o.replace(keep=round(o.keep + 1e-4, 6)) if o.keep is not None else o.replace(r=o.r - 1)
        assert gflops(CFG, make_plan(CFG, o)) <= target < gflops(CFG, make_plan(CFG, less))
    assert any(o.keep is not None for o in found) and any(o.inflect for o in found)  # schedules are searched
    assert MergeOptions("tome", 20, skip=0) in found
    plans = [make_plan(CFG, o) for o in found]  # no plan is scored twice (tofu skip=1 prune_blocks=0 and =1)
    assert len({(p.ops, p.metric, p.prop_attn) for p in plans}) == len(found)
    assert not any(o.method == "tofu" and o.skip == 1 and o.prune_blocks == 1 for o in found)
    with pytest.raises(FastViTError, match="tune cannot search drop"):
        candidates(CFG, ["drop"], ["k"], target)


@pytest.mark.slow
def test_tune_writes_the_best_plan_and_resumes(setup, capsys, tmp_path):
    ckpt, imgs = setup
    out = tmp_path / "best.json"
    argv = ["tune", "--checkpoint", ckpt, "--data", imgs, "--target-speedup", "1.5", "--methods", "tome,pitome,mctf",
            "--subset", "3", "--finalists", "2", "--batch-size", "4", "--out", out, "--json"]
    code, stdout, _ = run(capsys, *argv)
    res = json.loads(stdout)
    assert code == 0 and out.exists()
    rows = res["rows"]
    assert rows[0]["options"] == res["best"] and rows[0]["top1"] == max(r["top1"] for r in rows)
    assert any(r["options"] == res["reference"] for r in rows)  # ToMe is always scored on all images
    for r in rows:
        assert r["top1_lo"] <= r["top1"] <= r["top1_hi"] and r["gflops"] <= res["target_gflops"] + 1e-12
    assert load_plan_options(out, CFG) == MergeOptions.from_dict(res["best"])
    lines = (tmp_path / "best.json.tune" / "results.jsonl").read_text().splitlines()
    assert len(lines) == res["candidates"] + len({json.dumps(r["options"]) for r in rows})  # subset + full rows
    # a rerun reuses every stored result: nothing is appended
    code, again, _ = run(capsys, *argv)
    assert code == 0 and json.loads(again)["rows"] == rows
    assert (tmp_path / "best.json.tune" / "results.jsonl").read_text().splitlines() == lines
    # other images: refused in one line
    (imgs / "n01496331_5.png").unlink()
    code, _, err = run(capsys, *argv)
    assert code == 2 and "holds tune results with other settings" in err.splitlines()[-1]


def test_tune_with_a_subset_of_every_image(setup, capsys, tmp_path):
    """Stage 2 reuses stage 1's results: with every image in the subset nothing is left to run."""
    ckpt, imgs = setup
    code, stdout, _ = run(capsys, "tune", "--checkpoint", ckpt, "--data", imgs, "--target-speedup", "1.5",
                          "--methods", "tome", "--subset", "1000", "--finalists", "1", "--batch-size", "4",
                          "--out", tmp_path / "all.json", "--json")
    rows = json.loads(stdout)["rows"]
    assert code == 0 and all(r["top1"] == r["subset_top1"] for r in rows)


def test_tune_scores_tome_even_when_its_metric_is_not_searched(setup, capsys, tmp_path):
    """--metrics x_pre leaves ToMe's own metric (k) out of the candidates; ToMe is still the reference."""
    ckpt, imgs = setup
    code, stdout, _ = run(capsys, "tune", "--checkpoint", ckpt, "--data", imgs, "--target-speedup", "1.5",
                          "--methods", "tome", "--metrics", "x_pre", "--subset", "3", "--finalists", "1",
                          "--batch-size", "4", "--out", tmp_path / "p.json", "--json")
    res = json.loads(stdout)
    assert code == 0 and res["reference"]["metric"] == "k"
    assert {r["options"]["metric"] for r in res["rows"]} == {"k", "x_pre"}
    assert MergeOptions.from_dict(res["best"]).metric in ("k", "x_pre")


@pytest.mark.parametrize("extra,msg", [
    ([], "needs one budget"),
    (["--target-gflops", "0.01"], "no candidate meets 0.010 GFLOPs"),
    (["--target-gflops", "0.5", "--methods", "tome,drop"], "tune cannot search drop"),
    (["--target-gflops", "0.5", "--metrics", "k,keys"], "unknown metric 'keys'"),
])
def test_tune_errors_are_one_line(setup, capsys, tmp_path, extra, msg):
    ckpt, imgs = setup
    code, _, err = run(capsys, "tune", "--checkpoint", ckpt, "--data", imgs, "--out", tmp_path / "p.json", *extra)
    errors = [line for line in err.splitlines() if not line.startswith("fastvit: note:")]  # the npz is unnamed
    assert code == 2 and len(errors) == 1 and errors[0].startswith("fastvit: error: ") and msg in errors[0]


@pytest.mark.slow
def test_tune_compiling_ahead_gives_the_sequential_results_and_resumes(setup, capsys, tmp_path, monkeypatch):
    """Plans compiled in a worker thread while another is scored (util/ahead.py): the same results
    file as compiling each in turn; killed mid-search (compiles in flight), a rerun finishes it."""
    import fastvit_jax.search.tune as tune_mod

    ckpt, imgs = setup
    argv = lambda out: ["tune", "--checkpoint", ckpt, "--data", imgs, "--target-speedup", "1.5", "--methods",
                        "tome", "--subset", "3", "--finalists", "2", "--batch-size", "4", "--out", out, "--json"]
    monkeypatch.setenv("FASTVIT_COMPILE_AHEAD", "0")
    code, seq, _ = run(capsys, *argv(tmp_path / "seq.json"))
    assert code == 0
    monkeypatch.setenv("FASTVIT_COMPILE_AHEAD", "2")
    real = interrupt_on_call(monkeypatch, tune_mod, "correct_per_image", 3)
    code, _, _ = run(capsys, *argv(tmp_path / "ahead.json"))
    assert code == 130
    monkeypatch.setattr(tune_mod, "correct_per_image", real)
    code, ahead, _ = run(capsys, *argv(tmp_path / "ahead.json"))
    assert code == 0 and json.loads(ahead)["rows"] == json.loads(seq)["rows"]
    lines = lambda name: sorted((tmp_path / f"{name}.json.tune" / "results.jsonl").read_text().splitlines())
    assert lines("ahead") == lines("seq")
