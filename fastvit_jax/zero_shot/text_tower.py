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
import json
from pathlib import Path

import numpy as np

from fastvit_jax import checkpoints
from fastvit_jax.checkpoints.arrays import read_float32
from fastvit_jax.checkpoints.big_vision import unstack_blocks
from fastvit_jax.checkpoints.checkpoint import check_finite, shape_mismatch
from fastvit_jax.checkpoints.transformers import GELUS, _Keys, torch_layout
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
    # what a transformers folder says about its texts (None: a big_vision file, whose rules are big_vision's)
    tokenizer: Path | None = None  # the folder's spiece.model or tokenizer.json
    pad: int | None = None  # text_config.pad_token_id (None: the tokenizer's own pad id)
    rule: str = "big_vision"  # how text becomes ids: "big_vision" | "transformers" | "gemma" (zero_shot/tokenizer.py)


def _scalar(stored, key: str, source) -> float:
    value = np.asarray(read_float32(stored[key]), np.float64)
    if value.size != 1 or not np.isfinite(value).all():
        raise FastViTError(f"{source}: key {key} should hold one finite number, found shape {value.shape}")
    return float(value.reshape(-1)[0])


def read_text_tower(path: str | Path, pool: str | None = None) -> TextTower:
    """The text tower of a two-tower file at a local path, checked against its inferred config."""
    weights, folder = checkpoints.locate(path)
    arrays = checkpoints.list_arrays(weights)
    if any(k.replace("/", ".").startswith(HF_TEXT) for k in arrays):
        return transformers_text_tower(arrays, folder, path)
    stored = {strip_prefix(k): v for k, v in arrays.items()}
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


HF_TEXT = "text_model."
HF_TEXT_BLOCK = {"LayerNorm_0": "layer_norm1", "LayerNorm_1": "layer_norm2", "query": "self_attn.q_proj",
                 "key": "self_attn.k_proj", "value": "self_attn.v_proj", "out": "self_attn.out_proj",
                 "Dense_0": "mlp.fc1", "Dense_1": "mlp.fc2"}


def _tokenizer_class(folder: Path) -> str:
    """tokenizer_config.json's tokenizer_class ("" when the file or the field is missing or unreadable)."""
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def transformers_text_tower(arrays: dict, folder, path) -> TextTower:
    """A transformers `SiglipModel` folder's text half (`text_model.*`, `logit_scale`, `logit_bias`)
    in big_vision's text-tower tree: the same computation (no attention mask, the last token pooled,
    then `head`), so one model serves both. Heads, GELU and eps from config.json's text_config; the
    tokenizer is the folder's spiece.model, texts padded to max_length with text_config.pad_token_id,
    as transformers' SiglipProcessor(padding="max_length") does."""
    config = ((folder.config if folder else None) or {}).get("text_config")
    if not isinstance(config, dict) or "num_attention_heads" not in config:
        raise FastViTError(f"{path}: a transformers text tower needs its config.json with text_config "
                           f"(num_attention_heads, hidden_act, layer_norm_eps, pad_token_id)")
    sd = torch_layout({k: read_float32(v) for k, v in arrays.items()
                       if k.replace("/", ".").startswith(HF_TEXT) or k in ("logit_scale", "logit_bias")})
    take, heads = _Keys(sd, path), int(config["num_attention_heads"])
    t = HF_TEXT
    encoder = {"encoder_norm": take.norm(t + "final_layer_norm")}
    i = 0
    while take.has(f"{t}encoder.layers.{i}.layer_norm1.weight"):
        b = f"{t}encoder.layers.{i}."
        attn = {n: take.heads(b + HF_TEXT_BLOCK[n], heads) for n in ("query", "key", "value")}
        attn["out"] = take.out(b + HF_TEXT_BLOCK["out"], heads)
        encoder[f"encoderblock_{i}"] = {
            "LayerNorm_0": take.norm(b + "layer_norm1"), "MultiHeadDotProductAttention_0": attn,
            "LayerNorm_1": take.norm(b + "layer_norm2"),
            "MlpBlock_0": {d: take.linear(b + HF_TEXT_BLOCK[d]) for d in ("Dense_0", "Dense_1")}}
        i += 1
    params = {"Embed_0": {"embedding": take(t + "embeddings.token_embedding.weight", 2)},
              "pos_embedding": take(t + "embeddings.position_embedding.weight", 2)[None], "Encoder_0": encoder}
    if take.has(t + "head.weight"):
        params["head"] = take.linear(t + "head")
    scale = take("logit_scale") if take.has("logit_scale") else None
    if scale is None:
        raise FastViTError(f"{path}: a text tower but no logit_scale: not a two-tower SiglipModel file")
    bias = take("logit_bias") if take.has("logit_bias") else np.zeros(1)
    take.finish(ignore=("vision_model.", t + "embeddings.position_ids"))
    act = config.get("hidden_act", "gelu_pytorch_tanh")
    if act not in GELUS:
        raise FastViTError(f"{path}: config.json text_config hidden_act {act!r} is not supported "
                           f"(allowed: {', '.join(GELUS)})")
    text_config = dataclasses.replace(infer_text_config(params, "last"), gelu=GELUS[act],
                                      ln_eps=float(config.get("layer_norm_eps", 1e-6)))
    check_text_params(params, text_config, str(path))
    # SigLIP: spiece.model, padded with text_config.pad_token_id; SigLIP 2: the Gemma tokenizer.json,
    # padded with its own pad token (what SiglipProcessor pads with in both)
    found = [folder.path / n for n in ("spiece.model", "tokenizer.json") if folder and (folder.path / n).is_file()]
    gemma = bool(found) and found[0].suffix == ".json"
    if gemma and _tokenizer_class(folder.path).startswith("SiglipTokenizer"):  # SigLIP 1's rules, not Gemma's
        raise FastViTError(f"{path}: tokenizer.json of a SiglipTokenizer without its spiece.model: add the "
                           f"folder's spiece.model (or pass --tokenizer SPM)")
    return TextTower(params, text_config, float(np.asarray(scale).reshape(-1)[0]), float(np.asarray(bias).reshape(-1)[0]),
                     tokenizer=found[0] if found else None,
                     pad=None if gemma else int(config.get("pad_token_id", 1)), rule="gemma" if gemma else "transformers")
