"""Tiered compilation (runtime.tiered, models/tiered.py): a merged plan answers with its bucketed,
scanned program until the exact one is compiled, then with the exact one. Reference: the exact
program itself (pinned to the numpy forward elsewhere): the first answer agrees within rounding,
later answers are the exact program's, bit for bit."""

import jax.numpy as jnp
import numpy as np

from conftest import google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.models.forward import make_forward
from fastvit_jax.models.tiered import TieredForward
from fastvit_jax.runtime import Runtime

CONFIG = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=10)


def test_first_answer_is_the_bucketed_program_then_the_exact_one():
    params = checkpoint.unflatten(google_checkpoint(CONFIG, seed=5))
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    plan = make_plan(CONFIG, MergeOptions("tome", r=6))
    tiered = make_forward(CONFIG, plan, Runtime(tiered=True))
    assert isinstance(tiered, TieredForward)
    exact = np.asarray(make_forward(CONFIG, plan, Runtime())(params, images))
    quick = np.asarray(make_forward(CONFIG, plan, Runtime(token_buckets=1))(params, images))
    first = np.asarray(tiered(params, images))
    np.testing.assert_allclose(first, exact, atol=2e-5, rtol=1e-5)
    tiered.compiling(params, images).result()  # the exact program is ready
    np.testing.assert_array_equal(np.asarray(tiered(params, images)), exact)
    assert not np.array_equal(quick, exact) or np.array_equal(first, quick)  # the first came from `quick`
    assert "while" not in tiered.lower(params, images).as_text()  # AOT: the exact program, not the scan
    other = jnp.zeros((3, 32, 32, 3))  # a new shape starts its own exact compile
    np.testing.assert_allclose(tiered(params, other), make_forward(CONFIG, plan, Runtime())(params, other),
                               atol=2e-5, rtol=1e-5)


def test_dense_and_bucketed_plans_are_not_tiered():
    plan = make_plan(CONFIG, MergeOptions("tome", r=6))
    assert not isinstance(make_forward(CONFIG, make_plan(CONFIG), Runtime(tiered=True)), TieredForward)
    assert not isinstance(make_forward(CONFIG, plan, Runtime(tiered=True, token_buckets=2)), TieredForward)
    assert "tiered" not in Runtime().to_dict() and Runtime(tiered=True).to_dict()["tiered"] is True
