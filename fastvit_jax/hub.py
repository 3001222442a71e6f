"""One call from a model name and/or a file to (params, config, preprocessing)."""

from __future__ import annotations

from pathlib import Path

from fastvit_jax import checkpoint
from fastvit_jax.checkpoints import Description, sources
from fastvit_jax.checkpoints.description import PREPROCESS_FIELDS
from fastvit_jax.data import Preprocess
from fastvit_jax.errors import FastViTError
from fastvit_jax.registry import DEFAULT_MODEL, asset_path, entry_for_file, get_entry


def load_model(name: str | None = None, path: str | Path | None = None, *, gelu: str | None = None,
               preprocessing: str | None = None, crop_pct: float | None = None, random_weights: bool = False,
               notes: list | None = None, tower: str | None = None):
    """(params, config, Preprocess).

    name only: the bundled weights, else the official file (downloaded into the cache once).
    path (a file, a folder, a URL, hf-hub:ORG/NAME): the architecture is inferred from the shapes;
    GELU, LayerNorm eps and preprocessing come from what the file says about itself (its config
    files, or what `fastvit convert` wrote), else from `name`'s entry, else the layout's default,
    and a note names what was assumed. Explicit gelu / preprocessing / crop_pct win over all.
    neither: the bundled DeiT-Tiny. random_weights: the named architecture, randomly initialised.
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
        from fastvit_jax.models.vit import init_params

        config = config.replace(gelu=gelu) if gelu else config
        return init_params(config), config, Preprocess(preprocessing or entry.preprocessing, config.image_size,
                                                       crop_pct or entry.crop_pct)
    params, config, desc = checkpoint.load(path, config, with_meta=True, tower=tower, notes=notes)
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


def attach_zero_shot(name, path, params, config, pre, *, prompts, tokenizer=None, text_pad=None, notes=None,
                     progress=True, stats=None):
    """(params, config, pre) of the image tower with a zero-shot head built from the file's text tower
    (zero_shot.py). The tokenizer and the padding come from the arguments, else from the registry entry
    (by name, or the entry whose official file has this file's name)."""
    from fastvit_jax import zero_shot
    from fastvit_jax.checkpoints.text_tower import read_text_tower
    from fastvit_jax.tokenizer import Tokenizer

    local = checkpoint_file(name, path)
    entry = get_entry(name) if name else entry_for_file(local)
    tower = read_text_tower(local)
    spec = tokenizer or (entry.tokenizer if entry is not None else None)
    if spec is None:
        raise FastViTError(f"{path or name}: no tokenizer is known for this file; pass --tokenizer SPM, its "
                           f"SentencePiece model ({zero_shot.TOKENIZER_HINT})")
    tok = Tokenizer(sources.resolve(spec, flag="--tokenizer PATH"))
    if text_pad is None and entry is not None and entry.tokenizer and not tokenizer:
        text_pad = entry.text_pad if entry.text_pad is not None else tok.pad_id
    elif text_pad is None:
        text_pad = 1 if tower.config.vocab_size in zero_shot.T5_VOCABULARIES else tok.pad_id
        if notes is not None:
            notes.append(f"{path or name}: padding texts with id {text_pad} ("
                         + ("SigLIP 1's T5 vocabularies pad with 1" if text_pad == 1 else "the tokenizer's pad")
                         + "); pass --text-pad to change it")
    if not 0 <= text_pad < tower.config.vocab_size:
        raise FastViTError(f"--text-pad {text_pad}: not a token id of the text tower (0 to {tower.config.vocab_size - 1})"
                           + ("; the tokenizer defines no pad id" if text_pad == -1 else ""))
    embeddings = zero_shot.class_embeddings(tower, tok, prompts, pad=text_pad, source=zero_shot.file_identity(local),
                                            cache=sources.cache_dir() / "zero_shot", progress=progress, stats=stats)
    head = zero_shot.head_params(embeddings, tower.log_temperature, tower.bias)
    params, config = zero_shot.attach(params, config, head, str(path or name))
    return params, config, pre


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
