"""Sweeps: rows as points finish, resume without redoing points, corrupt tail tolerated, plots."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import google_checkpoint, interrupt_on_call
from fastvit_jax.studies import sweep
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.util.plots import pareto_front


def test_parse_r():
    assert sweep.parse_r("0:8:2") == [0, 2, 4, 6, 8]
    assert sweep.parse_r("8,13,16") == [8, 13, 16]
    with pytest.raises(FastViTError, match="bad --r"):
        sweep.parse_r("0:8:0")


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7)]
    assert pareto_front(pts, lower_x_better=True) == [0, 1]
    assert pareto_front(pts, lower_x_better=False) == [3]


@pytest.fixture
def tiny_setup(tmp_path):
    cfg = ViTConfig(width=32, depth=2, heads=2, mlp_dim=64, patch=16, image_size=224, num_classes=1000)
    np.savez(tmp_path / "m.npz", **google_checkpoint(cfg))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ["n01440764_a.jpg", "n01443537_b.jpg", "n01484850_c.jpg"]:
        Image.fromarray(rng.integers(0, 255, (100, 130, 3), dtype=np.uint8)).save(imgs / name)
    return tmp_path / "m.npz", imgs


DESCRIBED = ["--gelu", "tanh", "--preprocessing", "inception"]  # what the test checkpoints are (no note about it)


def _sweep(ckpt, imgs, out, r="0:8:4", extra=()):
    return main(["sweep", "--checkpoint", str(ckpt), "--data", str(imgs), "--methods", "tome,lgtm", "--r", r,
                 "--out", str(out), "--bench-runs", "1", "--batch-size", "2", "--json", *DESCRIBED, *extra])


@pytest.mark.slow
def test_sweep_resume(tiny_setup, tmp_path, capsys, monkeypatch):
    ckpt, imgs = tiny_setup
    out = tmp_path / "sweep"
    assert _sweep(ckpt, imgs, out, r="0,4") == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["r"]) for r in rows] == [("tome", 0), ("tome", 4), ("lgtm", 0), ("lgtm", 4)]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["method", "r", "top1", "top5", "gflops", "images_per_s"]
    for f in ("top1_vs_gflops.png", "top1_vs_gflops.svg", "top1_vs_throughput.png", "top1_vs_throughput.svg"):
        assert (out / f).stat().st_size > 1000
    # an interrupted write leaves half a line; a restart with more r redoes nothing that finished
    with open(out / "results.jsonl", "a") as f:
        f.write('{"method": "tome", "r": 8, "top1"')
    evaluated = _count_evaluations(monkeypatch)
    with pytest.warns(UserWarning, match="corrupt last line"):
        assert _sweep(ckpt, imgs, out, r="0:8:4") == 0
    assert evaluated == ["tome r=8", "lgtm r=8"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len((out / "results.csv").read_text().splitlines()) == 7
    assert not (out / ".fastvit.lock").exists()  # the lock goes with the run
    # rows come in the order asked, and a rerun says what it read back
    capsys.readouterr()
    code = main(["sweep", "--checkpoint", str(ckpt), "--data", str(imgs), "--methods", "lgtm,tome", "--r", "8,0",
                 "--out", str(out), "--bench-runs", "1", "--batch-size", "2", "--json", *DESCRIBED])
    captured = capsys.readouterr()
    assert code == 0 and "4 of 4 points read back from an earlier run" in captured.err
    assert [(r["method"], r["r"]) for r in json.loads(captured.out)][:4] == [("lgtm", 8), ("lgtm", 0), ("tome", 8),
                                                                             ("tome", 0)]


@pytest.mark.slow
def test_remeasure_keeps_accuracy(tiny_setup, tmp_path, capsys):
    ckpt, imgs = tiny_setup
    out = tmp_path / "s"
    assert _sweep(ckpt, imgs, out, r="0,4") == 0
    before = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert main(["sweep", "--checkpoint", str(ckpt), "--data", str(imgs), "--out", str(out), "--remeasure-speed",
                 "--bench-runs", "1", "--batch-size", "2", "--json"]) == 0
    after = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["r"], r["top1"]) for r in after] == [(r["method"], r["r"], r["top1"]) for r in before]
    assert all(r["images_per_s"] > 0 for r in after)


def _count_evaluations(monkeypatch) -> list:
    """Labels of the points the sweep evaluates from now on."""
    evaluated, real = [], sweep.evaluate
    monkeypatch.setattr(sweep, "evaluate", lambda *a, **k: evaluated.append(k["desc"]) or real(*a, **k))
    return evaluated


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sweep_resumes_only_points_with_the_same_options(tiny_setup, tmp_path, capsys, monkeypatch):
    ckpt, imgs = tiny_setup
    out = tmp_path / "sweep"
    assert _sweep(ckpt, imgs, out, r="0,4") == 0
    assert _rows(out)[1]["options"] == MergeOptions("tome", 4).to_dict()
    evaluated = _count_evaluations(monkeypatch)
    assert _sweep(ckpt, imgs, out, r="0,4") == 0
    assert evaluated == []  # same command: nothing redone
    assert _sweep(ckpt, imgs, out, r="4", extra=["--metric", "v"]) == 0
    assert evaluated == ["tome r=4", "lgtm r=4"] and _rows(out)[-1]["options"]["metric"] == "v"
    assert len(_rows(out)) == 6


@pytest.mark.slow
def test_remeasure_rebuilds_plans_from_stored_options(tiny_setup, tmp_path, capsys, monkeypatch):
    ckpt, imgs = tiny_setup
    out = tmp_path / "s"
    assert _sweep(ckpt, imgs, out, r="4", extra=["--window", "3", "--transition", "1", "--no-prop-attn"]) == 0
    seen = []
    real_make_plan = sweep.make_plan
    monkeypatch.setattr(sweep, "make_plan", lambda config, options, **k: seen.append(options)
                        or real_make_plan(config, options, **k))
    assert main(["sweep", "--checkpoint", str(ckpt), "--data", str(imgs), "--out", str(out), "--remeasure-speed",
                 "--bench-runs", "1", "--batch-size", "2", "--json"]) == 0
    want = [MergeOptions(m, 4, window=3, transition=1, prop_attn=False) for m in ("tome", "lgtm")]
    assert seen == want and [r["plan"]["transition"] for r in _rows(out)] == [0, 1]


def test_rows_without_options_are_refused(tiny_setup, tmp_path, capsys):
    ckpt, imgs = tiny_setup
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"method": "tome", "r": 4, "top1": 0.5}) + "\n")
    code = _sweep(ckpt, imgs, out, r="4")
    err = capsys.readouterr().err
    assert code == 2 and "older fastvit" in err and err.count("\n") == 1


def test_duplicates_and_the_dense_point_run_once(tiny_setup, tmp_path, capsys, monkeypatch):
    ckpt, imgs = tiny_setup
    out = tmp_path / "d"
    evaluated = _count_evaluations(monkeypatch)
    assert _sweep(ckpt, imgs, out, r="0,4,4") == 0
    assert evaluated == ["tome r=0", "tome r=4", "lgtm r=4"]  # lgtm r=0 is the same dense model
    rows = _rows(out)
    assert [(r["method"], r["r"]) for r in rows] == [("tome", 0), ("tome", 4), ("lgtm", 0), ("lgtm", 4)]
    assert (rows[0]["top1"], rows[0]["images_per_s"]) == (rows[2]["top1"], rows[2]["images_per_s"])


@pytest.mark.parametrize("spec,msg", [("16:0", "empty range"), ("-2,4", "r must be >= 0"), ("a", "bad --r")])
def test_bad_r_ranges(spec, msg):
    with pytest.raises(FastViTError, match=msg):
        sweep.parse_r(spec)


def test_other_settings_into_the_same_out_are_refused(tiny_setup, tmp_path, capsys):
    ckpt, imgs = tiny_setup
    out = tmp_path / "s"
    assert _sweep(ckpt, imgs, out, r="4") == 0
    capsys.readouterr()
    for extra, what in ((["--limit", "2"], "data.images: 3 there, 2 now"), (["--batch-size", "3"], "batch_size"),
                        (["--preprocessing", "deit"], "preprocess.family: 'inception' there, 'deit' now"),
                        (["--dtype", "bfloat16"], "dtype: None there, 'bfloat16' now"),
                        (["--merge-impl", "dense"], "merge_impl: None there, 'dense' now")):
        code = main(["sweep", "--checkpoint", str(ckpt), "--data", str(imgs), "--methods", "tome", "--r", "4",
                     "--out", str(out), "--bench-runs", "1", "--json", *DESCRIBED,
                     *(["--batch-size", "2"] if "--batch-size" not in extra else []), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "other settings" in err and what in err and err.count("\n") == 1, err
    other = tmp_path / "other.npz"
    np.savez(other, **google_checkpoint(ViTConfig(width=32, depth=2, heads=2, mlp_dim=64, patch=16, image_size=224,
                                                  num_classes=1000), seed=1))
    assert _sweep(other, imgs, out, r="4") == 2 and "model.weights" in capsys.readouterr().err
    assert len(_rows(out)) == 2


def test_committed_benchmark_results_still_match_their_settings(shared_dir):
    """Results recorded before a settings field existed (the config's pool/posemb/distilled, the
    preprocessing's mean/std/interpolation) compare equal to its default, so the committed studies
    resume without new work instead of being refused as "other settings"."""
    from pathlib import Path

    from fastvit_jax.data import image_folder
    from fastvit_jax.studies.demo import bundled_model
    from fastvit_jax.studies.recorded import check_settings
    from fastvit_jax.studies.sweep import SWEEP, sweep_settings

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "deit_tiny"
    params, config, pre = bundled_model()
    settings = sweep_settings(config, params, pre, image_folder(shared_dir / "data" / "imagenet-samples"), 32)
    saved = json.loads((root / "sweep" / "settings.json").read_text())
    assert "distilled" not in saved["model"]["config"] and "mean" not in saved["preprocess"]  # an old record
    for folder in sorted(p for p in root.iterdir() if (p / "settings.json").exists()):
        check_settings(folder, settings, **SWEEP)  # raises naming the difference if any


def test_committed_cifar_study_matches_its_settings(shared_dir):
    from pathlib import Path

    from fastvit_jax.data import open_dataset
    from fastvit_jax.checkpoints.hub import load_model
    from fastvit_jax.studies.recorded import check_settings
    from fastvit_jax.studies.sweep import SWEEP, sweep_settings

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cifar_sam_vs_adamw"
    ds = open_dataset(str(shared_dir / "data" / "cifar10" / "test"))
    for name in ("adamw", "sam"):
        params, config, pre = load_model(f"vit_cifar_{name}")
        saved = json.loads((root / name / "sweep" / "settings.json").read_text())
        settings = sweep_settings(config, params, pre, ds.limit(saved["data"]["images"]), saved["batch_size"])
        check_settings(root / name / "sweep", settings, **SWEEP)


@pytest.mark.slow
def test_sweep_compiling_ahead_gives_the_sequential_results_and_resumes(tmp_path, monkeypatch):
    """Points compiled in a worker thread while another is evaluated (studies/sweep.py
    compiling_ahead): the same results as one at a time; killed after its first point with
    compiles in flight, a rerun finishes it with the same rows."""
    import fastvit_jax.studies.sweep as sweep_mod

    from fastvit_jax.checkpoints import checkpoint
    from fastvit_jax.data import Preprocess, open_dataset
    from fastvit_jax.studies.sweep import run_sweep

    config = ViTConfig(width=32, depth=3, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=1000)
    params = checkpoint.unflatten(google_checkpoint(config))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ["n01440764_a.jpg", "n01443537_b.jpg", "n01484850_c.jpg", "n01491361_d.jpg"]:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(imgs / name)
    pre, ds = Preprocess(size=32), open_dataset(str(imgs))
    points = [MergeOptions("tome", r=r) for r in (2, 4, 6)]
    run = lambda out: run_sweep(config, params, pre, ds, tmp_path / out, points, batch_size=4, bench_runs=1,
                                progress=False, plot=False)
    monkeypatch.setenv("FASTVIT_COMPILE_AHEAD", "0")
    seq = run("seq")
    monkeypatch.setenv("FASTVIT_COMPILE_AHEAD", "2")
    real = interrupt_on_call(monkeypatch, sweep_mod, "evaluate", 2)
    with pytest.raises(KeyboardInterrupt):
        run("ahead")
    monkeypatch.setattr(sweep_mod, "evaluate", real)
    ahead = run("ahead")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]
    assert strip(ahead) == strip(seq)
