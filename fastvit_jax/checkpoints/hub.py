"""One call from a model name and/or a file to (params, config, preprocessing)."""

from __future__ import annotations

from pathlib import Path

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.checkpoints import Description, sources
from fastvit_jax.checkpoints.description import PREPROCESS_FIELDS
from fastvit_jax.data import Preprocess
from fastvit_jax.errors import FastViTError
from fastvit_jax.checkpoints.registry import DEFAULT_MODEL, asset_path, entry_for_file, get_entry
from fastvit_jax.models.vit import init_params


def load_model(name: str | None = None, path: str | Path | None = None, *, gelu: str | None = None,
               preprocessing: str | None = None, crop_pct: float | None = None, random_weights: bool = False,
               notes: list | None = None, tower: str | None = None, labels: list | None = None):
    """(params, config, Preprocess).

    name only: the bundled weights, else the official file (downloaded into the cache once).
    path (a file, a folder, a URL, hf-hub:ORG/NAME): the architecture is inferred from the shapes;
    GELU, LayerNorm eps and preprocessing come from what the file says about itself (its config
    files, or what `fastvit convert` wrote), else from `name`'s entry, else the layout's default,
    and a note names what was assumed. Explicit gelu / preprocessing / crop_pct win over all.
    neither: the bundled DeiT-Tiny. random_weights: the named architecture, randomly initialised.
    labels: filled with the outputs' class names where the files state them (transformers' id2label).
    """
    if name is None and path is None:
        name = DEFAULT_MODEL
    # a file with an official file's name is that model (its resolution and preprocessing)
    entry = get_entry(name) if name else entry_for_file(path) if path is not None else None
    config = entry.config if entry else None
    official = path is None and entry is not None and not random_weights
    if official:
        path = _official_file(entry)
    if path is None:  # random weights of a named architecture

        config = config.replace(gelu=gelu) if gelu else config
        return init_params(config), config, Preprocess(preprocessing or entry.preprocessing, config.image_size,
                                                       crop_pct or entry.crop_pct)
    params, config, desc = checkpoint.load(path, config, with_meta=True, tower=tower, notes=notes)
    if labels is not None and desc.labels and len(desc.labels) == config.num_classes:
        labels.extend(desc.labels)
    if gelu:
        config = config.replace(gelu=gelu)
    if entry is not None and (official or not any(desc.stated(k) for k in PREPROCESS_FIELDS)):
        pre = {"family": entry.preprocessing, "crop_pct": entry.crop_pct}
    else:
        pre = {k: v for k, v in desc.preprocess.items() if v is not None}
        if notes is not None:
            _note_assumptions(path, desc, gelu, preprocessing, notes)
    if preprocessing:  # a family asked for by name replaces everything the file said
        pre = {"family": preprocessing, "crop_pct": pre.get("crop_pct", 0.9)}
    if crop_pct:
        pre["crop_pct"] = crop_pct
    pre.setdefault("family", "inception")
    return params, config, Preprocess(size=config.image_size, **{k: pre[k] for k in PREPROCESS_FIELDS if k in pre})


def checkpoint_file(name: str | None, path: str | Path | None) -> Path:
    """The local file `load_model(name, path)` reads (downloaded once)."""
    if path is None:
        return _official_file(get_entry(name or DEFAULT_MODEL))
    return sources.resolve(path)


def _note_assumptions(path, desc: Description, gelu, preprocessing, notes: list) -> None:
    """One note naming what the file does not say and what was assumed in its place."""
    assumed = desc.assumed
    if gelu:
        assumed.pop("gelu", None)
    if preprocessing:
        for key in PREPROCESS_FIELDS:
            assumed.pop(key, None)
    assumed.pop("ln_eps", None)  # every layout's own default, not a guess
    if not assumed:
        return
    if desc.layout in ("vision_transformer", "big_vision"):
        notes.append(f"{path} does not say what model it is: assumed a Google ViT ({desc.gelu} GELU, "
                     f"{desc.preprocess.get('family')} preprocessing); pass --model, or --gelu and --preprocessing")
        return
    said = ", ".join(f"{k} = {_show(desc, k)}" for k in assumed)
    whys = {v.removeprefix("assumed: ") for v in assumed.values()}
    why = sorted(w for w in whys if not any(o != w and o.startswith(w) for o in whys))  # each reason once
    notes.append(f"{path} does not state its {', '.join(assumed)}: assumed {said} ({'; '.join(why)}); "
                 f"pass --model, or --gelu and --preprocessing")


def _show(desc: Description, key: str):
    return desc.preprocess.get(key) if key in PREPROCESS_FIELDS else getattr(desc, key)


def _official_file(entry) -> Path:
    if entry.bundled:
        return asset_path(entry.bundled)
    if entry.url is None:
        raise FastViTError(f"{entry.name} has no official Google file; convert timm weights with "
                           f"`fastvit convert WEIGHTS.safetensors OUT.npz` and pass --checkpoint OUT.npz")
    return sources.resolve(entry.url)
