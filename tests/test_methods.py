"""The method registry: every method is one record that options, plans, FLOPs, the model, tune and
the budget read; a new method is one module registered once."""

import types

import numpy as np
import pytest

from conftest import TINY, google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.search import tune
from fastvit_jax.merge.flops import gflops, model_macs
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge import methods, reducers
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan


def test_every_registered_method_plans_and_counts():
    for name, method in methods.REGISTRY.items():
        plan = make_plan(TINY, MergeOptions(name, 3))
        assert plan.is_dense == (method.kind == "none")
        assert gflops(TINY, plan) <= gflops(TINY) or method.kind == "global"  # matching may cost more at tiny n
        for op in plan.ops:
            if op.kind == "global":
                assert op.rule in methods.RULES
    assert set(methods.METHODS) == set(methods.REGISTRY)
    assert methods.REDUCERS == ("tome", "pitome", "tofu", "mctf", "ppt", "atm")
    assert set(tune.search_space()) == {"tome", "lgtm", "pitome", "tofu", "mctf", "ppt", "atm"}


SEEN = {}


def _toy_slots(metric, op, *, size, attention, num_prefix, distill_token):
    SEEN["attention"] = attention  # the model passes what the rule says it needs
    return reducers.tome_slots(metric, op.r, num_prefix=num_prefix, distill_token=distill_token)


TOY = types.SimpleNamespace(
    METHOD={"name": "toy", "summary": "ToMe's pairing as a method of its own, for the registry's test",
            "reducer": True, "block": lambda options, block, depth: {"rule": "toy", "combine": "mean"},
            "default_skip": lambda depth: 1, "search": {"skip": [1, 2]}},
    RULE={"name": "toy", "slots": _toy_slots, "match_macs": lambda n, num_prefix, dim: 0,
          "attention_feature": lambda weights, values: weights[:, 0, 0, :]})  # head 0's class-token row


@pytest.fixture
def toy_registered():
    methods.register(TOY)
    yield
    methods.REGISTRY.pop("toy")
    methods.RULES.pop("toy")


def test_a_new_method_is_one_registered_module(toy_registered):
    """Registered once, a method is accepted by the options (also as --reducer), planned with its
    own skip and rule, counted with its matching cost, run by the model with the features it needs,
    and searched by tune."""
    options = MergeOptions("toy", 4)
    plan = make_plan(TINY, options)
    assert plan.skip == 1 and [op.rule for op in plan.ops[1:]] == ["toy"] * (TINY.depth - 1)
    assert MergeOptions("lgtm", 4, reducer="toy").resolved_reducer == "toy"
    tome = make_plan(TINY, MergeOptions("tome", 4, skip=1))
    matching = model_macs(TINY, tome)["match"]
    assert matching > 0 and model_macs(TINY, plan)["match"] == 0
    flat = google_checkpoint(TINY)
    params = checkpoint.unflatten(flat)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = make_forward(TINY, plan)(params, images)
    assert SEEN["attention"] is not None and SEEN["attention"].ndim == 1  # per example: one value a token
    # the same pairing and combine through the registry as through ToMe's own kernels
    np.testing.assert_allclose(got, make_forward(TINY, tome)(params, images), atol=2e-5)
    found, _ = tune.candidates(TINY, ["toy"], ["k"], 0.9 * gflops(TINY))
    assert {o.method for o in found} == {"tome", "toy"} and {o.skip for o in found if o.method == "toy"} == {1, 2}


def test_unknown_names_list_the_registry():
    from fastvit_jax.errors import FastViTError

    with pytest.raises(FastViTError, match="allowed: none, tome, dfe, lgtm, drop, pitome, tofu, mctf, ppt, atm$"):
        MergeOptions("fast", 4)
    with pytest.raises(FastViTError, match="a reducer applies to tome, dfe, lgtm, not to method 'drop'"):
        MergeOptions("drop", 4, reducer="pitome")
