"""timm (and DeiT) ViT state dicts: `model.safetensors` / `pytorch_model.bin` / `.pth`, alone or in a
Hugging Face folder whose config.json holds timm's `architecture` and `pretrained_cfg`.

Layout changes: Linear weights are (out, in) in PyTorch and (in, out) in flax; the fused qkv Linear
splits into query/key/value kernels (width, heads, head_dim); the patch-embedding Conv goes from
OIHW to HWIO. Distilled DeiT's `dist_token` and `head_dist` become `dist` and `head_dist`.
What the model is run with comes from pretrained_cfg: mean, std, interpolation, crop_pct, input
size; timm's ViT computes the exact GELU and LayerNorm with eps 1e-6.
"""

from __future__ import annotations

import re

import numpy as np

from fastvit_jax.checkpoints.arrays import Stored, read_float32
from fastvit_jax.checkpoints.description import Description
from fastvit_jax.errors import FastViTError

NAME = "timm"
# timm's state dict has no head count; these are the published widths (config.json's model_args
# can say otherwise).
HEADS = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16}
IMAGENET_DEFAULT = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic",
                    "crop_pct": 0.9}


def matches(keys) -> bool:
    return any(k.removeprefix("module.") == "patch_embed.proj.weight" for k in keys)


def convert_state_dict(sd: dict[str, np.ndarray], heads: int | None = None, source="state dict") -> dict:
    """timm ViT/DeiT keys -> nested Google params. Every key must be used: a LayerScale, an extra
    norm or a head this model does not have is refused, not dropped."""
    sd = {k.removeprefix("module."): np.asarray(v) for k, v in sd.items()}
    used = set()

    def take(key, shape=None):
        """sd[key], refused unless its shape is `shape` (None entries: any size). Reshapes below
        would otherwise accept a flattened or truncated array."""
        if key not in sd:
            raise FastViTError(f"{source}: not a timm ViT state dict: missing key {key}")
        used.add(key)
        a = sd[key]
        if shape is not None and (a.ndim != len(shape) or any(w not in (None, h) for w, h in zip(shape, a.shape))):
            want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
            raise FastViTError(f"{source}: key {key} has shape {tuple(a.shape)}, expected {want}")
        return a

    width = take("cls_token", (1, 1, None)).shape[-1]
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    heads = heads or HEADS.get(width)
    if heads is None:
        raise FastViTError(f"{source}: cannot tell the number of heads for width {width}: no config.json "
                           f"with model_args.num_heads beside the file")
    dh = width // heads
    if dh * heads != width:
        raise FastViTError(f"{source}: width {width} is not divisible by {heads} heads")
    mlp = take("blocks.0.mlp.fc1.weight", (None, width)).shape[0] if depth else 0
    p = {
        "embedding": {"kernel": take("patch_embed.proj.weight", (width, None, None, None)).transpose(2, 3, 1, 0)},
        "cls": take("cls_token"),
        "Transformer": {"posembed_input": {"pos_embedding": take("pos_embed", (1, None, width))},
                        "encoder_norm": {"scale": take("norm.weight", (width,)), "bias": take("norm.bias", (width,))}},
    }
    if "patch_embed.proj.bias" in sd:  # CLIP's patch embedding has none
        p["embedding"]["bias"] = take("patch_embed.proj.bias", (width,))
    if "norm_pre.weight" in sd:  # CLIP's LayerNorm before the blocks
        p["Transformer"]["pre_norm"] = {"scale": take("norm_pre.weight", (width,)), "bias": take("norm_pre.bias", (width,))}
    if "reg_token" in sd:  # DINOv2 with registers
        p["reg"] = take("reg_token", (1, None, width))
    if "dist_token" in sd:
        p["dist"] = take("dist_token", (1, 1, width))
    for head in ("head", "head_dist"):
        if f"{head}.weight" in sd:
            kernel = take(f"{head}.weight", (None, width)).T
            bias = take(f"{head}.bias", (kernel.shape[1],)) if f"{head}.bias" in sd else np.zeros(kernel.shape[1], np.float32)
            p[head] = {"kernel": kernel, "bias": bias}
    for i in range(depth):
        b = f"blocks.{i}."
        qkv_w = take(b + "attn.qkv.weight", (3 * width, width)).reshape(3, width, width)  # (3, out, in)
        qkv_b = take(b + "attn.qkv.bias", (3 * width,)).reshape(3, width)
        attn = {name: {"kernel": qkv_w[j].T.reshape(width, heads, dh), "bias": qkv_b[j].reshape(heads, dh)}
                for j, name in enumerate(("query", "key", "value"))}
        attn["out"] = {"kernel": take(b + "attn.proj.weight", (width, width)).T.reshape(heads, dh, width),
                       "bias": take(b + "attn.proj.bias", (width,))}
        p["Transformer"][f"encoderblock_{i}"] = {
            "LayerNorm_0": {"scale": take(b + "norm1.weight", (width,)), "bias": take(b + "norm1.bias", (width,))},
            "MultiHeadDotProductAttention_1": attn,
            "LayerNorm_2": {"scale": take(b + "norm2.weight", (width,)), "bias": take(b + "norm2.bias", (width,))},
            "MlpBlock_3": {"Dense_0": {"kernel": take(b + "mlp.fc1.weight", (mlp, width)).T, "bias": take(b + "mlp.fc1.bias", (mlp,))},
                           "Dense_1": {"kernel": take(b + "mlp.fc2.weight", (width, mlp)).T, "bias": take(b + "mlp.fc2.bias", (width,))}},
        }
        for ls in ("ls1", "ls2"):  # LayerScale (DeiT III, DINOv2)
            if b + ls + ".gamma" in sd:
                p["Transformer"][f"encoderblock_{i}"][ls] = {"scale": take(b + ls + ".gamma", (width,))}
    unused = sorted(set(sd) - used)
    if unused:
        raise FastViTError(f"{source}: {len(unused)} key(s) this ViT does not have, e.g. {unused[0]} "
                           f"{tuple(sd[unused[0]].shape)}: refused rather than half-loaded")
    return p


def describe(folder_config: dict | None, source, clip: bool = False) -> Description:
    """clip: the state dict has CLIP's pre-blocks LayerNorm (timm builds CLIP towers with nn.LayerNorm,
    eps 1e-5; OpenAI's weights with QuickGELU, which only the model's name or model_args can say)."""
    desc = Description(NAME)
    args = (folder_config or {}).get("model_args") or {}
    quick = "quickgelu" in str((folder_config or {}).get("architecture", "")) or args.get("act_layer") == "quick_gelu"
    desc.state("gelu", "quick" if quick else "exact",
               "config.json names QuickGELU" if quick else "timm's ViT (nn.GELU)")
    desc.state("ln_eps", 1e-5 if clip else 1e-6,
               "timm's CLIP tower (nn.LayerNorm, eps 1e-5)" if clip else "timm's ViT (LayerNorm eps 1e-6)")
    cfg = (folder_config or {}).get("pretrained_cfg")
    where = "config.json pretrained_cfg"
    if cfg:
        crop_mode = cfg.get("crop_mode", "center")
        if crop_mode != "center":
            raise FastViTError(f"{source}: pretrained_cfg crop_mode {crop_mode!r} is not supported (allowed: center)")
        desc.state("family", "deit", f"{where} (shorter side to input/crop_pct, center crop)")
        for key in ("mean", "std"):
            if key in cfg:
                desc.state(key, tuple(float(v) for v in cfg[key]), f"{where}.{key}")
        if "interpolation" in cfg:
            desc.state("interpolation", cfg["interpolation"], f"{where}.interpolation")
        if "crop_pct" in cfg:
            desc.state("crop_pct", float(cfg["crop_pct"]), f"{where}.crop_pct")
        if "input_size" in cfg:
            desc.state("image_size", int(cfg["input_size"][-1]), f"{where}.input_size")
        if cfg.get("tag"):
            desc.model_family = f"timm:{folder_config.get('architecture', '?')}.{cfg['tag']}"
    else:
        desc.model_family = "deit"
    why = ("timm's ImageNet defaults (DeiT's), since no config.json with timm's pretrained_cfg is beside the file"
           if not cfg else "timm's ImageNet default, which pretrained_cfg leaves in place")
    desc.assume("family", "deit", why)
    for key, value in IMAGENET_DEFAULT.items():
        desc.assume(key, value, why)
    return desc


def to_tree(stored: dict[str, Stored], source, folder=None, tower=None) -> tuple[dict, Description]:
    config = folder.config if folder else None
    heads = ((config or {}).get("model_args") or {}).get("num_heads")
    sd = {k: read_float32(v) for k, v in stored.items()}
    params = convert_state_dict(sd, heads, source)
    desc = describe(config, source, clip="pre_norm" in params["Transformer"])
    classes = (config or {}).get("num_classes")
    head = params.get("head", {}).get("kernel")
    if classes is not None and int(classes) != (0 if head is None else head.shape[1]):
        raise FastViTError(f"{source}: config.json says num_classes {classes} but the head has "
                           f"{0 if head is None else head.shape[1]} outputs")
    return params, desc


def to_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Inverse of convert_state_dict: Google params -> timm keys (for round-trip checks and export)."""
    t = params["Transformer"]
    width = params["cls"].shape[-1]
    sd = {
        "cls_token": params["cls"], "pos_embed": t["posembed_input"]["pos_embedding"],
        "patch_embed.proj.weight": params["embedding"]["kernel"].transpose(3, 2, 0, 1),
        "norm.weight": t["encoder_norm"]["scale"], "norm.bias": t["encoder_norm"]["bias"],
    }
    if "bias" in params["embedding"]:
        sd["patch_embed.proj.bias"] = params["embedding"]["bias"]
    if "pre_norm" in t:
        sd["norm_pre.weight"], sd["norm_pre.bias"] = t["pre_norm"]["scale"], t["pre_norm"]["bias"]
    if "reg" in params:
        sd["reg_token"] = params["reg"]
    if "dist" in params:
        sd["dist_token"] = params["dist"]
    for head in ("head", "head_dist"):
        if head in params:
            sd[f"{head}.weight"], sd[f"{head}.bias"] = params[head]["kernel"].T, params[head]["bias"]
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
        for ls in ("ls1", "ls2"):
            if ls in blk:
                sd[b + ls + ".gamma"] = blk[ls]["scale"]
        i += 1
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sd.items()}
