"""The text half of a big_vision two-tower file (SigLIP, SigLIP 2, LiT with a ViT text tower):
`txt/...` as text_transformer.py names it, and the scalars `t` (log temperature) and `b` (SigLIP's
bias; absent in LiT and CLIP-style files, then 0). Only these arrays are read; the image tower and
anything else in the file stay on disk.

Scan-stacked files (SigLIP 2: Encoder_0/encoderblock/<leaf (depth, ...)>) are unstacked, and an old
file's second position embedding (Encoder_0/pos_embedding, added twice by mistake in training) is
folded into the first, as big_vision's loader does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fastvit_jax import checkpoints
from fastvit_jax.checkpoints.arrays import read_float32
from fastvit_jax.checkpoints.big_vision import unstack_blocks
from fastvit_jax.checkpoints.checkpoint import check_finite, shape_mismatch
from fastvit_jax.util.tree import strip_prefix, unflatten
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.text import TextConfig, expected_text_shapes, infer_text_config

TOWER = "txt"


@dataclasses.dataclass
class TextTower:
    params: dict
    config: TextConfig
    log_temperature: float  # t: logits are cosine x exp(t)
    bias: float  # b: SigLIP's learned bias (0 for files without one)


def _scalar(stored, key: str, source) -> float:
    value = np.asarray(read_float32(stored[key]), np.float64)
    if value.size != 1 or not np.isfinite(value).all():
        raise FastViTError(f"{source}: key {key} should hold one finite number, found shape {value.shape}")
    return float(value.reshape(-1)[0])


def read_text_tower(path: str | Path, pool: str | None = None) -> TextTower:
    """The text tower of a two-tower file at a local path, checked against its inferred config."""
    weights, _ = checkpoints.locate(path)
    stored = {strip_prefix(k): v for k, v in checkpoints.list_arrays(weights).items()}
    keys = [k for k in stored if k.startswith(TOWER + "/")]
    if not keys:
        towers = sorted({k.split("/", 1)[0] for k in stored if "/" in k})
        raise FastViTError(f"{path}: no text tower (no key under {TOWER}/; top-level groups: "
                           f"{', '.join(towers) or 'none'}): zero-shot needs a two-tower file such as SigLIP's")
    if "t" not in stored:
        raise FastViTError(f"{path}: a text tower but no temperature `t`: not a two-tower model file")
    t = _scalar(stored, "t", path)
    b = _scalar(stored, "b", path) if "b" in stored else 0.0
    params = unflatten({k[len(TOWER) + 1:]: read_float32(stored[k]) for k in keys})
    encoder = params.get("Encoder_0")
    if not isinstance(encoder, dict):
        raise FastViTError(f"{path}: text tower without Encoder_0: not big_vision's text_transformer")
    if "encoderblock" in encoder:
        params["Encoder_0"] = encoder = unstack_blocks(encoder, path, f"{TOWER}/Encoder_0")
    extra = encoder.pop("pos_embedding", None)
    if extra is not None and "pos_embedding" in params:
        params["pos_embedding"] = np.asarray(params["pos_embedding"]) + np.asarray(extra)
    config = infer_text_config(params, pool)
    check_text_params(params, config, str(path))
    return TextTower(params, config, t, b)


def check_text_params(params: dict, config: TextConfig, source: str) -> None:
    """Every key the text tower needs, with its shape, and nothing else; all finite floats."""

    found = shape_mismatch(params, expected_text_shapes(config))
    if found is not None:
        kind, key, have, shape = found
        raise FastViTError(f"{source}: " + {
            "missing": f"missing text-tower key {TOWER}/{key} (expected shape {shape})",
            "shape": f"text-tower key {TOWER}/{key} has shape {have}, expected {shape}",
            "extra": f"unexpected text-tower key {TOWER}/{key} (shape {have})"}[kind])
    check_finite(params, source)
