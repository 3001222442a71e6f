"""timm / DeiT ViT state dict -> Google (vision_transformer) parameter tree, and back.

The mapping itself lives in fastvit_jax/checkpoints/timm.py (the one home of file layouts); this is
the converter's entry point to it. .safetensors files are read without torch; .pth/.pt/.bin need
the optional torch extra and are read with torch.load(weights_only=True).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastvit_jax.checkpoints import locate
from fastvit_jax.checkpoints.arrays import open_file
from fastvit_jax.checkpoints.timm import convert_state_dict, to_state_dict  # noqa: F401 (the converter's API)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    weights, _ = locate(path)
    return {k: v.read() for k, v in open_file(weights).items()}


def convert_file(path: str | Path) -> dict:
    weights, folder = locate(path)
    heads = (((folder.config if folder else None) or {}).get("model_args") or {}).get("num_heads")
    return convert_state_dict(read_state_dict(weights), heads, str(path))
