"""Data-parallel evaluation on 4 forced host devices equals one device; budget-driven r."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastvit_jax.search import budget
from fastvit_jax.config import variant_config
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.flops import gflops

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import google_checkpoint
    from fastvit_jax.checkpoints import checkpoint
    from fastvit_jax.config import ViTConfig
    from fastvit_jax.data import Dataset, Preprocess
    from fastvit_jax.studies.evaluate import evaluate
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from PIL import Image

    cfg = ViTConfig(width=32, depth=2, heads=2, mlp_dim=64, patch=8, image_size=32, num_classes=10)
    params = checkpoint.unflatten(google_checkpoint(cfg))
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(11)]
    ds = Dataset([((lambda im=im: im), int(i % 10)) for i, im in enumerate(imgs)])
    plan = make_plan(cfg, MergeOptions("tome", 3))
    fwd = make_forward(cfg, plan)
    res = evaluate(fwd, params, ds, Preprocess("inception", 32), batch_size=3, progress=False)
    x = np.stack([Preprocess("inception", 32)(im) for im in imgs])
    from fastvit_jax.util import parallel
    if len(jax.devices()) > 1:
        mesh = parallel.data_mesh()
        logits = fwd(parallel.replicate(params, mesh), parallel.shard_batch(np.concatenate([x, x[:1]]), mesh))[:11]
        shard_count = len(logits.sharding.device_set) if hasattr(logits, "sharding") else 1
    else:
        logits, shard_count = fwd(params, x), 1
    print(json.dumps({"devices": res["devices"], "top1": res["top1"], "images": res["images"],
                      "logits": np.asarray(logits).tolist(), "shards": shard_count}))
""")


def _run(tmp_path, devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], capture_output=True, text=True,
                         env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_equal_one(tmp_path):
    one, four = _run(tmp_path, 1), _run(tmp_path, 4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert four["images"] == one["images"] == 11  # the last partial batch (3 -> padded to 4) counted right
    assert four["top1"] == one["top1"]
    np.testing.assert_allclose(four["logits"], one["logits"], atol=1e-5)


def _plan(cfg, options, r):
    from fastvit_jax.merge.plan import make_plan

    return make_plan(cfg, options.replace(r=r))


def test_budget_gflops_is_smallest_r():
    from fastvit_jax.merge.options import MergeOptions

    cfg = variant_config("S/16")
    tome = budget.options_for_gflops(cfg, MergeOptions("tome"), 3.0)
    plan = _plan(cfg, tome, tome.r)
    assert gflops(cfg, plan) <= 3.0
    worse = _plan(cfg, tome, plan.r - 1)
    assert gflops(cfg, worse) > 3.0
    lgtm = budget.options_for_gflops(cfg, MergeOptions("lgtm", window=6), 3.0)
    lg = _plan(cfg, lgtm, lgtm.r)
    assert lg.method == "lgtm" and gflops(cfg, lg) <= 3.0 < gflops(cfg, _plan(cfg, lgtm, lg.r - 1))
    assert lgtm.window == 6  # the search keeps every other option


def test_budget_speedup_by_flops_and_impossible():
    from fastvit_jax.merge.options import MergeOptions

    cfg = variant_config("S/16")
    dfe = budget.options_for_speedup(cfg, MergeOptions("dfe"), 1.5, measured=False)
    plan = _plan(cfg, dfe, dfe.r)
    assert gflops(cfg) / gflops(cfg, plan) >= 1.5
    assert gflops(cfg) / gflops(cfg, _plan(cfg, dfe, plan.r - 1)) < 1.5
    with pytest.raises(FastViTError, match="no r <= 98 meets the budget"):
        budget.options_for_gflops(cfg, MergeOptions("dfe"), 0.1)
    with pytest.raises(FastViTError, match="need a merging --method"):
        budget.options_for_gflops(cfg, MergeOptions(), 1.0)


@pytest.mark.slow
def test_target_gflops_cli(capsys):
    from fastvit_jax.cli import main

    code = main(["bench", "--model", "vit_tiny_patch16_224", "--method", "tome", "--target-gflops", "0.9",
                 "--batch-size", "2", "--runs", "1", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["merged"]["gflops"] <= 0.9 and res["plan"]["r"] > 0


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """`fastvit eval` in two processes (jax.distributed on 127.0.0.1, CPU collectives over gloo), each
    decoding its share of every batch, reports what one process reports: the last partial batch and an
    unreadable image included."""
    import socket

    from PIL import Image

    from conftest import TINY, google_checkpoint

    np.savez(tmp_path / "m.npz", **google_checkpoint(TINY))
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(11):
        (data / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(data / f"c{i % 3}" / f"{i}.png")
    (data / "c1" / "broken.png").write_bytes(b"not an image")
    argv = [sys.executable, "-m", "fastvit_jax", "eval", "--checkpoint", str(tmp_path / "m.npz"), "--data", str(data),
            "--batch-size", "4", "--method", "tome", "--r", "4", "--json", "--no-progress", "--gelu", "tanh",
            "--preprocessing", "inception"]
    one = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i))) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    both = [json.loads(out) for out, _ in outs]
    for res in both:
        assert res["devices"] == 2
        assert (res["images"], res["labelled"], res["top1"], res["top5"]) == (
            one["images"], one["labelled"], one["top1"], one["top5"]) == (11, 11, one["top1"], one["top5"])
    assert sorted(f for res in both for f, _ in res["failed"]) == [f for f, _ in one["failed"]]
