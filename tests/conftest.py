import os
import tempfile
from pathlib import Path

# JAX's persistent compilation cache for the whole suite, set before anything imports jax so the
# processes tests start (CLI subprocesses, notebook kernels, peers) inherit it: the same program
# compiled again (a model's init, a CLI run of a plan another test compiled) is read back instead.
# One folder per xdist worker, so no two processes write one entry at once.
_CACHE = Path(tempfile.gettempdir()) / f"fastvit_tests_jax_cache_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def google_checkpoint(config, seed=0):
    """Flat {key: array} in the exact Google .npz layout, with realistic scales (random values)."""
    from fastvit_jax.checkpoints.checkpoint import expected_shapes

    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in expected_shapes(config).items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "scale":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias":
            a = 0.02 * rng.standard_normal(shape)
        elif key == "cls" or leaf == "pos_embedding":
            a = 0.5 * rng.standard_normal(shape)
        else:  # kernels: fan-in scaled
            fan_in = int(np.prod(shape[:-1])) if key != "embedding/kernel" else int(np.prod(shape[:3]))
            if "out/kernel" in key:
                fan_in = shape[0] * shape[1]
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        flat[key] = a.astype(np.float32)
    return flat


SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331")


def labelled_images(folder, count: int = 6, size=(120, 150), seed: int = 0):
    """`count` random images named by ImageNet synset (labels 0, 1, 2, ...) in folder; returns it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{SYNSETS[i % 6]}_{i}.png")
    return folder


def _tiny():
    from fastvit_jax.config import ViTConfig

    return ViTConfig(width=32, depth=4, heads=2, mlp_dim=64, patch=4, image_size=32, num_classes=10)


TINY = _tiny()


@pytest.fixture
def tiny_config():
    return TINY


@pytest.fixture
def shared_dir():
    if not SHARED.exists():
        pytest.skip("../shared not present")
    return SHARED


def interrupt_on_call(monkeypatch, module, name: str, call: int):
    """Replace module.name so its `call`-th call raises KeyboardInterrupt (Ctrl-C mid-run); returns
    the original, to put back with monkeypatch.setattr before a rerun."""
    real, calls = getattr(module, name), []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(module, name, interrupted)
    return real
