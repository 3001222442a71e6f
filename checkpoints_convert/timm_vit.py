"""timm / DeiT ViT state dict -> Google (vision_transformer) parameter tree.

.safetensors files are read with safetensors' numpy API (no torch needed); .pth/.pt/.bin need the
optional torch extra and are read with torch.load(weights_only=True).

Layout changes: Linear weights are (out, in) in PyTorch and (in, out) in flax; the fused qkv Linear
is split into query/key/value kernels (width, heads, head_dim); the patch-embedding Conv goes from
OIHW to HWIO.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fastvit_jax.errors import FastViTError


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FastViTError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise FastViTError(f"{path}: not a readable .safetensors file ({e})") from None
    try:
        import torch
    except ImportError:
        raise FastViTError(f"{path}: reading PyTorch checkpoints needs torch "
                           f"(pip install 'fastvit-jax[torch]'), or convert to .safetensors") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FastViTError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return {k: v.float().numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in sd.items()}


def convert_state_dict(sd: dict[str, np.ndarray]) -> dict:
    """timm ViT/DeiT keys -> nested Google params (float32 numpy)."""
    sd = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in sd.items()}
    if "dist_token" in sd:
        raise FastViTError("distilled DeiT (dist_token) is not supported; use the non-distilled checkpoint")
    try:
        width = sd["cls_token"].shape[-1]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        heads = _infer_heads(sd, width)
        dh = width // heads
        p = {
            "embedding": {"kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                          "bias": sd["patch_embed.proj.bias"]},
            "cls": sd["cls_token"],
            "Transformer": {"posembed_input": {"pos_embedding": sd["pos_embed"]},
                            "encoder_norm": {"scale": sd["norm.weight"], "bias": sd["norm.bias"]}},
            "head": {"kernel": sd["head.weight"].T, "bias": sd["head.bias"]},
        }
        for i in range(depth):
            b = f"blocks.{i}."
            qkv_w = sd[b + "attn.qkv.weight"].reshape(3, width, width)  # (3, out, in)
            qkv_b = sd[b + "attn.qkv.bias"].reshape(3, width)
            attn = {name: {"kernel": qkv_w[j].T.reshape(width, heads, dh), "bias": qkv_b[j].reshape(heads, dh)}
                    for j, name in enumerate(("query", "key", "value"))}
            attn["out"] = {"kernel": sd[b + "attn.proj.weight"].T.reshape(heads, dh, width),
                           "bias": sd[b + "attn.proj.bias"]}
            p["Transformer"][f"encoderblock_{i}"] = {
                "LayerNorm_0": {"scale": sd[b + "norm1.weight"], "bias": sd[b + "norm1.bias"]},
                "MultiHeadDotProductAttention_1": attn,
                "LayerNorm_2": {"scale": sd[b + "norm2.weight"], "bias": sd[b + "norm2.bias"]},
                "MlpBlock_3": {"Dense_0": {"kernel": sd[b + "mlp.fc1.weight"].T, "bias": sd[b + "mlp.fc1.bias"]},
                               "Dense_1": {"kernel": sd[b + "mlp.fc2.weight"].T, "bias": sd[b + "mlp.fc2.bias"]}},
            }
    except KeyError as e:
        raise FastViTError(f"not a timm ViT state dict: missing key {e}") from None
    return p


# timm's ViT state dict has no head count; these are the published widths.
_HEADS = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}


def _infer_heads(sd: dict, width: int) -> int:
    if width in _HEADS:
        return _HEADS[width]
    raise FastViTError(f"cannot infer the number of heads for width {width}; pass heads explicitly")


def convert_file(path: str | Path) -> dict:
    return convert_state_dict(read_state_dict(path))


def to_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Inverse of convert_state_dict: Google params -> timm keys (for round-trip checks and export)."""
    t = params["Transformer"]
    width = params["cls"].shape[-1]
    sd = {
        "cls_token": params["cls"], "pos_embed": t["posembed_input"]["pos_embedding"],
        "patch_embed.proj.weight": params["embedding"]["kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": params["embedding"]["bias"],
        "norm.weight": t["encoder_norm"]["scale"], "norm.bias": t["encoder_norm"]["bias"],
        "head.weight": params["head"]["kernel"].T, "head.bias": params["head"]["bias"],
    }
    i = 0
    while f"encoderblock_{i}" in t:
        blk, b = t[f"encoderblock_{i}"], f"blocks.{i}."
        attn = blk["MultiHeadDotProductAttention_1"]
        sd[b + "attn.qkv.weight"] = np.concatenate(
            [attn[n]["kernel"].reshape(width, width).T for n in ("query", "key", "value")], axis=0)
        sd[b + "attn.qkv.bias"] = np.concatenate([attn[n]["bias"].reshape(width) for n in ("query", "key", "value")])
        sd[b + "attn.proj.weight"] = attn["out"]["kernel"].reshape(width, width).T
        sd[b + "attn.proj.bias"] = attn["out"]["bias"]
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            sd[b + dst + ".weight"], sd[b + dst + ".bias"] = blk[src]["scale"], blk[src]["bias"]
        for src, dst in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[b + f"mlp.{dst}.weight"] = blk["MlpBlock_3"][src]["kernel"].T
            sd[b + f"mlp.{dst}.bias"] = blk["MlpBlock_3"][src]["bias"]
        i += 1
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sd.items()}
