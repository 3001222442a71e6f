"""Training and fine-tuning with optax (AdamW or SAM), resumable from periodic checkpoints.

Batches are a pure function of (seed, step), so a run resumed from its last checkpoint continues
exactly as an uninterrupted one would. State (params, optimizer state, step) is saved with orbax to
OUT.state/ every `ckpt_every` steps; the final params are written in the native Google layout.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.data import check_labels
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.lock import exclusive
from fastvit_jax.studies.recorded import check_settings, fingerprint
from fastvit_jax.runtime import Runtime
from fastvit_jax.studies.sam import sam
from fastvit_jax.studies.sharpness import classification_loss


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adamw"  # "adamw" | "sam" | "asam"
    lr: float = 1e-4
    weight_decay: float = 0.05
    rho: float = 0.05
    steps: int = 100
    warmup: int = 0
    batch_size: int = 32
    ckpt_every: int = 50
    seed: int = 0
    augment: bool = True
    dtype: str = "float32"  # the forward and backward; parameters, gradients and optimizer state stay float32


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    if tc.optimizer not in ("adamw", "sam", "asam"):
        raise FastViTError(f"unknown optimizer {tc.optimizer!r}; allowed: adamw, sam, asam")
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, max(tc.warmup, 1), max(tc.steps, tc.warmup + 1))
    base = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=tc.weight_decay))
    return base if tc.optimizer == "adamw" else sam(base, tc.rho, adaptive=tc.optimizer == "asam")


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the batch at `step`: epochs are seeded permutations, so any step is reproducible."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    return _epoch_permutation(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def augment(images: jax.Array, key: jax.Array, size: int) -> jax.Array:
    """Random size x size crop and horizontal flip per image, on the device (inside the jitted step).
    Images of the model's own size are reflect-padded by size/8 first; larger ones are cropped inside."""
    b, h, w, c = images.shape
    pad = max(h // 8, 1) if size == h else 0
    if pad:
        images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    k_y, k_x, k_flip = jax.random.split(key, 3)
    ys = jax.random.randint(k_y, (b,), 0, images.shape[1] - size + 1)
    xs = jax.random.randint(k_x, (b,), 0, images.shape[2] - size + 1)
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, c)))(images, ys, xs)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def center_crop(images: jax.Array, size: int) -> jax.Array:
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top:top + size, left:left + size]


def _state_dir(out: Path) -> Path:
    return out.with_name(out.name + ".state")


STEP_DIR = re.compile(r"^step_(\d+)$")


def complete_steps(path: Path) -> list[int]:
    """Steps with a finished checkpoint, oldest first. What an interrupted save leaves behind (orbax's
    `step_N.orbax-checkpoint-tmp-*` folders) is removed."""
    if not path.exists():
        return []
    steps = []
    for p in path.iterdir():
        if m := STEP_DIR.match(p.name):
            steps.append(int(m.group(1)))
        elif ".orbax-checkpoint-tmp" in p.name:
            shutil.rmtree(p, ignore_errors=True)
    return sorted(steps)


def run_settings(config: ViTConfig, tc: TrainConfig, images: np.ndarray, labels: np.ndarray) -> dict:
    """Everything that changes the trajectory: a state saved under other settings is never resumed."""
    sample = np.ascontiguousarray(np.asarray(images).reshape(len(images), -1)[:, ::61])
    digest = fingerprint(np.asarray(labels).tobytes(), sample.tobytes())
    recipe = {k: v for k, v in dataclasses.asdict(tc).items() if k != "ckpt_every"}
    if recipe["dtype"] == "float32":  # as states saved before --dtype existed record it: by its absence
        del recipe["dtype"]
    return {"model": dataclasses.asdict(config), "train": recipe,
            "data": {"images": list(np.shape(images)), "fingerprint": digest}}


def _save_state(path: Path, params, opt_state, step: int, keep: int) -> None:
    """Save step's state, then delete all but the newest `keep` (at least 1) complete ones."""
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path.absolute() / f"step_{step}", {"params": params, "opt_state": opt_state,
                                                           "step": jnp.asarray(step)}, force=True)
    except OSError as e:  # e.g. a full disk: the states saved before stay complete and resumable
        raise FastViTError(f"could not save the training state of step {step} to {path} ({e}); "
                           f"free space and rerun the same command to resume") from None
    for old in complete_steps(path)[:-max(keep, 1)]:
        shutil.rmtree(path / f"step_{old}", ignore_errors=True)


def _latest_state(path: Path, params, opt_state):
    import orbax.checkpoint as ocp

    for step in reversed(complete_steps(path)):  # newest readable one (a crash may leave the last one damaged)
        target = {"params": params, "opt_state": opt_state, "step": jnp.asarray(0)}
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
            with ocp.StandardCheckpointer() as ckptr:
                state = ckptr.restore(path.absolute() / f"step_{step}", abstract)
            return state["params"], state["opt_state"], int(state["step"])
        except Exception:  # a damaged directory: try the previous one
            continue
    return params, opt_state, 0


def train(config: ViTConfig, params, images: np.ndarray, labels: np.ndarray, tc: TrainConfig, out: str | Path,
          *, progress: bool = True, log_every: int = 50, keep_checkpoints: int = 2) -> dict:
    """Train on in-memory (images, labels); resume from OUT.state if present; write OUT (.npz or orbax).
    Images may be larger than config.image_size: batches are then random (or center) crops of them.
    Every ckpt_every steps the state goes to OUT.state/step_N (the newest keep_checkpoints are kept);
    a rerun with the same settings continues from the newest complete one. One run writes OUT at a time."""
    out = Path(out)
    with exclusive(_state_dir(out), folder=True, remove=True):
        return _train(config, params, images, labels, tc, out, progress=progress, log_every=log_every,
                      keep_checkpoints=keep_checkpoints)


def _train(config, params, images, labels, tc: TrainConfig, out: Path, *, progress, log_every, keep_checkpoints
           ) -> dict:
    opt = make_optimizer(tc)
    loss_fn = classification_loss(config, runtime=Runtime(dtype=tc.dtype))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = opt.init(params)
    check_labels(labels, config.num_classes, "training labels")
    check_settings(_state_dir(out), run_settings(config, tc, images, labels), what="the state of a run",
                   advice=f"rerun with the same settings to resume, or delete {_state_dir(out)} / choose another --out")
    params, opt_state, start = _latest_state(_state_dir(out), params, opt_state)

    size, base_key = config.image_size, jax.random.PRNGKey(tc.seed)
    images, labels = jax.device_put(images), jax.device_put(labels)  # once: batches are gathered on the device

    @jax.jit
    def step_fn(params, opt_state, images, labels, idx, step):
        x, y = images[idx], labels[idx]
        x = augment(x, jax.random.fold_in(base_key, step), size) if tc.augment else center_crop(x, size)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        kwargs = {"grad_fn": lambda p: jax.grad(loss_fn)(p, x, y)} if tc.optimizer != "adamw" else {}
        updates, opt_state = opt.update(grads, opt_state, params, **kwargs)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, t0, t_first = [], time.perf_counter(), None
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=f"train ({tc.optimizer})",
               disable=not progress)
    for step in bar:
        idx = batch_indices(len(images), tc.batch_size, tc.seed, step)
        params, opt_state, loss = step_fn(params, opt_state, images, labels, idx, step)
        if t_first is None:  # compiled and run once: the rate below excludes compilation
            jax.block_until_ready(loss)
            t_first = time.perf_counter()
        if step % log_every == 0 or step == tc.steps - 1:
            losses.append((step, float(loss)))
            bar.set_postfix(loss=f"{float(loss):.4f}")
        if (step + 1) % tc.ckpt_every == 0 and step + 1 < tc.steps:
            _save_state(_state_dir(out), params, opt_state, step + 1, keep_checkpoints)
    params = jax.tree_util.tree_map(np.asarray, params)
    timed = tc.steps - start - 1
    steps_per_s = timed / (time.perf_counter() - t_first) if t_first and timed > 0 else None
    if out.suffix == ".npz":
        checkpoint.save_npz(params, out)
    else:
        checkpoint.save_orbax(params, out)
    return {"out": str(out), "steps": tc.steps, "resumed_from": start, "wall_s": time.perf_counter() - t0,
            "steps_per_s": steps_per_s, "losses": losses}
