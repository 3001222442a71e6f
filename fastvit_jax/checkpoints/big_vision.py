"""google-research/big_vision files: the same ViT under other names, renamed onto our tree.

  - block children LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0
    (vision_transformer: _0, _1, _2, _3);
  - blocks scan-stacked as Transformer/encoderblock/... with a leading depth axis (scan=True);
  - a top-level pos_embedding (1, N, D) added *before* the class token, or none at all when the
    model uses fixed sincos2d embeddings;
  - MAP heads inlined at the top level (probe, MlpBlock_0, ...) in early files;
  - two-tower files (SigLIP, LiT, PaliGemma's) with the image tower under a prefix such as img/.
Adding a position embedding before the class token equals adding one with a zero class slot after
it, so the renamed file gives the same numbers through our model. Only the chosen tower's arrays
are read: the others (a text tower, a language model) stay on disk.
"""

from __future__ import annotations

import numpy as np

from fastvit_jax.checkpoints.arrays import Stored, fix_groupnorm, read_float32
from fastvit_jax.checkpoints.description import Description
from fastvit_jax.util.tree import flatten, strip_prefix, unflatten
from fastvit_jax.errors import FastViTError

NAME = "big_vision"
BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
         "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
MAP_HEAD_PARTS = ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0", "LayerNorm_0")


def towers(keys) -> list[str]:
    """Top-level groups that hold a ViT image tower (a patch embedding and a Transformer)."""
    keys = {strip_prefix(k) for k in keys}
    groups = {k.split("/", 1)[0] for k in keys if k.endswith("/embedding/kernel") and k.count("/") == 2}
    return sorted(g for g in groups if any(k.startswith(f"{g}/Transformer/") for k in keys))


def select_tower(stored: dict[str, Stored], source, tower: str | None) -> dict[str, Stored]:
    """The arrays of the image tower of a multi-tower file, keys relative to it (or the file itself
    when it is a plain ViT)."""
    flat = {strip_prefix(k): v for k, v in stored.items()}
    found = towers(flat)
    if any(k.startswith("llm/") for k in flat):  # PaliGemma: img/ feeds every token to the language model
        raise FastViTError(f"{source}: a PaliGemma file: its image tower runs without pooling (pool_type 'none'), "
                           f"each token projected by img/head into the language model; fastvit runs classifiers "
                           f"and pooled towers, and would pool these tokens silently: refused")
    if tower is None:
        if "embedding/kernel" in flat or not found:
            return flat
        if len(found) > 1:
            raise FastViTError(f"{source}: several image towers ({', '.join(found)}); choose one with --tower")
        tower = found[0]
    elif tower not in found:
        raise FastViTError(f"{source}: no image tower {tower!r}; towers found: {', '.join(found) or 'none'}")
    return {k[len(tower) + 1:]: v for k, v in flat.items() if k.startswith(tower + "/")}


def is_big_vision(keys) -> bool:
    keys = set(keys)
    return ("pos_embedding" in keys or "probe" in keys or any(k.startswith("Transformer/encoderblock/") for k in keys)
            or any(k.startswith("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/") for k in keys))


def matches(keys) -> bool:
    keys = [strip_prefix(k) for k in keys]
    found = towers(keys)
    if found and not any(k.startswith("embedding/") for k in keys):
        return True  # tower files are big_vision's (SigLIP, LiT, PaliGemma)
    return is_big_vision(keys)


def unstack_blocks(transformer: dict, source, where: str = "Transformer") -> dict:
    """{where}/encoderblock/<leaf (depth, ...)> -> encoderblock_{i}/<leaf>, every leaf the same depth."""
    stacked = flatten(transformer.pop("encoderblock"))
    first_key, first = next(iter(stacked.items()))
    depth = int(np.shape(first)[0]) if np.ndim(first) else 0
    for key, value in stacked.items():
        if np.ndim(value) == 0 or np.shape(value)[0] != depth:
            raise FastViTError(
                f"{source}: stacked key {where}/encoderblock/{key} has shape {tuple(np.shape(value))}, "
                f"expected a leading depth of {depth} like {where}/encoderblock/{first_key} "
                f"{tuple(np.shape(first))}")
    for i in range(depth):
        transformer[f"encoderblock_{i}"] = unflatten({k: np.asarray(v[i]) for k, v in stacked.items()})
    return transformer


def rename(params: dict, source) -> dict:
    params = dict(params)
    transformer = dict(params.get("Transformer", {}))
    if "encoderblock" in transformer:
        transformer = unstack_blocks(transformer, source)
    for name, block in list(transformer.items()):
        if name.startswith("encoderblock_"):
            transformer[name] = {BLOCK.get(k, k): v for k, v in block.items()}
    if "probe" in params:
        params["MAPHead_0"] = {k: params.pop(k) for k in MAP_HEAD_PARTS if k in params}
    pe = transformer.pop("pos_embedding", None)  # pre-2022 big_vision kept it in the encoder
    pe = params.pop("pos_embedding", pe)
    if pe is not None:
        pe = np.asarray(pe)
        tokens = pe.shape[1]
        if "cls" in params and int(np.sqrt(tokens)) ** 2 == tokens:
            pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)  # the class token gets none
        transformer["posembed_input"] = {"pos_embedding": pe}
    params["Transformer"] = transformer
    return params


def to_tree(stored: dict[str, Stored], source, folder=None, tower=None) -> tuple[dict, Description]:
    flat = select_tower(stored, source, tower)  # hybrids saved by today's flax get these names too
    params = rename(unflatten({k: read_float32(fix_groupnorm(k, v)) for k, v in flat.items()}), source)
    desc = Description(NAME)
    desc.assume("gelu", "tanh", "big_vision's ViT uses flax's nn.gelu (tanh approximation)")
    desc.assume("ln_eps", 1e-6, "flax LayerNorm as in big_vision")
    desc.assume("family", "inception", "Google's preprocessing: resize, pixels to [-1, 1]")
    return params, desc
