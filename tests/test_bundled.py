"""The bundled real DeiT-Tiny: loads, converts losslessly, classifies the bundled images, demo runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from checkpoints_convert import timm_vit
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.data import batches, image_folder
from fastvit_jax.studies.demo import bundled_model
from fastvit_jax.models.forward import make_forward
from fastvit_jax.checkpoints.registry import asset_path


def test_bundled_round_trips_bit_exactly(tmp_path):
    from safetensors.numpy import save_file

    params, config = checkpoint.load(asset_path("deit_tiny_patch16_224.npz"))
    assert config.variant == "Ti/16"
    save_file(timm_vit.to_state_dict(params), str(tmp_path / "d.safetensors"))
    from_st, _ = checkpoint.load(tmp_path / "d.safetensors")
    checkpoint.save_orbax(from_st, tmp_path / "orbax")
    from_orbax, _ = checkpoint.load(tmp_path / "orbax")
    for k, v in checkpoint.flatten(params).items():
        np.testing.assert_array_equal(checkpoint.flatten(from_st)[k], v)
        np.testing.assert_array_equal(checkpoint.flatten(from_orbax)[k], v)


def test_bundled_images_classified():
    params, config, pre = bundled_model()
    ds = image_folder(asset_path("images"))
    assert len(ds) == 32 and all(lab >= 0 for _, lab in ds.items)
    b = next(batches(ds, pre, 32))
    logits = np.asarray(make_forward(config)(params, b.images))
    # Recorded when the images were bundled: 25 of 32 correct (0.781), dense.
    assert int((logits.argmax(-1) == b.labels).sum()) == 25


@pytest.mark.slow
def test_demo_json(capsys):
    assert main(["demo", "--json", "--configs", "none:0,dfe:8", "--runs", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["r"]) for r in rows] == [("none", 0), ("dfe", 8)]
    assert set(rows[0]) == {"method", "r", "top1", "gflops", "images_per_s", "speedup"}
    assert rows[0]["top1"] == 25 / 32 and rows[1]["gflops"] < rows[0]["gflops"]


def test_predict_defaults_to_bundled(capsys):
    img = sorted(asset_path("images").iterdir())[0]
    assert main(["predict", str(img), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["top5"][0]["label"] == "tench"


CIFAR_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test"


@pytest.mark.parametrize("name", ["vit_cifar_adamw", "vit_cifar_sam"])
def test_bundled_cifar_loads_by_name(tmp_path, capsys, name):
    """`--model vit_cifar_adamw|sam` with no --checkpoint uses the bundled weights (class-folder data)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("airplane", "cat"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.jpg")
    assert main(["eval", "--model", name, "--data", str(tmp_path), "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["labelled"] == 4 and abs(res["gflops"] - 0.6132) < 1e-3


@pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason="needs ../shared/data/cifar10")
@pytest.mark.parametrize("name,correct", [("vit_cifar_adamw", 365), ("vit_cifar_sam", 366)])
def test_bundled_cifar_accuracy_on_real_test_images(name, correct):
    """Recorded when the models were bundled: correct of 500 test images (spread over the classes)."""
    from fastvit_jax.data import load_arrays, spread
    from fastvit_jax.checkpoints.hub import load_model

    params, config, pre = load_model(name)
    images, labels = load_arrays(spread(image_folder(CIFAR_TEST), 500), pre)
    logits = np.asarray(make_forward(config)(params, images))
    assert (logits.argmax(-1) == labels).sum() == correct
