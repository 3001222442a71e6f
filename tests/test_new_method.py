"""A method registered from outside the package -- its own rule and its own knob, defined in this
file alone -- runs through `fastvit plan`, `eval`, `predict` and a `tune` search space, with its flag
and its checks made from its record (merge/methods: Method.knobs)."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import google_checkpoint, labelled_images
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.merge import methods
from fastvit_jax.merge.knobs import Knob
from fastvit_jax.merge.options import MergeOptions

CFG = ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=16, image_size=224, num_classes=1000)


def keep_largest(state, metric, attention, *, op, num_prefix, distill_token):
    """One example: the r tokens of smallest feature norm go, except the prefix and the first
    `protect` patch tokens; the others stay in order."""
    n = metric.shape[0]
    protected = jnp.arange(n) < num_prefix + op.knob("protect", 0)
    order = jnp.argsort(jnp.where(protected, jnp.inf, jnp.linalg.norm(metric.astype(jnp.float32), axis=-1)))
    keep = jnp.sort(order[op.r:])
    return jax.tree_util.tree_map(lambda a: a[keep], state), jnp.full((op.r,), -2.0)


KEEPNORM = types.SimpleNamespace(
    METHOD={"name": "keepnorm", "summary": "drop the tokens of smallest feature norm (a test's method)",
            "reducer": True,
            "block": lambda options, block, depth: {"rule": "keepnorm", "knobs": (("protect", options.protect),)},
            "knobs": (Knob("protect", int, "patch tokens never dropped", default=0, low=0, metavar="N"),),
            "search": {"protect": [0, 8]}},
    RULE={"name": "keepnorm", "slots": None, "reduce": keep_largest, "match_macs": lambda n, prefix, width: 0})


@pytest.fixture
def keepnorm():
    methods.register(KEEPNORM)
    yield
    methods.unregister("keepnorm", rule="keepnorm")


@pytest.fixture
def setup(tmp_path):
    ckpt = tmp_path / "m.npz"
    np.savez(ckpt, **google_checkpoint(CFG, seed=2))
    return ckpt, labelled_images(tmp_path / "imgs")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_registered_method_runs_through_the_cli(keepnorm, setup, capsys, tmp_path):
    ckpt, imgs = setup
    model = ["--checkpoint", ckpt, "--gelu", "tanh", "--preprocessing", "inception"]
    code, out, err = run(capsys, "plan", *model, "--method", "keepnorm", "--r", "20", "--protect", "8", "--json",
                         "--out", tmp_path / "p.json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["options"]["protect"] == 8 and plan["plan"]["tokens"][-1] == 197 - 4 * 20
    assert MergeOptions.from_dict(plan["options"]).protect == 8  # plan files carry the knob
    # the knob reaches the rule: other protected tokens, other logits
    probs = {}
    for protect in ("0", "150"):
        code, out, err = run(capsys, "predict", *sorted(imgs.iterdir())[:2], *model, "--method", "keepnorm", "--r",
                             "20", "--protect", protect, "--json")
        assert code == 0, err
        probs[protect] = [t["prob"] for row in json.loads(out) for t in row["top5"]]
        assert json.loads(out)[0]["options"]["protect"] == int(protect)
    assert not np.allclose(probs["0"], probs["150"])
    code, out, err = run(capsys, "eval", *model, "--data", imgs, "--plan", tmp_path / "p.json", "--json",
                         "--no-progress")
    assert code == 0 and json.loads(out)["options"]["protect"] == 8, err
    code, _, err = run(capsys, "plan", *model, "--method", "keepnorm", "--r", "4", "--protect", "-1")
    assert code == 2 and err.count("\n") == 1 and "protect must be >= 0, got -1" in err
    code, out, err = run(capsys, "tune", *model, "--data", imgs, "--target-speedup", "1.3", "--methods", "keepnorm",
                         "--subset", "3", "--finalists", "20", "--batch-size", "6", "--out", tmp_path / "t.json",
                         "--json")
    assert code == 0, err
    searched = {r["options"].get("protect") for r in json.loads(out)["rows"] if r["method"] == "keepnorm"}
    assert searched == {0, 8}


def test_its_flag_exists_only_while_it_is_registered(setup, capsys):
    ckpt, _ = setup
    code, _, err = run(capsys, "plan", "--checkpoint", ckpt, "--method", "tome", "--r", "2", "--protect", "3")
    assert code == 2 and "unrecognized arguments: --protect 3" in err
    with pytest.raises(Exception, match="unknown merge option"):
        MergeOptions.from_dict({"method": "tome", "protect": 3})
