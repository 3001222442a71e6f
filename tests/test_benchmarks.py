"""The benchmark scripts run end to end on tiny inputs and write what they promise (numbers checked
elsewhere against references; here: files, keys, resumability)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.models.vit import init_params
from fastvit_jax.checkpoints.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tiny_labelled(tmp_path):
    """Structure, not numbers: a tiny random CIFAR-shaped model (8 x 8 tokens) and 6 labelled images."""
    import jax

    rng = np.random.default_rng(0)
    for cls in ("airplane", "cat"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    config = REGISTRY["vit_cifar_patch4_32"].config
    checkpoint.save_npz(jax.tree_util.tree_map(np.asarray, init_params(config)), tmp_path / "tiny.npz")
    return tmp_path / "data", tmp_path / "tiny.npz"


@pytest.mark.slow
def test_merge_regions_writes_matched_plans(tiny_labelled, tmp_path, capsys):
    data, ckpt = tiny_labelled
    script("merge_regions").main(["--data", str(data), "--num-images", "4", "--model", "vit_cifar_patch4_32",
                                  "--checkpoint", str(ckpt), "--tome-r", "4", "--window", "3", "--skip", "1",
                                  "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "regions_32.json").read_text())
    assert [r["method"] for r in rows] == ["tome", "lgtm", "lgtm"] and all(r["images"] == 4 for r in rows)
    assert all(0 <= r["connected_share"] <= 1 for r in rows)
    assert abs(rows[1]["final_tokens"] - rows[0]["final_tokens"]) <= 4  # matched token counts


@pytest.mark.slow
def test_sharpness_table2_resumes(tiny_labelled, tmp_path, capsys):
    data, ckpt = tiny_labelled
    mod, out = script("sharpness_table2"), tmp_path / "s.json"
    args = ["--model", "vit_cifar_patch4_32", "--checkpoint", str(ckpt), "--data", str(data), "--num-images", "4",
            "--micro-batch", "2", "--iters", "2", "--configs", "none:0:0,tome:4:0", "--out", str(out)]
    mod.main(args)
    first = json.loads(out.read_text())
    assert [(r["method"], r["r"]) for r in first] == [("none", 0), ("tome", 4)] and all(r["hvps"] == 2 for r in first)
    mod.main(args[:-4] + ["--configs", "none:0:0,tome:4:0,tome:4:2", "--out", str(out)])
    second = json.loads(out.read_text())
    assert second[:2] == first and (second[2]["method"], second[2]["skip"]) == ("tome", 2)


@pytest.mark.slow
def test_cifar_study_on_tiny_data(tmp_path, capsys):
    config = REGISTRY["vit_cifar_patch4_32"].config
    rng = np.random.default_rng(0)
    for cls in ("airplane", "cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.jpg")
    import jax

    for seed, name in enumerate(("a", "s")):
        checkpoint.save_npz(jax.tree_util.tree_map(np.asarray, init_params(config, jax.random.key(seed))),
                            tmp_path / f"{name}.npz")
    out = tmp_path / "out"
    script("cifar_sam_vs_adamw").main(["--data", str(tmp_path / "data"), "--adamw", str(tmp_path / "a.npz"),
                                       "--sam", str(tmp_path / "s.npz"), "--model", "vit_cifar_patch4_32",
                                       "--window", "4", "--methods", "tome,lgtm", "--r", "0,2", "--sharp-r", "2",
                                       "--sharp-images", "6", "--lanczos-steps", "2", "--batch-size", "8", "--bench-runs", "2",
                                       "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"adamw", "sam"}
    assert set(summary["sam"]["lambda"]) == {"dense", "tome r=2 skip 0", "tome r=2 skip 2"}
    assert {(r["method"], r["r"]) for r in summary["adamw"]["sweep"]} == {("tome", 0)} | {
        (m, 2) for m in ("tome", "lgtm")}  # dense (r = 0) is measured once
    assert (out / "accuracy_drop_vs_r.png").exists() and "dense top-1" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_bench_merging_round_robin_table(tmp_path, capsys):
    out = tmp_path / "bm.json"
    script("bench_merging").main(["--models", "vit_cifar_patch4_32", "--methods", "tome,lgtm", "--r", "4",
                                  "--batch-size", "3", "--runs", "2", "--warmup-s", "0", "--no-peer",
                                  "--examples-per-step", "2", "--merge-impls", "gather,dense", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["r"], r["merge_impl"]) for r in rows] == [("none", 0, None)] + [
        (m, 4, impl) for m in ("tome", "lgtm") for impl in ("gather", "dense")]
    assert all(r["runs"] == 2 and r["examples_per_step"] == 2 and r["peer_images_per_s"] is None for r in rows)
    dense = rows[0]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["images_per_s"] / dense["images_per_s"])
        assert r["ideal_speedup"] == pytest.approx(dense["gflops"] / r["gflops"])
    assert rows[1]["gflops"] == rows[2]["gflops"] < dense["gflops"] and rows[3]["gflops"] == rows[4]["gflops"]
    assert "lgtm" in capsys.readouterr().out


@pytest.mark.slow
def test_merge_overhead_brackets_and_reports(tmp_path, capsys):
    from fastvit_jax.merge.flops import gflops
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan

    mod, out = script("merge_overhead"), tmp_path / "mo.json"
    config = REGISTRY["vit_cifar_patch4_32"].config
    target = gflops(config, make_plan(config, MergeOptions("lgtm", 4)))
    lo, hi = mod.tome_bracket(config, target)
    g = [gflops(config, make_plan(config, MergeOptions("tome", r))) for r in (lo, hi)]
    assert hi == lo + 1 and g[0] > target >= g[1]
    mod.main(["--model", "vit_cifar_patch4_32", "--methods", "lgtm", "--r", "4", "--batch-size", "2",
              "--rounds", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["r"]) for r in rows] == [("none", 0), ("tome", lo), ("tome", hi), ("lgtm", 4)]
    assert all(r["images_per_s"] > 0 and r["free_images_per_s"] > 0 for r in rows)
    assert rows[-1]["vs_tome"] > 0 and "vs_tome_free" in rows[-1]


def test_hlo_census_counts_kernels_and_hazards(tmp_path, capsys):
    import jax
    import jax.numpy as jnp

    mod, out = script("hlo_census"), tmp_path / "census.json"
    sorted_plus_one = jax.jit(lambda x: jnp.sort(x) + 1).lower(jnp.zeros(64)).compile().as_text()
    assert mod.count_compiled(sorted_plus_one)["total"] >= 1
    assert mod.count_lowered("%0 = stablehlo.sort(%a) %1 = chlo.top_k(%b) %2 = stablehlo.gather(%c)") == {
        "sort": 1, "scatter": 0, "gather": 1, "top_k": 1, "dynamic_slice": 0, "while": 0, "custom_call": 0}
    mod.main(["--models", "vit_cifar_patch4_32", "--points", "tome:4", "--batch-size", "2", "--out", str(out)])
    rows = {(r["method"], r["merge_impl"]): r for r in json.loads(out.read_text())["rows"]}
    dense_impl, gather_impl = rows[("tome", "dense")], rows[("tome", "gather")]
    for platform in ("cuda", "tpu"):
        assert all(dense_impl[f"{platform}.{k}"] == 0 for k in ("sort", "scatter", "gather", "top_k"))
        assert gather_impl[f"{platform}.top_k"] > 0 and gather_impl[f"per_block.{platform}.scatter"] > 0
    assert dense_impl["merging_blocks"] == 6 and dense_impl["compiled.total"] > rows[("none", None)]["compiled.total"]


@pytest.mark.slow
def test_reducers_real_on_a_few_shared_images(shared_dir, tmp_path):
    """The bundled DeiT-Tiny on 12 + 12 real images: matched-GFLOPs points with paired intervals."""
    out = tmp_path / "rr"
    script("reducers_real").main(["--shared", str(shared_dir / "data"), "--limit", "12", "--budgets", "",
                                  "--methods", "tome,pitome", "--no-tune", "--part", "imagenet", "--bench-runs", "0",
                                  "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"samples": 12, "val1300": 12}
    rows = summary["rows"]
    assert {(r["method"], round(r["budget"], 4)) for r in rows} == {
        (m, round(b, 4)) for m in ("tome", "pitome") for b in summary["tome_budgets"].values()}
    for r in rows:
        assert r["gflops"] <= r["budget"] + 1e-12 and 0 <= r["union_top1"] <= 1
        assert r["union_top1"] == pytest.approx((r["samples_top1"] + r["val1300_top1"]) / 2)
        if r["method"] == "tome":
            assert r["union_vs_tome"] == 0 and r["union_vs_tome_lo"] == r["union_vs_tome_hi"] == 0
    assert (out / "top1_vs_gflops.png").exists() and "paired" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_compile_cost_writes_its_rows(tmp_path, capsys):
    out = tmp_path / "cc.json"
    assert script("compile_cost").main(["--models", "vit_tiny_patch16_224", "--batch-sizes", "1", "--points",
                                        "dense,ppt", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["point"] for r in rows] == ["dense", "ppt"] and rows[0]["vs_dense"] == 1.0
    assert rows[0]["block_shapes"] == 1 and rows[1]["block_shapes"] == 4  # PPT reduces in 3 blocks
    assert all(r["compile_s"] > 0 and r["ops"] > 100 for r in rows) and "compile_s" in capsys.readouterr().out
    assert script("compile_cost").main(["--points", "nonsense", "--out", str(out)]) == 2


def test_fusion_bodies_counts_shared_kernels(tmp_path):
    """Dense blocks share their kernels (every body used many times); the exact merged plan's blocks
    do not, and one token bucket makes them shared again."""
    mod = script("fusion_bodies")
    text = "\n".join(["%fused_a (p: f32[2]) -> f32[2] {", "  %x.1 = f32[2] parameter(0)", "  ROOT %y = f32[2] negate(%x.1)",
                      "}", "%fused_b (q: f32[2]) -> f32[2] {", "  %x.7 = f32[2] parameter(0)",
                      "  ROOT %z.2 = f32[2] negate(%x.7)", "}", "ENTRY %main {", "}"])
    assert list(mod.fusion_bodies(text).values()) == [2]  # the same body under other names: one kernel
    out = tmp_path / "fb.json"
    for buckets in ("none", "1"):
        assert mod.main(["--model", "vit_tiny_patch16_224", "--batch-size", "1", "--points", "dense,tome r=8",
                         "--token-buckets", buckets, "--out", str(out)]) == 0
        dense, tome = json.loads(out.read_text())["rows"]
        if buckets == "none":
            exact = tome["distinct"]
        else:
            assert tome["distinct"] < exact / 2 and dense["distinct"] < tome["distinct"]


def test_shared_program_writes_its_rows(tmp_path, capsys):
    import jax

    cached = jax.config.jax_enable_compilation_cache
    out = tmp_path / "shared.json"
    assert script("shared_program").main(["--model", "vit_cifar_patch4_32", "--r", "4", "--buckets", "2",
                                          "--batch-size", "2", "--rounds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["point"] for r in rows] == ["dense", "exact", "shared, 2 buckets"]
    assert all(r["compile_s"] > 0 and r["run_s"] > 0 for r in rows) and rows[1]["run_vs_exact"] == 1.0
    assert jax.config.jax_enable_compilation_cache == cached  # the rest of the suite keeps its cache
