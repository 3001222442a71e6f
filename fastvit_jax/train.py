"""Training and fine-tuning with optax (AdamW or SAM), resumable from periodic checkpoints.

Batches are a pure function of (seed, step), so a run resumed from its last checkpoint continues
exactly as an uninterrupted one would. State (params, optimizer state, step) is saved with orbax to
OUT.state/ every `ckpt_every` steps; the final params are written in the native Google layout.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from fastvit_jax import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.sam import sam
from fastvit_jax.sharpness import classification_loss


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
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def augment(images: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Random crop (reflect-pad by size/8) and horizontal flip, reproducible from (seed, step)."""
    rng = np.random.default_rng([seed, step, 1])
    b, h, w, _ = images.shape
    pad = max(h // 8, 1)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.empty_like(images)
    for i in range(b):
        y, x = rng.integers(0, 2 * pad + 1, 2)
        crop = padded[i, y:y + h, x:x + w]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def _state_dir(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def _save_state(path: Path, params, opt_state, step: int) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path.absolute() / f"step_{step}", {"params": params, "opt_state": opt_state,
                                                       "step": jnp.asarray(step)}, force=True)


def _latest_state(path: Path, params, opt_state):
    import orbax.checkpoint as ocp

    steps = sorted(int(p.name.split("_")[1]) for p in path.glob("step_*")) if path.exists() else []
    for step in reversed(steps):  # newest readable one (a crash may leave the last one incomplete)
        target = {"params": params, "opt_state": opt_state, "step": jnp.asarray(0)}
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
            with ocp.StandardCheckpointer() as ckptr:
                state = ckptr.restore(path.absolute() / f"step_{step}", abstract)
            return state["params"], state["opt_state"], int(state["step"])
        except Exception:  # incomplete directory: try the previous one
            continue
    return params, opt_state, 0


def train(config: ViTConfig, params, images: np.ndarray, labels: np.ndarray, tc: TrainConfig, out: str | Path,
          *, progress: bool = True, log_every: int = 50) -> dict:
    """Train on in-memory (images, labels); resume from OUT.state if present; write OUT (.npz or orbax)."""
    out = Path(out)
    opt = make_optimizer(tc)
    loss_fn = classification_loss(config)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = opt.init(params)
    params, opt_state, start = _latest_state(_state_dir(out), params, opt_state)

    @jax.jit
    def step_fn(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        kwargs = {"grad_fn": lambda p: jax.grad(loss_fn)(p, x, y)} if tc.optimizer != "adamw" else {}
        updates, opt_state = opt.update(grads, opt_state, params, **kwargs)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=f"train ({tc.optimizer})",
               disable=not progress)
    for step in bar:
        idx = batch_indices(len(images), tc.batch_size, tc.seed, step)
        x = augment(images[idx], tc.seed, step) if tc.augment else images[idx]
        params, opt_state, loss = step_fn(params, opt_state, x, labels[idx])
        if step % log_every == 0 or step == tc.steps - 1:
            losses.append((step, float(loss)))
            bar.set_postfix(loss=f"{float(loss):.4f}")
        if (step + 1) % tc.ckpt_every == 0 and step + 1 < tc.steps:
            _save_state(_state_dir(out), params, opt_state, step + 1)
    params = jax.tree_util.tree_map(np.asarray, params)
    if out.suffix == ".npz":
        checkpoint.save_npz(params, out)
    else:
        checkpoint.save_orbax(params, out)
    return {"out": str(out), "steps": tc.steps, "resumed_from": start, "wall_s": time.perf_counter() - t0,
            "losses": losses}
