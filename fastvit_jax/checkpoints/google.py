"""google-research/vision_transformer files (.npz, orbax): already our tree, under optional
`params/` or `opt/target/` prefixes.

The one fix-up its own loader makes (vit_jax/checkpoint.py, `_fix_groupnorm`): the published ResNet
hybrids store every GroupNorm scale and bias as (1, 1, 1, C); the model's are (C,).
"""

from __future__ import annotations

from fastvit_jax.checkpoints import big_vision
from fastvit_jax.checkpoints.arrays import Stored, fix_groupnorm, read_float32
from fastvit_jax.checkpoints.description import Description
from fastvit_jax.util.tree import strip_prefix, unflatten

NAME = "vision_transformer"


def matches(keys) -> bool:
    return any(strip_prefix(k).endswith("embedding/kernel") for k in keys)


def to_tree(stored: dict[str, Stored], source, folder=None, tower=None) -> tuple[dict, Description]:
    flat = big_vision.select_tower(stored, source, tower)
    params = unflatten({k: read_float32(fix_groupnorm(k, v)) for k, v in flat.items()})
    desc = Description(NAME)
    desc.assume("gelu", "tanh", "Google trained with flax's nn.gelu (tanh approximation)")
    desc.assume("ln_eps", 1e-6, "flax LayerNorm as in vision_transformer")
    desc.assume("family", "inception", "Google's preprocessing: resize, pixels to [-1, 1]")
    return params, desc
