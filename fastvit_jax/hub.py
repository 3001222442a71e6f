"""One call from a model name and/or a file to (params, config, preprocessing)."""

from __future__ import annotations

from pathlib import Path

from fastvit_jax import checkpoint
from fastvit_jax.data import Preprocess
from fastvit_jax.errors import FastViTError
from fastvit_jax.registry import DEFAULT_MODEL, asset_path, get_entry

TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def load_model(name: str | None = None, path: str | Path | None = None, *, gelu: str | None = None,
               preprocessing: str | None = None, crop_pct: float | None = None, random_weights: bool = False):
    """(params, config, Preprocess).

    name only: the bundled weights, else the official file (downloaded into the cache once).
    path only: the architecture is inferred from the shapes (timm/DeiT files get exact GELU).
    neither: the bundled DeiT-Tiny. random_weights: the named architecture, randomly initialised.
    """
    if name is None and path is None:
        name = DEFAULT_MODEL
    entry = get_entry(name) if name else None
    config = entry.config if entry else None
    if config is not None and gelu:
        config = config.replace(gelu=gelu)
    if path is None and entry is not None and not random_weights:
        if entry.bundled:
            path = asset_path(entry.bundled)
        elif entry.url is None:
            raise FastViTError(f"{entry.name} has no official Google file; convert timm weights with "
                               f"`fastvit convert WEIGHTS.safetensors OUT.npz` and pass --checkpoint OUT.npz")
        else:
            path = checkpoint.download(entry.url)
    if path is None:
        from fastvit_jax.models.vit import init_params

        params = init_params(config)
    else:
        params, config = checkpoint.load(path, config)
        if entry is None and (gelu or Path(path).suffix in TORCH_SUFFIXES):
            config = config.replace(gelu=gelu or "exact")
    family = preprocessing or (entry.preprocessing if entry else ("deit" if config.gelu == "exact" else "inception"))
    crop = crop_pct or (entry.crop_pct if entry else 0.9)
    return params, config, Preprocess(family, config.image_size, crop)
