"""Other key layouts of the same ViT, renamed onto our tree (vision_transformer's) in one place.

google-research/big_vision stores the ViT it shares with vision_transformer under other names:
  - block children LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0
    (vision_transformer: _0, _1, _2, _3);
  - blocks scan-stacked as Transformer/encoderblock/... with a leading depth axis (scan=True);
  - a top-level pos_embedding (1, N, D) added *before* the class token, or none at all when the
    model uses fixed sincos2d embeddings;
  - two-tower files (SigLIP, LiT) with the image tower under a prefix such as img/.
Adding a position embedding before the class token equals adding one with a zero class slot after
it, so the renamed file gives the same numbers through our model.
"""

from __future__ import annotations

import numpy as np

from fastvit_jax.errors import FastViTError

BIG_VISION_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                    "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
MAP_HEAD_PARTS = ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0", "LayerNorm_0")


def towers(params: dict) -> list[str]:
    """Top-level groups that hold a ViT image tower (a patch embedding and a Transformer)."""
    return sorted(k for k, v in params.items()
                  if isinstance(v, dict) and "embedding" in v and "Transformer" in v)


def select_tower(params: dict, source, tower: str | None) -> dict:
    """The image tower of a multi-tower file (or the file itself when it is a plain ViT)."""
    found = towers(params)
    if tower is not None:
        if tower not in found:
            raise FastViTError(f"{source}: no image tower {tower!r}; towers found: {', '.join(found) or 'none'}")
        return params[tower]
    if "embedding" in params or not found:
        return params
    if len(found) > 1:
        raise FastViTError(f"{source}: several image towers ({', '.join(found)}); choose one with --tower")
    return params[found[0]]


def is_big_vision(params: dict) -> bool:
    t = params.get("Transformer", {})
    return ("pos_embedding" in params or "encoderblock" in t or "probe" in params
            or "MultiHeadDotProductAttention_0" in t.get("encoderblock_0", {}))


def unstack_blocks(transformer: dict, source) -> dict:
    """Transformer/encoderblock/<leaf (depth, ...)> -> encoderblock_{i}/<leaf>, every leaf the same depth."""
    from fastvit_jax.checkpoint import flatten, unflatten

    stacked = flatten(transformer.pop("encoderblock"))
    first_key, first = next(iter(stacked.items()))
    depth = int(np.shape(first)[0]) if np.ndim(first) else 0
    for key, value in stacked.items():
        if np.ndim(value) == 0 or np.shape(value)[0] != depth:
            raise FastViTError(
                f"{source}: stacked key Transformer/encoderblock/{key} has shape {tuple(np.shape(value))}, "
                f"expected a leading depth of {depth} like Transformer/encoderblock/{first_key} "
                f"{tuple(np.shape(first))}")
    for i in range(depth):
        transformer[f"encoderblock_{i}"] = unflatten({k: np.asarray(v[i]) for k, v in stacked.items()})
    return transformer


def from_big_vision(params: dict, source) -> dict:
    params = dict(params)
    transformer = dict(params.get("Transformer", {}))
    if "encoderblock" in transformer:
        transformer = unstack_blocks(transformer, source)
    for name, block in list(transformer.items()):
        if name.startswith("encoderblock_"):
            transformer[name] = {BIG_VISION_BLOCK.get(k, k): v for k, v in block.items()}
    if "probe" in params:  # MAP heads inlined at the top level (big_vision fixes these too)
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


def to_model_tree(params: dict, source, tower: str | None = None) -> tuple[dict, str]:
    """(params under our names, the layout they came in: "vision_transformer" or "big_vision")."""
    params = select_tower(params, source, tower)
    if is_big_vision(params):
        return from_big_vision(params, source), "big_vision"
    return params, "vision_transformer"
