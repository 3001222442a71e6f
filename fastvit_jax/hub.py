"""One call from a model name and/or a file to (params, config, preprocessing)."""

from __future__ import annotations

from pathlib import Path

from fastvit_jax import checkpoint
from fastvit_jax.data import Preprocess
from fastvit_jax.errors import FastViTError
from fastvit_jax.registry import DEFAULT_MODEL, asset_path, get_entry


def load_model(name: str | None = None, path: str | Path | None = None, *, gelu: str | None = None,
               preprocessing: str | None = None, crop_pct: float | None = None, random_weights: bool = False,
               notes: list | None = None, tower: str | None = None):
    """(params, config, Preprocess).

    name only: the bundled weights, else the official file (downloaded into the cache once).
    path only: the architecture is inferred from the shapes; GELU and preprocessing come from what
    the file says it is (files written by `fastvit convert`, timm/DeiT files), else Google's defaults,
    and a line saying so is appended to `notes`.
    neither: the bundled DeiT-Tiny. random_weights: the named architecture, randomly initialised.
    """
    if name is None and path is None:
        name = DEFAULT_MODEL
    entry = get_entry(name) if name else None
    config = entry.config if entry else None
    if config is not None and gelu:
        config = config.replace(gelu=gelu)
    if path is None and entry is not None and not random_weights:
        path = _official_file(entry)
    if path is None:  # random weights of a named architecture
        from fastvit_jax.models.vit import init_params

        params, meta = init_params(config), None
    else:
        params, config, meta = checkpoint.load(path, config, with_meta=True, tower=tower, notes=notes)
    if entry is not None:
        return params, config, Preprocess(preprocessing or entry.preprocessing, config.image_size,
                                          crop_pct or entry.crop_pct)
    meta = meta or {}
    if not meta and not (gelu and preprocessing) and notes is not None:
        notes.append(f"{path} does not say what model it is: assumed a Google ViT ({gelu or 'tanh'} GELU, "
                     f"{preprocessing or 'inception'} preprocessing); pass --model, or --gelu and --preprocessing")
    config = config.replace(gelu=gelu or meta.get("gelu", "tanh"))
    return params, config, Preprocess(preprocessing or meta.get("preprocessing", "inception"), config.image_size,
                                      crop_pct or meta.get("crop_pct", 0.9))


def _official_file(entry) -> Path:
    if entry.bundled:
        return asset_path(entry.bundled)
    if entry.url is None:
        raise FastViTError(f"{entry.name} has no official Google file; convert timm weights with "
                           f"`fastvit convert WEIGHTS.safetensors OUT.npz` and pass --checkpoint OUT.npz")
    return checkpoint.download(entry.url)
