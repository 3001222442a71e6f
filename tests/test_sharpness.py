"""HVP against an explicit jax.hessian; eigen-solvers against known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.vit import init_params
from fastvit_jax.studies.sharpness import classification_loss, lambda_max, lanczos, make_hvp, power_iteration

MICRO = ViTConfig(width=8, depth=1, heads=2, mlp_dim=8, patch=8, image_size=16, num_classes=3)


def _data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 16, 16, 3)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


@pytest.mark.slow
def test_hvp_equals_explicit_hessian_on_tiny_vit():
    params = init_params(MICRO, jax.random.PRNGKey(1))
    images, labels = _data()
    loss = classification_loss(MICRO)
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda f: loss(unravel(f), images, labels))(flat)  # written another way: full matrix
    v = jax.random.normal(jax.random.PRNGKey(2), flat.shape)
    hvp = make_hvp(loss, images, labels, micro_batch=2)  # two micro-batches accumulated
    got = ravel_pytree(hvp(params, unravel(v)))[0]
    np.testing.assert_allclose(got, hessian @ v, rtol=2e-3, atol=2e-5)


def _quadratic(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    a = jnp.asarray((q * eigs) @ q.T, jnp.float32)
    params = {"w": jnp.zeros((len(eigs) // 2,)), "b": {"c": jnp.zeros((len(eigs) - len(eigs) // 2,))}}
    _, unravel = ravel_pytree(params)

    def hvp(p, v):
        return unravel(a @ ravel_pytree(v)[0])

    return hvp, params


@pytest.mark.parametrize("solver", ["power", "lanczos"])
@pytest.mark.parametrize("bottom", [-2.0, -30.0, -1000.0])  # < -10: the largest |lambda| is negative
def test_solvers_find_known_top_eigenvalue(solver, bottom):
    eigs = np.concatenate([[10.0, 4.0, 3.5], np.linspace(bottom, 2, 37)])
    hvp, params = _quadratic(eigs)
    if solver == "power":
        res = power_iteration(hvp, params, jax.random.PRNGKey(0), iters=2000, tol=1e-8)
        assert res.converged and res.hvps == res.iterations
    else:
        # gap 4 against a spread of 1010 needs the whole 40-dim Krylov space
        res = lanczos(hvp, params, jax.random.PRNGKey(0), steps=40 if bottom < -100 else 30)
        assert res.converged
    assert abs(res.lambda_max - 10.0) < 1e-4 * 10


def test_hvp_of_quadratic_loss():
    eigs = np.array([5.0, 1.0, 0.5, 0.1])
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = (q * eigs) @ q.T
    loss = lambda p, x, y: 0.5 * p @ jnp.asarray(a, jnp.float32) @ p + 0.0 * x.sum() + 0.0 * y.sum()
    hvp = make_hvp(loss, np.zeros((4, 1), np.float32), np.zeros(4, np.int32), micro_batch=2)
    v = jnp.asarray(rng.standard_normal(4), jnp.float32)
    np.testing.assert_allclose(hvp(jnp.ones(4), v), a @ np.asarray(v), rtol=1e-5)


@pytest.mark.slow
def test_lambda_max_dense_equals_r0_and_lanczos_agrees():
    params = init_params(MICRO, jax.random.PRNGKey(3))
    images, labels = _data(8, seed=1)
    dense = lambda_max(MICRO, params, images, labels, micro_batch=4, iters=200, tol=1e-6, progress=False)
    r0 = lambda_max(MICRO, params, images, labels, plan=make_plan(MICRO, MergeOptions("tome", 0)), micro_batch=4,
                    iters=200, tol=1e-6, progress=False)
    assert dense.lambda_max == r0.lambda_max
    lz = lambda_max(MICRO, params, images, labels, micro_batch=4, iters=40, method="lanczos", progress=False)
    # This random model's largest |lambda| is negative: power iteration must still return the top one.
    assert dense.history[0] < 0 or dense.lambda_max > 0
    assert abs(lz.lambda_max - dense.lambda_max) < 1e-2 * abs(dense.lambda_max)


def test_shifted_run_does_not_stop_early():
    """Regression: dominant eigenvalue -1000, top eigenvalue 10. The shifted second run used to stop
    after two steps (tolerance relative to the shift) and report ~0."""
    eigs = np.concatenate([[10.0, 6.0], np.linspace(-1000.0, 0.0, 38)])
    hvp, params = _quadratic(eigs, seed=3)
    res = power_iteration(hvp, params, jax.random.PRNGKey(1), iters=3000, tol=1e-6)
    assert res.converged and abs(res.lambda_max - 10.0) < 1e-2
