"""ATM (size-distinctive matching, thresholds calibrated into a static schedule) against loop
versions in tests/reference.py and the paper's formulas."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from conftest import TINY, google_checkpoint
from fastvit_jax.search import calibrate
from fastvit_jax.cli import main
from fastvit_jax.merge.flops import gflops
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.methods import atm
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.runtime import Runtime


def _groups(out_idx, merged, n_out):
    """out_idx/merged -> groups (receiver first, then members in index order), by output slot."""
    groups = [[] for _ in range(n_out)]
    for i in sorted(range(len(out_idx)), key=lambda i: (bool(merged[i]), i)):
        groups[int(out_idx[i])].append(i)
    return groups


@pytest.mark.parametrize("pre_n,r,seed", [(0, 5, 0), (1, 4, 1), (1, 0, 2), (1, 8, 3), (0, 9, 4)])
def test_size_distinctive_slots_match_the_loop_version(pre_n, r, seed):
    rng = np.random.default_rng(seed)
    n = 19
    metric = rng.standard_normal((n, 8)).astype(np.float32)
    size = rng.integers(1, 5, n).astype(np.float32)  # ties in size: broken by position
    size[:pre_n] = 1
    out_idx, merged, score = atm.atm_slots(jnp.asarray(metric), jnp.asarray(size), r, num_prefix=pre_n)
    n_out = n - r
    got = _groups(np.asarray(out_idx), np.asarray(merged), n_out)
    want = reference.atm_groups(metric, size, r, pre_n)
    assert got == [sorted(g[:1]) + sorted(g[1:]) for g in want]
    assert int(np.sum(np.asarray(merged))) == r
    scored = np.asarray(score)[np.asarray(merged)]
    assert np.all(scored >= -1.0) and np.all(np.asarray(score)[~np.asarray(merged)] == -2.0)


def test_no_large_with_large():
    """Two big tokens that are identical never merge with each other; the small ones go first."""
    metric = np.array([[1, 0], [1, 0], [1, 0.01], [0, 1], [0, 1.01], [1, 0.02]], np.float32)
    size = np.array([8, 8, 1, 1, 1, 8], np.float32)
    _, merged, _ = atm.atm_slots(jnp.asarray(metric), jnp.asarray(size), 3, num_prefix=0)
    merged = np.asarray(merged)
    a = [i for i in range(6) if merged[i]]
    assert sorted(a) == [2, 3, 4] and not merged[[0, 1, 5]].any()


def test_thresholds_are_the_papers_formula():
    t = atm.thresholds(12, 0.9, 0.05, 0.4)
    for layer, value in enumerate(t, 1):
        assert value == pytest.approx(max(0.9 - (math.exp(0.05 * (layer - 1)) - 1), 0.4))
    assert t[0] == pytest.approx(0.9) and t == sorted(t, reverse=True) and t[-1] == pytest.approx(0.4)


@pytest.fixture(scope="module")
def tiny():
    flat = google_checkpoint(TINY, seed=5)
    from fastvit_jax.util.tree import unflatten

    params = jax.tree_util.tree_map(jnp.asarray, unflatten(flat))
    images = np.random.default_rng(0).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    return flat, params, images


def test_whole_model_matches_numpy(tiny):
    flat, params, images = tiny
    options = MergeOptions("atm", r_list=(6, 5, 4, 4))  # depth 4: blocks 0-2 ToMe, block 3 size-distinctive
    plan = make_plan(TINY, options)
    assert [op.rule for op in plan.ops] == ["tome", "tome", "tome", "atm"]
    got = np.asarray(make_forward(TINY, plan)(params, images))
    want = reference.forward(flat, images, heads=2, plan=reference.plan_ops(plan))
    np.testing.assert_allclose(got, want, atol=1e-4)
    dense = np.asarray(make_forward(TINY, None)(params, images))
    for zero in (MergeOptions("atm", r_list=(0, 0, 0, 0)), MergeOptions("atm", r=0)):
        np.testing.assert_array_equal(np.asarray(make_forward(TINY, make_plan(TINY, zero))(params, images)), dense)
    early = make_plan(TINY, MergeOptions("atm", r_list=(6, 5, 4, 4), size_split=1))
    assert [op.rule for op in early.ops] == ["tome", "atm", "atm", "atm"]
    np.testing.assert_allclose(np.asarray(make_forward(TINY, early)(params, images)),
                               reference.forward(flat, images, heads=2, plan=reference.plan_ops(early)), atol=1e-4)


def _block0_counts(flat, images, theta):
    """Block 0's keys in numpy, ToMe's A/B split, how many A tokens have a B at cosine >= theta."""
    counts = []
    for img in images.astype(np.float64):
        p = 4
        patches = img.reshape(8, p, 8, p, 3).transpose(0, 2, 1, 3, 4).reshape(64, -1)
        x = patches @ flat["embedding/kernel"].reshape(-1, 32) + flat["embedding/bias"]
        x = np.concatenate([flat["cls"][0], x]) + flat["Transformer/posembed_input/pos_embedding"][0]
        pre = "Transformer/encoderblock_0/"
        y = reference.layer_norm(x, flat[pre + "LayerNorm_0/scale"], flat[pre + "LayerNorm_0/bias"])
        k = np.einsum("nd,dhk->nhk", y, flat[pre + "MultiHeadDotProductAttention_1/key/kernel"]) \
            + flat[pre + "MultiHeadDotProductAttention_1/key/bias"]
        k = k.mean(1)
        counts.append(sum(max(reference.cosine(k[a], k[b]) for b in range(1, 65, 2)) >= theta
                          for a in range(2, 65, 2)))
    return np.array(counts)


def test_calibration_counts_pairs_above_the_threshold(tiny):
    flat, params, images = tiny
    options = MergeOptions("atm")
    totals = []
    for alpha in (0.3, 0.6):
        got = calibrate.calibrate_schedule(TINY, params, images, options, thresholds=(alpha, 0.0, alpha),
                                           quantile=0.5, batch_size=4)
        counts = _block0_counts(flat, images, alpha)
        assert got.r_list[0] == int(np.quantile(counts, 0.5, method="lower")), (alpha, counts)
        totals.append(sum(got.r_list))
    assert totals[0] >= totals[1]  # higher thresholds merge less
    everything = calibrate.calibrate_schedule(TINY, params, images, options, thresholds=(-1.0, 0.0, -1.0))
    plan = make_plan(TINY, everything)
    assert all(op.r == (op.tokens_in - 1) // 2 for op in plan.ops)  # every A token: half of the patch tokens
    assert calibrate.calibrate_schedule(TINY, params, images, options, thresholds=(1.5, 0.0, 1.5)).r_list == (0,) * 4
    # the iteration settles block after block: any starting guess ends at the same schedule
    stats: dict = {}
    guessed = calibrate.calibrate_schedule(TINY, params, images, options, thresholds=(0.3, 0.0, 0.3), batch_size=4,
                                           start=(20, 0, 9, 1), stats=stats)
    assert guessed.r_list == calibrate.calibrate_schedule(TINY, params, images, options, thresholds=(0.3, 0.0, 0.3),
                                                          batch_size=4).r_list and stats["passes"] <= 5


def test_calibration_thresholds_are_arguments_of_one_program(tiny):
    """One counting program is compiled once and serves every alpha of a bisection and every
    schedule of the fixed point (both are data); its counts still follow each alpha (block 0
    against numpy)."""
    flat, params, images = tiny
    run = calibrate._count_runner(TINY, MergeOptions("atm"), TINY.depth, Runtime())
    for alpha in (0.3, 0.6):
        for r_list in ((0,) * 4, (5, 3, 0, 2)):
            counts = np.asarray(run(params, images, np.full(4, alpha, np.float32), np.asarray(r_list, np.int32)))
            np.testing.assert_array_equal(counts[0], _block0_counts(flat, images, alpha))
    assert run._cache_size() == 1


@pytest.mark.parametrize("method,split", [("atm", 2), ("tome", 4)])
def test_shared_counting_program_counts_as_the_exact_plan(tiny, method, split):
    """The shared program (every slot kept, r as data) counts what each schedule's own exact plan
    counts, block by block: ToMe's halves and ATM's size-distinctive ones past merged tokens."""
    from fastvit_jax.models.vit import VisionTransformer, observe

    _, params, images = tiny
    base = MergeOptions(method, size_split=split) if method == "atm" else MergeOptions(method)
    theta = np.asarray(atm.thresholds(4, 0.6, 0.2, 0.1), np.float32)
    run = calibrate._count_runner(TINY, base, split, Runtime())
    for r_list in ((0, 8, 3, 5),):  # a block that merges nothing, then merges on padded slots
        plan = make_plan(TINY, base.replace(r_list=r_list))
        _, blocks = jax.jit(lambda p, x: observe(VisionTransformer(TINY, plan), p, x))(params, images)
        want = np.stack([calibrate.pair_counts(blocks[i]["metric"], blocks[i]["size"], theta[i], num_prefix=1,
                                               distill_token=False, size_distinctive=i >= split) for i in range(4)])
        got = run(params, images, theta, np.asarray(r_list, np.int32))
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_calibration_to_a_budget(tiny):
    _, params, images = tiny
    target = 0.6 * gflops(TINY, None)
    options, alpha = calibrate.calibrate_to_budget(TINY, params, images, MergeOptions("atm"), target, beta=0.02,
                                                   floor=-1.0, steps=4)
    assert gflops(TINY, make_plan(TINY, options)) <= target and -1.0 <= alpha <= 1.0
    higher = calibrate.calibrate_schedule(TINY, params, images, MergeOptions("atm"),
                                          thresholds=(min(alpha + 2 / 2 ** 4, 1.0), 0.02, -1.0))
    assert gflops(TINY, make_plan(TINY, higher)) >= gflops(TINY, make_plan(TINY, options))


def test_plan_calibrate_command(tmp_path, capsys):
    from PIL import Image

    flat = google_checkpoint(TINY, seed=5)
    path = tmp_path / "m.npz"
    np.savez(path, **flat)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    argv = ["plan", "--checkpoint", path, "--gelu", "tanh", "--preprocessing", "inception", "--method", "atm",
            "--calibrate", data, "--thresholds", "0.3,0.02,0.1", "--out", tmp_path / "p.json", "--json"]
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["gflops"] < gflops(TINY, None) and res["options"]["r_list"] and res["calibration"]["images"] == 6
    assert json.loads((tmp_path / "p.json").read_text())["calibration"]["thresholds"] == [0.3, 0.02, 0.1]
    code = main([str(a) for a in ["eval", "--checkpoint", path, "--gelu", "tanh", "--preprocessing", "inception",
                                  "--data", data, "--plan", tmp_path / "p.json", "--json", "--no-progress"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["gflops"] == pytest.approx(res["gflops"])
    code = main([str(a) for a in ["plan", "--checkpoint", path, "--method", "pitome", "--calibrate", data]])
    err = capsys.readouterr().err
    assert code == 2 and "calibration schedules atm (or tome, dfe), not 'pitome'" in err.strip().splitlines()[-1]
    for bad in ("0.9,0.03", "nan,0.03,0.5", "0.9,inf,0.5", "a,b,c"):
        code = main([str(a) for a in ["plan", "--checkpoint", path, "--method", "atm", "--calibrate", data,
                                      "--thresholds", bad]])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "expected ALPHA,BETA,MIN (three finite numbers)" in err
