"""The library API (`fastvit_jax.load` -> Model): README's Library section runs as written and agrees
with the CLI; the obvious input forms are taken and the wrong ones refused in one FastViTError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import fastvit_jax as fv
from conftest import TINY, google_checkpoint
from fastvit_jax.cli import main
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan

README = Path(__file__).resolve().parents[1] / "README.md"


def library_section() -> str:
    text = README.read_text()
    section = text[text.index("## Library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny.npz"
    np.savez(path, **google_checkpoint(TINY, seed=3))
    return path


@pytest.mark.slow
def test_readme_library_section_runs_and_agrees_with_the_cli(capsys):
    code = library_section()
    assert code.count("import") == 1 and len(code.strip().splitlines()) <= 10
    scope: dict = {}
    exec(code, scope)  # noqa: S102 (README's own text)
    capsys.readouterr()  # what README's own print wrote
    model, tome, lgtm, images = scope["model"], scope["tome"], scope["lgtm"], scope["images"]
    assert lgtm.gflops <= tome.gflops < model.gflops and scope["features"].shape == (4, 192)
    # logits: the same numbers as the forward built by hand, and the CLI's predict --json probabilities
    by_hand = make_forward(model.config, make_plan(model.config, MergeOptions("tome", r=13)))(model.params, images)
    np.testing.assert_array_equal(np.asarray(scope["logits"]), np.asarray(by_hand))
    paths = [str(p) for p in fv.bundled_images()[:4]]
    assert main(["predict", *paths, "--method", "tome", "--r", "13", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    probs = np.asarray(jax.nn.softmax(np.asarray(scope["logits"])))
    for row, p in zip(rows, probs):
        assert row["options"]["method"] == "tome" and row["options"]["r"] == 13
        assert row["gflops"] == pytest.approx(tome.gflops)
        for t in row["top5"]:
            assert t["prob"] == pytest.approx(float(p[t["index"]]), abs=1e-6)
    # gflops: what `fastvit plan` says for the same flags
    assert main(["plan", "--method", "tome", "--r", "13", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gflops"] == pytest.approx(tome.gflops)
    assert scope["fast"].runtime.dtype == "bfloat16" and scope["fast"].plan == tome.plan


def test_load_takes_a_path_or_a_name_as_its_one_source(tiny_file):
    by_path = fv.load(str(tiny_file), gelu="tanh", preprocessing="inception")
    assert by_path.config.depth == TINY.depth and by_path.source == str(tiny_file)
    assert fv.load(tiny_file, gelu="tanh", preprocessing="inception").config == by_path.config  # a Path too
    with pytest.raises(fv.FastViTError, match="did you mean 'vit_small_patch16_224'"):
        fv.load("vit_smal_patch16_224")
    with pytest.raises(fv.FastViTError, match="not found"):
        fv.load("missing_file.npz")
    random = fv.load("vit_tiny_patch16_224", random_weights=True)
    assert random.config.width == 192 and not random.notes


def test_merge_takes_a_name_options_a_plan_or_a_budget(tiny_file):
    model = fv.load(tiny_file, gelu="tanh", preprocessing="inception")
    by_name = model.merge("tome", r=3)
    assert by_name.plan == make_plan(model.config, MergeOptions("tome", r=3))
    assert model.merge(MergeOptions("tome", r=3)).plan == by_name.plan
    assert model.merge(by_name.plan).plan is by_name.plan
    assert model.plan is None and model.merge("none").gflops == pytest.approx(model.gflops)
    budget = 0.8 * model.gflops
    chosen = model.merge("tome", target_gflops=budget)
    assert chosen.gflops <= budget < model.merge("tome", r=chosen.plan.r - 1).gflops
    with pytest.raises(fv.FastViTError, match="needs a merging method"):
        model.merge(target_gflops=budget)
    with pytest.raises(fv.FastViTError, match="method"):
        model.merge("nonsense")
    with pytest.raises(fv.FastViTError, match="merge options must be a method name or MergeOptions"):
        fv.make_plan(model.config, 16)
    assert fv.make_plan(model.config, "tome").options == MergeOptions("tome")


def test_raw_arrays_are_refused_with_what_to_pass(tiny_file):
    model = fv.load(tiny_file, gelu="tanh", preprocessing="inception")
    s = TINY.image_size
    cases = [(np.zeros((2, s, s, 3), np.uint8), "uint8 pixels"),
             (np.zeros((2, 3, s, s), np.float32), "channels-first"),
             (np.zeros((s, s, 3), np.float32), r"add a batch axis"),
             (np.zeros((2, s, s, 4), np.float32), "4 channels"),
             (np.zeros((2, s + 1, s + 1, 3), np.float32), f"model expects {s}x{s}")]
    for images, words in cases:
        with pytest.raises(fv.FastViTError, match=words):
            model(images)
        with pytest.raises(fv.FastViTError, match=words):  # the plain jitted forward refuses them too
            make_forward(model.config)(model.params, images)
    with pytest.raises(fv.FastViTError, match="model.predict"):
        model(["a.jpg"])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2, s, s, 3), dtype=np.uint8)
    x = model.preprocess(list(pixels))
    assert x.dtype == np.float32 and x.shape == (2, s, s, 3)
    np.testing.assert_allclose(x, pixels / 127.5 - 1.0, atol=1e-6)
    top = model.predict(pixels[0], k=2)  # one uint8 image: preprocessed here
    assert len(top) == 1 and len(top[0]) == 2 and top[0][0]["prob"] >= top[0][1]["prob"]
    assert np.argmax(np.asarray(model(x[:1]))[0]) == top[0][0]["index"]
    with pytest.raises(fv.FastViTError, match="uint8 pixels"):
        model.preprocess(np.zeros((s, s, 3), np.float32))


def test_embed_and_runtime_of_a_merged_model(tiny_file):
    model = fv.load(tiny_file, gelu="tanh", preprocessing="inception").merge("tome", r=4)
    x = np.random.default_rng(1).standard_normal((3, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    out = model.embed(x, tokens=True)
    assert out["features"].shape == (3, TINY.width) and out["tokens"].shape[1] == model.plan.ops[-1].tokens_out
    np.testing.assert_allclose(out["sizes"].sum(1), TINY.num_prefix + TINY.grid[0] * TINY.grid[1], rtol=0)
    steps = model.with_runtime(examples_per_step=1)
    assert steps.plan == model.plan and steps.params is model.params
    np.testing.assert_allclose(np.asarray(steps(x)), np.asarray(model(x)), atol=1e-5)
    assert "GFLOPs" in model.describe() and "tome" in repr(model)
