"""Hugging Face transformers folders: `ViTForImageClassification` / `ViTModel` (model.safetensors,
pytorch_model.bin or flax_model.msgpack) and SigLIP vision towers (`SiglipVisionModel`, or the
vision half of a `SiglipModel`), with config.json and preprocessor_config.json beside them.

Names map one to one onto our tree (query/key/value Linears become (width, heads, head_dim)
kernels; `layernorm_before`/`layernorm_after` are LayerNorm_0/LayerNorm_2; ViTModel's tanh pooler
is our pre_logits; SigLIP's attention-pooling head is MAPHead_0). The GELU form, LayerNorm eps,
heads and classes come from config.json (transformers' ViT uses eps 1e-12 and the exact GELU; SigLIP
eps 1e-6 and the tanh GELU); the preprocessing from preprocessor_config.json (a square resize with
its resample filter, rescale by 1/255, its mean and std).
"""

from __future__ import annotations

import math
import re

import numpy as np

from fastvit_jax.checkpoints.arrays import Stored, read_float32
from fastvit_jax.checkpoints.description import Description
from fastvit_jax.checkpoints.resample import resample_grid
from fastvit_jax.errors import FastViTError

NAME = "transformers"
GELUS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "quick_gelu": "quick"}
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_VIT = re.compile(r"^(vit\.)?embeddings\.patch_embeddings\.projection\.(weight|kernel)$")
_SIGLIP = "vision_model.embeddings.patch_embedding.weight"
_CLIP = "vision_model.embeddings.class_embedding"
_DINOV2 = "encoder.layer.0.norm1.weight"


def matches(keys) -> bool:
    return any(_VIT.match(_torch_name(k)) or _torch_name(k).removeprefix("vision_model.").startswith(_SIGLIP[13:-6])
               for k in keys)


def _torch_name(key: str) -> str:
    return key.replace("/", ".")


def torch_layout(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax msgpack names and layouts (a/b/kernel (in, out), scale) -> the PyTorch ones (a.b.weight
    (out, in), weight): one mapping then serves both formats."""
    if not any("/" in k for k in sd):
        return sd
    out = {}
    for key, value in sd.items():
        *path, leaf = key.split("/")
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            leaf = "weight"
        elif leaf == "scale":
            leaf = "weight"
        out[".".join(path + [leaf])] = value
    return out


class _Keys:
    """Takes keys from a state dict; whatever is left at the end was not understood."""

    def __init__(self, sd, source):
        self.sd, self.source, self.used = sd, source, set()

    def __call__(self, key, ndim=None):
        if key not in self.sd:
            raise FastViTError(f"{self.source}: missing key {key} (transformers layout)")
        self.used.add(key)
        a = self.sd[key]
        if ndim is not None and np.ndim(a) != ndim:  # the reshapes below would accept a flattened array
            raise FastViTError(f"{self.source}: key {key} has shape {tuple(np.shape(a))}, expected {ndim} dimensions")
        return a

    def has(self, key):
        return key in self.sd

    def _linear(self, name):
        """(weight (in, out), bias (out,)), refused unless the bias matches the weight's outputs."""
        w, b = self(name + ".weight", 2).T, self(name + ".bias", 1)
        if b.shape[0] != w.shape[1]:
            raise FastViTError(f"{self.source}: {name}.bias has shape {tuple(b.shape)}, expected ({w.shape[1]},)")
        return w, b

    def linear(self, name):
        w, b = self._linear(name)
        return {"kernel": w, "bias": b}

    def norm(self, name):
        return {"scale": self(name + ".weight", 1), "bias": self(name + ".bias", 1)}

    def heads(self, name, heads):
        w, b = self._linear(name)
        return {"kernel": w.reshape(w.shape[0], heads, -1), "bias": b.reshape(heads, -1)}

    def out(self, name, heads):
        w, b = self._linear(name)  # (in = heads * dh, width)
        return {"kernel": w.reshape(heads, -1, w.shape[1]), "bias": b}

    def finish(self, ignore=()):
        unused = sorted(k for k in set(self.sd) - self.used if not any(k.startswith(p) for p in ignore))
        if unused:
            raise FastViTError(f"{self.source}: {len(unused)} key(s) this ViT does not have, e.g. {unused[0]} "
                               f"{tuple(np.shape(self.sd[unused[0]]))}: refused rather than half-loaded")


# Where a block's parameters sit in each model, below `{prefix}{layers}.{i}.`
VIT_BLOCK = {"layers": "encoder.layer", "LayerNorm_0": "layernorm_before", "LayerNorm_2": "layernorm_after",
             "query": "attention.attention.query", "key": "attention.attention.key",
             "value": "attention.attention.value", "out": "attention.output.dense",
             "Dense_0": "intermediate.dense", "Dense_1": "output.dense"}
SIGLIP_BLOCK = {"layers": "encoder.layers", "LayerNorm_0": "layer_norm1", "LayerNorm_2": "layer_norm2",
                "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
                "out": "self_attn.out_proj", "Dense_0": "mlp.fc1", "Dense_1": "mlp.fc2"}


def blocks(take: "_Keys", heads: int, prefix: str, names: dict) -> dict:
    """encoderblock_{i} for every block the state dict has, in our names (with LayerScale's ls1/ls2
    where `names` maps them)."""
    out, i = {}, 0
    while take.has(f"{prefix}{names['layers']}.{i}.{names['LayerNorm_0']}.weight"):
        b = f"{prefix}{names['layers']}.{i}."
        attn = {n: take.heads(b + names[n], heads) for n in ("query", "key", "value")}
        attn["out"] = take.out(b + names["out"], heads)
        out[f"encoderblock_{i}"] = {
            "LayerNorm_0": take.norm(b + names["LayerNorm_0"]), "MultiHeadDotProductAttention_1": attn,
            "LayerNorm_2": take.norm(b + names["LayerNorm_2"]),
            "MlpBlock_3": {d: take.linear(b + names[d]) for d in ("Dense_0", "Dense_1")}}
        for ls in ("ls1", "ls2"):
            if ls in names:
                out[f"encoderblock_{i}"][ls] = {"scale": take(b + names[ls], 1)}
        i += 1
    return out


def vit_embeddings(take: "_Keys", prefix: str) -> dict:
    """ViTModel's and Dinov2Model's embeddings (patch projection, class token, position embeddings)
    and final `layernorm`, in our names."""
    e = prefix + "embeddings."
    return {"embedding": {"kernel": take(e + "patch_embeddings.projection.weight").transpose(2, 3, 1, 0),
                          "bias": take(e + "patch_embeddings.projection.bias")},
            "cls": take(e + "cls_token"),
            "Transformer": {"posembed_input": {"pos_embedding": take(e + "position_embeddings")},
                            "encoder_norm": take.norm(prefix + "layernorm")}}


def vit_tree(sd: dict, config: dict, source) -> dict:
    prefix = "vit." if any(k.startswith("vit.") for k in sd) else ""
    take, heads = _Keys(sd, source), int(config["num_attention_heads"])
    p = vit_embeddings(take, prefix)
    p["Transformer"].update(blocks(take, heads, prefix, VIT_BLOCK))
    if take.has(prefix + "pooler.dense.weight"):  # ViTModel: tanh(Dense(cls)), vision_transformer's pre_logits
        p["pre_logits"] = take.linear(prefix + "pooler.dense")
    if take.has("classifier.weight"):
        p["head"] = take.linear("classifier")
    take.finish()
    return p


def siglip_tree(sd: dict, config: dict, source) -> dict:
    take, heads = _Keys(sd, source), int(config["num_attention_heads"])
    v = "vision_model."
    pe = take(v + "embeddings.position_embedding.weight")  # (N, D): an nn.Embedding over patch positions
    p = {"embedding": {"kernel": take(v + "embeddings.patch_embedding.weight").transpose(2, 3, 1, 0),
                       "bias": take(v + "embeddings.patch_embedding.bias")},
         "Transformer": {"posembed_input": {"pos_embedding": pe[None]},
                         "encoder_norm": take.norm(v + "post_layernorm")}}
    p["Transformer"].update(blocks(take, heads, v, SIGLIP_BLOCK))
    h = v + "head."
    if take.has(h + "probe"):
        w, bias = take(h + "attention.in_proj_weight"), take(h + "attention.in_proj_bias")  # (3D, D), (3D,)
        width = w.shape[1]
        attn = {n: {"kernel": w[j * width:(j + 1) * width].T.reshape(width, heads, -1),
                    "bias": bias[j * width:(j + 1) * width].reshape(heads, -1)}
                for j, n in enumerate(("query", "key", "value"))}
        attn["out"] = take.out(h + "attention.out_proj", heads)
        p["MAPHead_0"] = {"probe": take(h + "probe"), "MultiHeadDotProductAttention_0": attn,
                          "LayerNorm_0": take.norm(h + "layernorm"),
                          "MlpBlock_0": {"Dense_0": take.linear(h + "mlp.fc1"), "Dense_1": take.linear(h + "mlp.fc2")}}
    take.finish(ignore=("text_model.", "logit_scale", "logit_bias"))  # a SiglipModel's other tower
    return p


DINOV2_BLOCK = {**VIT_BLOCK, "LayerNorm_0": "norm1", "LayerNorm_2": "norm2", "Dense_0": "mlp.fc1", "Dense_1": "mlp.fc2",
                "ls1": "layer_scale1.lambda1", "ls2": "layer_scale2.lambda1"}


def dinov2_tree(sd: dict, config: dict, source) -> dict:
    """`Dinov2Model` / `Dinov2WithRegistersModel`: ViT's names with LayerScale (`layer_scale{1,2}.lambda1`)
    and register tokens (`embeddings.register_tokens`, placed after the class token with no position
    embedding). The pooled output is the class token after `layernorm`; `mask_token` is for training."""
    prefix = "dinov2." if any(k.startswith("dinov2.") for k in sd) else ""
    take, heads = _Keys(sd, source), int(config["num_attention_heads"])
    e = prefix + "embeddings."
    p = vit_embeddings(take, prefix)
    if take.has(e + "register_tokens"):
        p["reg"] = take(e + "register_tokens", 3)
    p["Transformer"].update(blocks(take, heads, prefix, DINOV2_BLOCK))
    take.finish(ignore=(e + "mask_token",))
    return p


def _fit_posemb(params: dict, desc: Description, patch: int, antialias: bool) -> None:
    """transformers' DINOv2 resamples the patch position embeddings to the input's grid on every call
    (bicubic as torch; antialiased with registers): done once here for the processor's crop."""
    if not desc.image_size:
        return
    pe = params["Transformer"]["posembed_input"]
    posemb = np.asarray(pe["pos_embedding"], np.float32)
    old, new = math.isqrt(posemb.shape[1] - 1), desc.image_size // patch
    if old * old != posemb.shape[1] - 1 or old == new:
        return
    grid = resample_grid(posemb[0, 1:].reshape(old, old, -1), (new, new), antialias)
    pe["pos_embedding"] = np.concatenate([posemb[:, :1], grid.reshape(1, new * new, -1).astype(np.float32)], 1)
    desc.sources["image_size"] += (f" (position embeddings resampled from the weights' {old}x{old} grid, "
                                   f"bicubic{' antialiased' if antialias else ''} as transformers does at run time)")


def clip_tree(sd: dict, config: dict, source) -> dict:
    """`CLIPVisionModel` (or a `CLIPModel`'s vision half, or `CLIPVisionModelWithProjection`): SigLIP's
    block names, a class embedding (D,), a LayerNorm before the blocks (`pre_layrnorm`, as spelled),
    no patch-embedding bias; `visual_projection` (no bias) becomes the head."""
    take, heads = _Keys(sd, source), int(config["num_attention_heads"])
    v = "vision_model."
    p = {"embedding": {"kernel": take(v + "embeddings.patch_embedding.weight").transpose(2, 3, 1, 0)},
         "cls": take(v + "embeddings.class_embedding", 1)[None, None],
         "Transformer": {"posembed_input": {"pos_embedding": take(v + "embeddings.position_embedding.weight", 2)[None]},
                         "pre_norm": take.norm(v + "pre_layrnorm"), "encoder_norm": take.norm(v + "post_layernorm")}}
    p["Transformer"].update(blocks(take, heads, v, SIGLIP_BLOCK))
    if take.has("visual_projection.weight"):
        w = take("visual_projection.weight", 2).T
        p["head"] = {"kernel": w, "bias": np.zeros(w.shape[1], np.float32)}
    take.finish(ignore=("text_model.", "text_projection", "logit_scale", v + "embeddings.position_ids"))
    return p


def model_config(folder_config: dict | None, source, siglip: bool) -> dict:
    if not folder_config:
        raise FastViTError(f"{source}: a transformers checkpoint needs its config.json beside it "
                           f"(heads, GELU and LayerNorm eps are not in the weights)")
    config = folder_config.get("vision_config", folder_config)  # a two-tower model's image half
    for key in ("num_attention_heads",):
        if key not in config:
            raise FastViTError(f"{source}: config.json has no {key}")
    return config


def describe(config: dict, pre: dict | None, siglip: bool, source, where: str = "preprocessor_config.json",
             input_from_processor: bool = False) -> Description:
    """input_from_processor: the model runs at the processor's crop whatever the weights' grid
    (transformers' DINOv2 interpolates its position embeddings at run time)."""
    desc = Description(NAME)
    act = config.get("hidden_act", "gelu_pytorch_tanh" if siglip else "gelu")
    if act not in GELUS:
        raise FastViTError(f"{source}: config.json hidden_act {act!r} is not supported (allowed: {', '.join(GELUS)})")
    how = "config.json hidden_act" if "hidden_act" in config else "transformers' default hidden_act"
    desc.state("gelu", GELUS[act], f"{how} {act!r}")
    eps = config.get("layer_norm_eps")
    desc.state("ln_eps", float(eps if eps is not None else 1e-6 if siglip else 1e-12),
               "config.json layer_norm_eps" if eps is not None else "transformers' default layer_norm_eps")
    if "image_size" in config:
        desc.state("image_size", int(config["image_size"]), "config.json image_size")
    if pre is None:
        defaults = "SiglipImageProcessor" if siglip else "ViTImageProcessor"
        why = f"no {where} in the folder: {defaults}'s defaults, a square resize"
        desc.assume("family", "inception", why)
        desc.assume("interpolation", "bicubic" if siglip else "bilinear", why)
        desc.assume("mean", (0.5, 0.5, 0.5), why)
        desc.assume("std", (0.5, 0.5, 0.5), why)
        return desc
    size, crop = pre.get("size"), pre.get("crop_size")
    crop_side = (crop.get("height") if crop.get("height") == crop.get("width") else None) if isinstance(crop, dict) \
        else crop
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    resize_then_crop = pre.get("do_center_crop") and shortest and crop_side  # CLIP's and DINOv2's processors
    if not pre.get("do_resize", True) or (pre.get("do_center_crop") and not resize_then_crop):
        raise FastViTError(f"{source}: {where} asks for do_resize={pre.get('do_resize')}, "
                           f"do_center_crop={pre.get('do_center_crop')} with size {size} and crop_size {crop}: "
                           f"only a square resize, or a shortest-edge resize and a square center crop, is supported")
    if pre.get("do_rescale", True) and abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise FastViTError(f"{source}: {where} rescale_factor {pre['rescale_factor']} is not 1/255")
    if resize_then_crop:
        desc.state("family", "hf_crop", f"{where} (shortest edge to size, center crop to crop_size)")
        desc.state("crop_pct", int(crop_side) / int(shortest), f"{where} crop_size / size.shortest_edge")
        if "image_size" not in desc.sources or input_from_processor:
            desc.state("image_size", int(crop_side), f"{where}.crop_size")
    else:
        desc.state("family", "inception", f"{where} (resize to size, no crop)")
    resample = pre.get("resample", 3 if siglip else 2)
    desc.state("interpolation", PIL_RESAMPLE.get(int(resample), "bilinear"), f"{where}.resample {resample}")
    if pre.get("do_normalize", True):
        for key in ("mean", "std"):
            if f"image_{key}" in pre:
                desc.state(key, tuple(float(x) for x in pre[f"image_{key}"]), f"{where}.image_{key}")
    else:
        desc.state("mean", (0.0, 0.0, 0.0), f"{where}.do_normalize false")
        desc.state("std", (1.0, 1.0, 1.0), f"{where}.do_normalize false")
    size = pre.get("size")
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    if side and "image_size" not in desc.sources:
        desc.state("image_size", int(side), f"{where}.size")
    return desc


def class_labels(config: dict, num_classes: int) -> tuple[str, ...] | None:
    """A fine-tuned folder's own class names (config.json id2label), unless transformers' placeholders."""
    id2label = (config or {}).get("id2label")
    if not isinstance(id2label, dict) or not num_classes or len(id2label) != num_classes:
        return None
    try:
        names = tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(num_classes))
    except KeyError:
        return None
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def to_tree(stored: dict[str, Stored], source, folder=None, tower=None) -> tuple[dict, Description]:
    sd = torch_layout({k: read_float32(v) for k, v in stored.items()
                       if not _torch_name(k).startswith("text_model.")})  # a SiglipModel's text half stays on disk
    if _SIGLIP.removeprefix("vision_model.") in sd:  # transformers 5 saves a vision model's keys unprefixed
        sd = {"vision_model." + k: v for k, v in sd.items()}
    clip, dinov2 = _CLIP in sd, any(k.removeprefix("dinov2.") == _DINOV2 for k in sd)
    siglip = _SIGLIP in sd
    folder_config = folder.config if folder else None
    config = model_config(folder_config, source, siglip)
    tree = clip_tree if clip else siglip_tree if siglip else dinov2_tree if dinov2 else vit_tree
    params = tree(sd, config, source)
    desc = describe(config, folder.preprocessor if folder else None, siglip and not clip, source,
                    folder.preprocessor_file if folder else "preprocessor_config.json", input_from_processor=dinov2)
    if dinov2:
        _fit_posemb(params, desc, int(config.get("patch_size", 14)), antialias="reg" in params)
    desc.labels = class_labels(folder_config, int(params["head"]["bias"].shape[0]) if "head" in params else 0)
    desc.model_family = f"transformers:{folder_config.get('model_type', '?')}"
    width = params["embedding"]["kernel"].shape[-1]
    if int(config.get("hidden_size", width)) != width:
        raise FastViTError(f"{source}: config.json hidden_size {config['hidden_size']} contradicts the weights "
                           f"(width {width})")
    return params, desc
