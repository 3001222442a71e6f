"""The Flax ViT against the independent numpy forward, on checkpoints in the exact Google layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import variant_config
from fastvit_jax.models.forward import make_forward
from fastvit_jax.errors import FastViTError
from fastvit_jax.runtime import Runtime
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan


def _images(config, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, config.image_size, config.image_size, 3)).astype(np.float32)


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_tiny_matches_numpy(tmp_path, tiny_config, gelu):
    config = tiny_config.replace(gelu=gelu)
    flat = google_checkpoint(config)
    np.savez(tmp_path / "c.npz", **flat)
    params, loaded = checkpoint.load(tmp_path / "c.npz", config)
    images = _images(config)
    got = make_forward(loaded)(params, images)
    want = reference.forward(flat, images, heads=config.heads, gelu_exact=gelu == "exact")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_pre_logits_matches_numpy(tmp_path, tiny_config):
    config = tiny_config.replace(pre_logits=24)
    flat = google_checkpoint(config)
    np.savez(tmp_path / "c.npz", **flat)
    params, loaded = checkpoint.load(tmp_path / "c.npz")  # inferred, including pre_logits
    assert loaded.pre_logits == 24
    images = _images(config)
    np.testing.assert_allclose(make_forward(loaded)(params, images),
                               reference.forward(flat, images, heads=config.heads), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["Ti/16", "S/16", "B/16"])
def test_google_shapes_match_numpy(tmp_path, variant):
    """Real ViT shapes: logits and top-5 probabilities equal to the numpy forward to 1e-4."""
    config = variant_config(variant)
    flat = google_checkpoint(config)
    np.savez(tmp_path / "c.npz", **flat)
    params, loaded = checkpoint.load(tmp_path / "c.npz")
    assert loaded == config
    images = _images(config, n=1)
    got = np.asarray(make_forward(loaded)(params, images))
    want = reference.forward(flat, images, heads=config.heads)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(jax.nn.softmax(got), reference.softmax(want), atol=1e-5)


def test_dense_plans_are_bit_identical(tiny_config):
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    images = _images(tiny_config, 3)
    base = np.asarray(make_forward(tiny_config)(params, images))
    for method in ("none", "tome", "dfe", "lgtm", "drop"):
        plan = make_plan(tiny_config, MergeOptions(method, 0))
        np.testing.assert_array_equal(np.asarray(make_forward(tiny_config, plan)(params, images)), base)


@pytest.mark.parametrize("attention", ["einsum", "fused"])
def test_bfloat16_close_to_float32(tiny_config, attention):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = _images(tiny_config, 2)
    f32 = np.asarray(make_forward(tiny_config)(params, images))
    bf16 = np.asarray(make_forward(tiny_config, None, Runtime(dtype="bfloat16", attention=attention))(params, images))
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def test_bfloat16_merges_on_a_float32_stream_and_metric(tiny_config):
    """In bfloat16 the residual stream stays float32, and the merge feature is the float32 matmul
    of the float32 LayerNorm output with the heads' mean key kernel (not the mean of bfloat16 keys,
    which would be ~1e-2 off)."""
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = _images(tiny_config, 2)
    plan = make_plan(tiny_config, MergeOptions("tome", 2))
    from fastvit_jax.models.vit import VisionTransformer

    model = VisionTransformer(tiny_config, plan, Runtime(dtype="bfloat16"))
    _, inter = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(params, images)
    for i in range(tiny_config.depth):
        block = inter["intermediates"]["Transformer"][f"encoderblock_{i}"]
        assert block["x_post"][0].dtype == jnp.float32
        y = np.asarray(block["x_pre"][0], np.float64)  # LayerNorm_0's float32 output
        key = params["Transformer"][f"encoderblock_{i}"]["MultiHeadDotProductAttention_1"]["key"]
        want = y @ np.asarray(key["kernel"], np.float64).mean(1) + np.asarray(key["bias"], np.float64).mean(0)
        np.testing.assert_allclose(np.asarray(block["metric"][0]), want, atol=2e-5, rtol=2e-5)


def test_bfloat16_top5_agrees_on_real_images():
    """The bundled DeiT-Tiny on its 32 real images, ToMe r=13: bfloat16 keeps float32's top-1 in
    its top-5 on every image, and the same top-1 on nearly all."""
    from fastvit_jax.data import image_folder, load_arrays
    from fastvit_jax.studies.demo import bundled_model
    from fastvit_jax.checkpoints.registry import asset_path

    params, config, pre = bundled_model()
    images, _ = load_arrays(image_folder(asset_path("images")), pre)
    plan = make_plan(config, MergeOptions("tome", 13))
    f32 = np.asarray(make_forward(config, plan)(params, images))
    bf16 = np.asarray(make_forward(config, plan, Runtime(dtype="bfloat16"))(params, images))
    top5 = np.argsort(-bf16, axis=1)[:, :5]
    assert all(f32[i].argmax() in top5[i] for i in range(len(images)))
    assert (f32.argmax(1) == bf16.argmax(1)).mean() >= 30 / 32


def test_param_tree_is_google_tree(tiny_config):
    keys = set(checkpoint.expected_shapes(tiny_config))
    assert {"embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding", "head/kernel",
            "Transformer/encoder_norm/scale",
            "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel",
            "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias"} <= keys
    shapes = checkpoint.expected_shapes(variant_config("B/16"))
    assert shapes["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"] == (768, 12, 64)
    assert shapes["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"] == (12, 64, 768)
    assert shapes["embedding/kernel"] == (16, 16, 3, 768)
    assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 197, 768)


@pytest.mark.parametrize("method", ["none", "tome", "lgtm"])
def test_examples_per_step_matches_whole_batch_and_numpy(tiny_config, method):
    """Stepping through the batch (2 + 2 + a remainder of 1) gives the whole-batch logits."""
    flat = google_checkpoint(tiny_config)
    params = checkpoint.unflatten(flat)
    images = _images(tiny_config, 5)
    plan = make_plan(tiny_config, MergeOptions(method, 2, window=2))
    whole = np.asarray(make_forward(tiny_config, plan, Runtime(examples_per_step=None))(params, images))
    stepped = np.asarray(make_forward(tiny_config, plan, Runtime(examples_per_step=2))(params, images))
    np.testing.assert_allclose(stepped, whole, atol=1e-5, rtol=1e-5)
    if method == "none":
        np.testing.assert_allclose(stepped, reference.forward(flat, images, heads=tiny_config.heads),
                                   atol=1e-4, rtol=1e-4)


def test_random_metric_draws_fresh_features_in_every_step(tiny_config):
    params = checkpoint.unflatten(google_checkpoint(tiny_config))
    images = np.repeat(_images(tiny_config, 1), 4, axis=0)
    plan = make_plan(tiny_config, MergeOptions("tome", 3, metric="random"))
    logits = np.asarray(make_forward(tiny_config, plan, Runtime(examples_per_step=1))(params, images))
    assert not np.allclose(logits[0], logits[1]) and not np.allclose(logits[1], logits[2])


def test_auto_examples_per_step_fits_the_cache():
    from fastvit_jax.runtime import CPU_STEP_BYTES, auto_examples_per_step, resolve_examples_per_step

    assert auto_examples_per_step(variant_config("S/16"), backend="cpu") == 8
    assert auto_examples_per_step(variant_config("B/16"), backend="cpu") == 4
    assert auto_examples_per_step(variant_config("L/16"), backend="cpu") == 3
    assert auto_examples_per_step(variant_config("H/14"), backend="cpu") == 1
    for variant in ("Ti/16", "S/16", "B/16", "L/16"):
        config = variant_config(variant)
        n = auto_examples_per_step(config, backend="cpu")
        assert n * (config.num_patches + 1) * config.mlp_dim * 4 <= CPU_STEP_BYTES
    assert auto_examples_per_step(variant_config("S/16"), backend="gpu") is None
    assert resolve_examples_per_step("none", variant_config("S/16")) is None
    assert resolve_examples_per_step("3", variant_config("S/16")) == 3
    with pytest.raises(Exception, match="positive integer, got 'x'"):
        resolve_examples_per_step("x", variant_config("S/16"))


@pytest.mark.parametrize("batch,per_step,sizes", [(32, 17, [16] * 32), (5, 2, [2, 2, 2, 2, 1]), (3, 8, [3] * 3),
                                                  (7, 3, [3] * 6 + [1])])
def test_in_steps_balances_the_steps(batch, per_step, sizes):
    from fastvit_jax.models.forward import in_steps

    step_size = lambda x, key: jnp.full((x.shape[0],), x.shape[0])  # each example reports its step's size
    got = in_steps(step_size, jnp.zeros((batch, 2)), jax.random.PRNGKey(0), per_step)
    assert got.tolist() == sizes


@pytest.mark.parametrize("method", ["none", "tome", "lgtm", "mctf"])
def test_fused_attention_matches_einsum_and_numpy(tmp_path, tiny_config, method):
    """jax.nn.dot_product_attention with proportional attention's log(size) as its bias: the
    numpy reference's logits, and today's einsum attention's to 1e-5 (MCTF's blocks read the
    attention map, so they keep the einsum; its dense blocks fuse)."""
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan

    flat = google_checkpoint(tiny_config, seed=3)
    params = checkpoint.unflatten(flat)
    images = _images(tiny_config)
    plan = make_plan(tiny_config, MergeOptions(method, 6 if method != "none" else 0, window=3))
    fused = np.asarray(make_forward(tiny_config, plan, Runtime(attention="fused"))(params, images))
    einsum = np.asarray(make_forward(tiny_config, plan, Runtime(attention="einsum"))(params, images))
    np.testing.assert_allclose(fused, einsum, atol=1e-5, rtol=1e-5)
    want = reference.forward(flat, images, heads=tiny_config.heads, plan=reference.plan_ops(plan),
                             metric_name=plan.metric, prop_attn=plan.prop_attn)
    np.testing.assert_allclose(fused, want, atol=1e-4, rtol=1e-4)


def test_runtime_resolves_per_backend(tiny_config):
    rt = Runtime().resolved(tiny_config, backend="cpu")
    assert (rt.merge_impl, rt.attention, rt.examples_per_step is not None) == ("gather", "einsum", True)
    gpu = Runtime(dtype="bfloat16").resolved(tiny_config, backend="gpu")
    assert (gpu.merge_impl, gpu.attention, gpu.examples_per_step) == ("gather", "fused", None)
    assert Runtime().resolved(tiny_config, backend="tpu").merge_impl == "dense"
    with pytest.raises(FastViTError, match="unknown attention 'flash'; allowed: auto, einsum, fused"):
        Runtime(attention="flash")


def test_aligned_plan_matches_numpy(tiny_config):
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan

    flat = google_checkpoint(tiny_config, seed=4)
    images = _images(tiny_config)
    plan = make_plan(tiny_config, MergeOptions("tome", 5, align=8))
    assert [op.tokens_out for op in plan.ops] == [64, 56, 48, 48]  # 65 tokens; plain r=5: 60, 55, 50, 45
    got = np.asarray(make_forward(tiny_config, plan)(checkpoint.unflatten(flat), images))
    want = reference.forward(flat, images, heads=tiny_config.heads, plan=reference.plan_ops(plan))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
