"""SAM against hand-computed steps; training resumes to exactly the uninterrupted result."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.studies import train as train_mod
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.vit import init_params
from fastvit_jax.studies.sam import sam

MICRO = ViTConfig(width=8, depth=1, heads=2, mlp_dim=8, patch=8, image_size=16, num_classes=3)


def test_sam_step_by_hand():
    # loss = 0.5 * (3 w0^2 + w1^2); g = (3 w0, w1). At w = (1, 2): g = (3, 2), ||g|| = sqrt(13).
    loss = lambda w: 0.5 * (3 * w[0] ** 2 + w[1] ** 2)
    w = jnp.array([1.0, 2.0])
    rho, lr = 0.1, 0.5
    opt = sam(optax.sgd(lr), rho)
    g = jax.grad(loss)(w)
    updates, _ = opt.update(g, opt.init(w), w, grad_fn=jax.grad(loss))
    e = rho * np.array([3.0, 2.0]) / np.sqrt(13.0)
    w_adv = np.array([1.0, 2.0]) + e
    want = np.array([1.0, 2.0]) - lr * np.array([3 * w_adv[0], w_adv[1]])
    np.testing.assert_allclose(optax.apply_updates(w, updates), want, rtol=1e-6)


def test_adaptive_sam_step_by_hand():
    loss = lambda w: 0.5 * (3 * w[0] ** 2 + w[1] ** 2)
    w = jnp.array([1.0, 2.0])
    opt = sam(optax.sgd(1.0), 0.1, adaptive=True)
    updates, _ = opt.update(jax.grad(loss)(w), opt.init(w), w, grad_fn=jax.grad(loss))
    tg = np.array([1.0 * 3.0, 2.0 * 2.0])  # |w| * g
    e = 0.1 * np.array([1.0, 4.0]) * np.array([3.0, 2.0]) / np.linalg.norm(tg)  # rho w^2 g / ||w g||
    w_adv = np.array([1.0, 2.0]) + e
    np.testing.assert_allclose(-np.asarray(updates), [3 * w_adv[0], w_adv[1]], rtol=1e-6)


def test_sam_needs_grad_fn():
    opt = sam(optax.sgd(0.1))
    with pytest.raises(ValueError, match="grad_fn"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jnp.ones(2))


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, optimizer):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 16).astype(np.int32)
    params = init_params(MICRO, jax.random.PRNGKey(0))
    tc = train_mod.TrainConfig(optimizer=optimizer, lr=1e-2, steps=5, batch_size=4, ckpt_every=2)
    train_mod.train(MICRO, params, images, labels, tc, tmp_path / "straight.npz", progress=False)

    real_indices = train_mod.batch_indices

    def crash_at_4(n, batch_size, seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_indices(n, batch_size, seed, step)

    monkeypatch.setattr(train_mod, "batch_indices", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(MICRO, params, images, labels, tc, tmp_path / "resumed.npz", progress=False)
    monkeypatch.setattr(train_mod, "batch_indices", real_indices)
    res = train_mod.train(MICRO, params, images, labels, tc, tmp_path / "resumed.npz", progress=False)
    assert res["resumed_from"] == 4
    a, _ = checkpoint.load(tmp_path / "straight.npz")
    b, _ = checkpoint.load(tmp_path / "resumed.npz")
    for k, v in checkpoint.flatten(a).items():
        np.testing.assert_allclose(checkpoint.flatten(b)[k], v, rtol=1e-6, atol=1e-7)
    assert not np.allclose(checkpoint.flatten(a)["head/kernel"], np.asarray(params["head"]["kernel"]))


def _micro_run(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((16, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 16).astype(np.int32)
    return init_params(MICRO, jax.random.PRNGKey(0)), images, labels


def _same_params(a_path, b_path):
    a, _ = checkpoint.load(a_path)
    b, _ = checkpoint.load(b_path)
    for k, v in checkpoint.flatten(a).items():
        np.testing.assert_array_equal(checkpoint.flatten(b)[k], v)


def test_resume_skips_interrupted_saves_and_prunes(tmp_path):
    """What a kill during a save leaves (orbax's tmp folder, a damaged step folder) is passed over and
    cleaned; the newest complete state resumes; only the newest `keep_checkpoints` states stay."""
    params, images, labels = _micro_run()
    tc = train_mod.TrainConfig(lr=1e-2, steps=6, batch_size=4, ckpt_every=1)
    train_mod.train(MICRO, params, images, labels, tc, tmp_path / "straight.npz", progress=False)
    state = tmp_path / "straight.npz.state"
    assert sorted(p.name for p in state.glob("step_*")) == ["step_4", "step_5"]  # keep_checkpoints=2
    out = tmp_path / "cut.npz"
    real_indices = train_mod.batch_indices

    def crash_at_3(n, batch_size, seed, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_indices(n, batch_size, seed, step)

    train_mod.batch_indices = crash_at_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(MICRO, params, images, labels, tc, out, progress=False, keep_checkpoints=3)
    finally:
        train_mod.batch_indices = real_indices
    cut = tmp_path / "cut.npz.state"
    (cut / "step_5.orbax-checkpoint-tmp-1764041234").mkdir()  # a save killed half way
    (cut / "step_4").mkdir()  # a folder with nothing readable in it
    res = train_mod.train(MICRO, params, images, labels, tc, out, progress=False)
    assert res["resumed_from"] == 3 and not list(cut.glob("*tmp*"))
    _same_params(tmp_path / "straight.npz", out)


def test_state_of_other_settings_is_never_resumed(tmp_path):
    params, images, labels = _micro_run()
    tc = train_mod.TrainConfig(lr=1e-2, steps=3, batch_size=4, ckpt_every=1)
    train_mod.train(MICRO, params, images, labels, tc, tmp_path / "m.npz", progress=False)
    with pytest.raises(FastViTError, match=r"other settings \(train.lr: 0.01 there, 0.02 now\)"):
        train_mod.train(MICRO, params, images, labels, dataclasses.replace(tc, lr=2e-2), tmp_path / "m.npz",
                        progress=False)
    with pytest.raises(FastViTError, match="data.fingerprint"):
        train_mod.train(MICRO, params, images, (labels + 1) % 3, tc, tmp_path / "m.npz", progress=False)


def test_full_disk_is_one_line_and_keeps_earlier_states(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    params, images, labels = _micro_run()
    tc = train_mod.TrainConfig(lr=1e-2, steps=4, batch_size=4, ckpt_every=1)
    real_save, saves = ocp.StandardCheckpointer.save, []

    def save(self, path, *a, **k):
        saves.append(path)
        if len(saves) == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, path, *a, **k)

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save)
    with pytest.raises(FastViTError, match="could not save the training state of step 3 .*No space left"):
        train_mod.train(MICRO, params, images, labels, tc, tmp_path / "m.npz", progress=False)
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", real_save)
    res = train_mod.train(MICRO, params, images, labels, tc, tmp_path / "m.npz", progress=False)
    assert res["resumed_from"] == 2


KILL_SCRIPT = """
import sys, jax, numpy as np
from fastvit_jax.studies import train as t
from fastvit_jax.config import ViTConfig
from fastvit_jax.models.vit import init_params
MICRO = ViTConfig(width=8, depth=1, heads=2, mlp_dim=8, patch=8, image_size=16, num_classes=3)
rng = np.random.default_rng(0)
images = rng.standard_normal((16, 16, 16, 3)).astype(np.float32)
labels = rng.integers(0, 3, 16).astype(np.int32)
tc = t.TrainConfig(optimizer="sam", lr=1e-2, steps=int(sys.argv[2]), batch_size=4, ckpt_every=1)
print(t.train(MICRO, init_params(MICRO, jax.random.PRNGKey(0)), images, labels, tc, sys.argv[1], progress=False)["resumed_from"])
"""


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_the_same_parameters(tmp_path):
    """A training process killed (SIGKILL, no clean-up) at random moments, then rerun until it finishes,
    ends with exactly the parameters of an uninterrupted run."""
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    cmd = lambda out: [sys.executable, str(script), str(tmp_path / out), "40"]  # noqa: E731
    subprocess.run(cmd("straight.npz"), check=True, capture_output=True)
    rng = np.random.default_rng(7)
    for kill in range(2):
        proc = subprocess.Popen(cmd("killed.npz"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and not list((tmp_path / "killed.npz.state").glob(f"step_{8 * (kill + 1)}*")):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        proc.kill()
        proc.wait()
    done = subprocess.run(cmd("killed.npz"), check=True, capture_output=True, text=True)
    assert int(done.stdout.split()[-1]) > 0  # it resumed
    _same_params(tmp_path / "straight.npz", tmp_path / "killed.npz")


@pytest.mark.parametrize("src,size", [(16, 16), (20, 16)])
def test_augment_is_a_crop_and_flip(src, size):
    """Every augmented image equals some (flipped) size x size window of the reflect-padded (same size)
    or plain (larger) source, found by brute force in numpy; the same key gives the same batch."""
    images = np.random.default_rng(0).standard_normal((6, src, src, 3)).astype(np.float32)
    out = np.asarray(train_mod.augment(jnp.asarray(images), jax.random.PRNGKey(3), size))
    assert out.shape == (6, size, size, 3)
    pad = size // 8 if src == size else 0
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    flips = set()
    for i in range(6):
        found = [(y, x, f) for y in range(padded.shape[1] - size + 1) for x in range(padded.shape[2] - size + 1)
                 for f in (False, True)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(padded[i, y:y + size, x:x + size]))]
        assert found, f"image {i} is no crop of its source"
        flips.add(found[0][2])
    assert flips == {False, True}  # both branches taken for this key
    again = np.asarray(train_mod.augment(jnp.asarray(images), jax.random.PRNGKey(3), size))
    assert np.array_equal(out, again)


def test_center_crop():
    x = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
    np.testing.assert_array_equal(train_mod.center_crop(x, 28), x[:, 2:30, 2:30])


def test_batches_reproducible():
    a = train_mod.batch_indices(100, 32, 0, 7)
    assert np.array_equal(a, train_mod.batch_indices(100, 32, 0, 7)) and len(a) == 32
    assert not np.array_equal(a, train_mod.batch_indices(100, 32, 1, 7))


@pytest.mark.slow
def test_train_cli_from_scratch_on_class_folders(tmp_path, capsys):
    """`fastvit train` on CIFAR-style class folders (label = sorted folder index), then eval reads it back."""
    import json

    from PIL import Image

    from fastvit_jax.cli import main

    rng = np.random.default_rng(0)
    for cls in ("airplane", "cat"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.jpg")
    out = tmp_path / "cifar.npz"
    assert main(["train", "--model", "vit_cifar_patch4_32", "--data", str(tmp_path / "data"), "--optimizer", "sam",
                 "--steps", "2", "--batch-size", "4", "--lr", "1e-3", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--model", "vit_cifar_patch4_32", "--data", str(tmp_path / "data"),
                 "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 8 and res["labelled"] == 8


def test_bfloat16_training_keeps_float32_state_and_follows_float32_gradients(tmp_path):
    """--dtype bfloat16 computes the passes in bfloat16 and keeps parameters (and so gradients and
    optimizer state) float32; its first gradient points where float32's does; a state saved under
    one dtype is never resumed under the other."""
    params, images, labels = _micro_run()
    x, y = jnp.asarray(images[:8]), jnp.asarray(labels[:8])
    from fastvit_jax.runtime import Runtime
    from fastvit_jax.studies.sharpness import classification_loss

    g32, g16 = (jax.grad(classification_loss(MICRO, runtime=Runtime(dtype=d)))(params, x, y)
                for d in ("float32", "bfloat16"))
    a, b = (np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(g)]) for g in (g32, g16))
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(g16))
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99 and not np.array_equal(a, b)

    tc = train_mod.TrainConfig(lr=1e-2, steps=3, batch_size=4, ckpt_every=1, dtype="bfloat16")
    res = train_mod.train(MICRO, params, images, labels, tc, tmp_path / "b.npz", progress=False)
    trained = dict(np.load(res["out"]))
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in trained.values())
    with pytest.raises(FastViTError, match=r"train.dtype: 'bfloat16' there, None now"):
        train_mod.train(MICRO, params, images, labels, dataclasses.replace(tc, dtype="float32"), tmp_path / "b.npz",
                        progress=False)
    with pytest.raises(FastViTError, match="unknown dtype 'float16'"):
        train_mod.train(MICRO, params, images, labels, dataclasses.replace(tc, dtype="float16"), tmp_path / "c.npz",
                        progress=False)
