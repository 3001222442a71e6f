"""Sharpness: the dominant Hessian eigenvalue lambda_max of the mean cross-entropy (paper Table 2).

HVP is forward-over-reverse, jax.jvp(jax.grad(loss), (params,), (v,)), compiled once. The loss over
many images is accumulated micro-batch by micro-batch inside the HVP (lax.scan), so memory is that
of one micro-batch. lambda_max comes from power iteration and, as a cross-check, from Lanczos.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime
from fastvit_jax.data import check_labels, load_arrays, open_dataset, spread


def classification_loss(config: ViTConfig, plan: MergePlan | None = None, runtime: Runtime = Runtime()) -> Callable:
    """loss(params, images, labels) = mean softmax cross-entropy of the (merged) model."""
    model = VisionTransformer(config, plan, runtime)

    def loss(params, images, labels):
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def make_hvp(loss: Callable, images: np.ndarray, labels: np.ndarray, micro_batch: int) -> Callable:
    """hvp(params, v) of the mean loss over all images, accumulated over micro-batches."""
    n = len(images)
    if n % micro_batch:
        raise FastViTError(f"number of images {n} is not a multiple of --micro-batch {micro_batch}")
    xs = jnp.asarray(images).reshape((n // micro_batch, micro_batch) + images.shape[1:])
    ys = jnp.asarray(labels).reshape(n // micro_batch, micro_batch)

    @jax.jit
    def hvp_on(params, v, xs, ys):
        def body(acc, batch):
            x, y = batch
            hv = jax.jvp(lambda p: jax.grad(loss)(p, x, y), (params,), (v,))[1]
            return jax.tree_util.tree_map(jnp.add, acc, hv), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, v)
        total, _ = jax.lax.scan(body, zero, (xs, ys))
        return jax.tree_util.tree_map(lambda t: t / xs.shape[0], total)  # equal-size micro-batches

    # The images are arguments, not closed-over constants: XLA would otherwise constant-fold the
    # patch embedding of every image at compile time.
    return lambda params, v: hvp_on(params, v, xs, ys)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _scale(a, s):
    return jax.tree_util.tree_map(lambda x: x * s, a)


@dataclasses.dataclass
class EigenResult:
    lambda_max: float
    iterations: int
    hvps: int
    history: list[float]
    converged: bool


def power_iteration(hvp: Callable, params, key, *, iters: int = 20, tol: float = 1e-3,
                    progress: bool = False) -> EigenResult:
    """Largest (algebraic) Hessian eigenvalue by power iteration.

    Plain power iteration finds the largest |lambda|. If that one is negative (common away from a
    minimum), a second run on the shifted operator H - lambda I finds lambda_max - lambda. Starts
    from a random unit vector drawn from `key`; each run stops when the relative change of the
    Rayleigh quotient is below tol or after `iters` HVPs."""
    first = _power(hvp, params, key, iters, tol, progress, shift=0.0)
    if first.lambda_max >= 0:
        return first
    shift = first.lambda_max
    second = _power(hvp, params, jax.random.fold_in(key, 1), iters, tol, progress, shift=shift)
    return EigenResult(second.lambda_max, first.iterations + second.iterations, first.hvps + second.hvps,
                       first.history + second.history, second.converged)


def _power(hvp, params, key, iters, tol, progress, shift) -> EigenResult:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])
    v = _scale(v, 1.0 / jnp.sqrt(_dot(v, v)))
    history, lam, converged = [], None, False
    bar = tqdm(range(iters), desc="power iteration", disable=not progress, leave=False)
    for i in bar:
        hv = hvp(params, v)
        new = float(_dot(v, hv))  # Rayleigh quotient of H itself
        r_vec = jax.tree_util.tree_map(lambda a, b: a - new * b, hv, v)
        residual = jnp.sqrt(_dot(r_vec, r_vec))
        history.append(new)
        bar.set_postfix(lambda_max=f"{new:.4g}")
        if shift:
            hv = jax.tree_util.tree_map(lambda a, b: a - shift * b, hv, v)
        v = _scale(hv, 1.0 / jnp.sqrt(_dot(hv, hv)))
        # Converged: the estimate of H's eigenvalue (not of the shifted operator, whose large
        # magnitude would make any tolerance loose) stopped moving and v is nearly an eigenvector.
        if (lam is not None and i >= 2 and abs(new - lam) < tol * abs(new)
                and float(residual) <= math.sqrt(tol) * abs(new)):
            lam, converged = new, True
            break
        lam = new
    return EigenResult(lam, len(history), len(history), history, converged)


def lanczos(hvp: Callable, params, key, *, steps: int = 20, progress: bool = False) -> EigenResult:
    """Largest Ritz value of `steps` Lanczos steps with full re-orthogonalisation (flat vectors)."""
    flat, unravel = ravel_pytree(params)
    dim = flat.shape[0]
    steps = min(steps, dim)
    q = jax.random.normal(key, (dim,), jnp.float32)
    q = q / jnp.linalg.norm(q)
    basis, alphas, betas, history = [q], [], [], []
    matvec = lambda x: ravel_pytree(hvp(params, unravel(x)))[0]  # noqa: E731  (hvp is jitted; params stay arguments)
    for j in tqdm(range(steps), desc="lanczos", disable=not progress, leave=False):
        w = matvec(basis[j])
        alpha = float(jnp.vdot(w, basis[j]))
        alphas.append(alpha)
        q_mat = jnp.stack(basis)
        w = w - q_mat.T @ (q_mat @ w)  # full re-orthogonalisation
        w = w - q_mat.T @ (q_mat @ w)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        history.append(float(np.linalg.eigvalsh(t)[-1]))
        beta = float(jnp.linalg.norm(w))
        invariant = beta < 1e-10 * max(1.0, abs(alpha))  # the Krylov space holds an exact eigenvector
        if j == steps - 1 or invariant:
            break
        betas.append(beta)
        basis.append(w / beta)
    stable = len(history) > 1 and abs(history[-1] - history[-2]) <= 1e-6 * abs(history[-1])
    return EigenResult(history[-1], len(history), len(history), history, invariant or stable)


def lambda_max(config: ViTConfig, params, images: np.ndarray, labels: np.ndarray, *, plan: MergePlan | None = None,
               micro_batch: int = 8, iters: int = 20, tol: float = 1e-3, seed: int = 0, method: str = "power",
               progress: bool = True, runtime: Runtime = Runtime()) -> EigenResult:
    hvp = make_hvp(classification_loss(config, plan, runtime), images, labels, micro_batch)
    key = jax.random.PRNGKey(seed)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    if method == "lanczos":
        return lanczos(hvp, params, key, steps=iters, progress=progress)
    return power_iteration(hvp, params, key, iters=iters, tol=tol, progress=progress)


def measure(config: ViTConfig, params, preprocess, data, plan: MergePlan | None = None, *, num_images: int = 64,
            micro_batch: int = 8, iters: int = 20, tol: float = 1e-3, seed: int = 0, solver: str = "power",
            progress: bool = True, runtime: Runtime = Runtime()) -> dict:
    """lambda_max on `num_images` labelled images spread over `data` (a Dataset or an --data string)."""
    import time


    ds = open_dataset(data) if isinstance(data, str) else data
    if len(ds) < num_images:
        raise FastViTError(f"--num-images {num_images} but {ds.name} has {len(ds)} images")
    images, labels = load_arrays(spread(ds, num_images), preprocess, require_labels=True)
    check_labels(labels, config.num_classes, ds.name)
    if len(images) % micro_batch:
        raise FastViTError(f"{len(images)} readable images is not a multiple of --micro-batch {micro_batch}")
    t0 = time.perf_counter()
    res = lambda_max(config, params, images, labels, plan=plan, micro_batch=micro_batch, iters=iters, tol=tol,
                     seed=seed, method=solver, progress=progress, runtime=runtime)
    plan = plan or make_plan(config)
    return {"lambda_max": res.lambda_max, "iterations": res.iterations, "hvps": res.hvps, "converged": res.converged,
            "method": plan.method, "r": plan.r, "skip": plan.skip, "clamped": plan.clamped, "solver": solver,
            "images": num_images, "wall_s": time.perf_counter() - t0}
