"""Zero-shot classifiers from a two-tower model's text tower, built as big_vision's
discriminative_classifier builds them, and attached to the image tower as its head.

  - class names and prompt templates canonicalised (prompt_engineering.canonicalize_text): `_` to a
    space, punctuation removed except `,` in names and `{}` in templates, lower case, whitespace
    collapsed;
  - a class line may hold comma-separated aliases: the first is used, or all with all_aliases;
  - each class embedding is the L2-normalised mean of the L2-normalised embeddings of its prompts
    (every template x alias);
  - a score is zimg . ztxt x exp(t) + b, zimg the L2-normalised image embedding (b = 0 for files
    without one). As a head: ViTConfig.l2_normalize, kernel = class embeddings x exp(t), bias = b.

The class embeddings are computed once per (file, tokenizer, prompts, padding) and cached on disk;
an interrupted computation resumes where its last save left it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import string
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastvit_jax.checkpoints import sources
from fastvit_jax.checkpoints.hub import checkpoint_file
from fastvit_jax.checkpoints.registry import asset_path, entry_for_file, get_entry
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.text import TextTransformer
from fastvit_jax.util.lock import exclusive
from fastvit_jax.zero_shot.text_tower import read_text_tower
from fastvit_jax.zero_shot.tokenizer import open_tokenizer

TEMPLATE_SETS = {  # name -> bundled file (big_vision's prompt_engineering_constants), None: the name alone
    "clip": "templates_clip.txt",  # the CLIP paper's ImageNet templates (big_vision's default)
    "clip-best": "templates_clip_best.txt",  # CLIP's short, best set
    "name": None,  # "{}"
}
IMAGENET_CLASSES = "imagenet_clip_classes.txt"  # ImageNet-1k names as CLIP and big_vision use them
T5_VOCABULARIES = (32_000, 32_100, 250_000, 250_100)  # SigLIP 1's tokenizers (c4_en, mc4), trained padding with 1
TOKENIZER_HINT = ("SigLIP: https://storage.googleapis.com/t5-data/vocabs/cc_en.32000/sentencepiece.model, "
                  "multilingual SigLIP: https://storage.googleapis.com/t5-data/vocabs/mc4.250000.100extra/"
                  "sentencepiece.model, SigLIP 2: https://storage.googleapis.com/big_vision/gemma_tokenizer.model")
CACHE_VERSION = 1
SAVE_EVERY_S = 20.0


def canonicalize_text(text: str, keep: str | None = None) -> str:
    """Lower case, punctuation removed (except every exact occurrence of `keep`), `_` as a space,
    whitespace collapsed and stripped."""
    text = text.replace("_", " ")
    drop = str.maketrans("", "", string.punctuation)
    text = keep.join(part.translate(drop) for part in text.split(keep)) if keep else text.translate(drop)
    return re.sub(r"\s+", " ", text.lower()).strip()


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Which classes, which templates: what a zero-shot classifier is built from."""

    classes: tuple[str, ...]  # one line per class, as given (aliases comma-separated)
    templates: tuple[str, ...]
    all_aliases: bool = False
    classes_from: str = "imagenet"  # where they came from, for reports
    templates_from: str = "clip"

    def texts(self) -> tuple[list[str], np.ndarray]:
        """(every prompt, its class index), in class order."""
        templates = [canonicalize_text(t, keep="{}") for t in self.templates]
        texts, labels = [], []
        for index, line in enumerate(self.classes):
            aliases = [a.strip() for a in canonicalize_text(line, keep=",").split(",")]
            aliases = [a for a in aliases if a] if self.all_aliases else aliases[:1]
            for alias in aliases:
                for template in templates:
                    before, after = template.split("{}")
                    texts.append(before + alias + after)
                    labels.append(index)
        return texts, np.asarray(labels, np.int64)

    @property
    def names(self) -> list[str]:
        """Each class's display name: its first alias as written."""
        return [line.split(",")[0].strip() for line in self.classes]


def _lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FastViTError(f"{what} file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise FastViTError(f"{path}: cannot read {what} as UTF-8 text ({type(e).__name__})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise FastViTError(f"{path}: no {what} in the file")
    return lines


def read_classes(path: str | Path | None) -> tuple[tuple[str, ...], str]:
    """(class lines, where from): a file of one class a line, or the bundled ImageNet-1k names."""
    if path is None:
    
        return tuple(_lines(asset_path(IMAGENET_CLASSES), "class names")), "imagenet"
    lines = _lines(Path(path), "class names")
    for number, line in enumerate(lines, 1):
        if not canonicalize_text(line, keep=",").replace(",", "").strip():
            raise FastViTError(f"{path}: line {number} names no class ({line!r}); one class a line, aliases "
                               f"separated by commas")
    return tuple(lines), str(path)


def read_templates(spec: str | None) -> tuple[tuple[str, ...], str]:
    """(templates, where from): a bundled set by name (TEMPLATE_SETS) or a file of one template a line."""

    spec = spec or "clip"
    if spec in TEMPLATE_SETS:
        bundled = TEMPLATE_SETS[spec]
        return (tuple(_lines(asset_path(bundled), "templates")) if bundled else ("{}",)), spec
    path = Path(spec)
    if not path.exists():
        raise FastViTError(f"--templates {spec}: neither a file nor a bundled set ({', '.join(TEMPLATE_SETS)})")
    lines = _lines(path, "templates")
    for number, line in enumerate(lines, 1):
        if canonicalize_text(line, keep="{}").count("{}") != 1:
            raise FastViTError(f"{path}: line {number} ({line!r}) should hold the class name's place `{{}}` "
                               f"exactly once")
    return tuple(lines), str(path)


def file_identity(path: str | Path) -> dict:
    """What identifies a checkpoint file without reading it: its path, size and modification time."""
    path = Path(path).resolve()
    if path.is_dir():  # a folder (orbax): its files' sizes and times
        stats = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                       for p in path.rglob("*") if p.is_file())
        return {"path": str(path), "files": hashlib.sha256(json.dumps(stats).encode()).hexdigest()}
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)


def _save(path: Path, **arrays) -> None:
    tmp = path.with_name(f"{path.name}.part-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _load_partial(path: Path, key: str, num_classes: int, dim: int):
    """(sums, done prompts) saved under `key`, or None when the file is missing, another key's or damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            sums, done = np.asarray(z["sums"], np.float64), int(z["done"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (sums, done) if sums.shape == (num_classes, dim) else None


def class_embeddings(tower, tokenizer, prompts: Prompts, *, pad: int, source: dict, batch_size: int = 256,
                     cache: Path | None = None, progress: bool = True, stats: dict | None = None) -> np.ndarray:
    """(classes, dim) float32 L2-normalised class embeddings of `prompts` through the text tower.

    source: what identifies the text tower's file (file_identity); with the tokenizer's hash, the
    prompts, the padding and the tower's config it keys the cache. stats (if given) receives
    `cached` (True when nothing was computed), `prompts` and `compute_s`.
    """
    import jax
    import jax.numpy as jnp


    texts, labels = prompts.texts()
    num_classes, dim, cfg = len(prompts.classes), tower.config.out_dim, tower.config
    if tokenizer.vocab_size > cfg.vocab_size:
        raise FastViTError(f"{tokenizer.path}: {tokenizer.vocab_size} pieces, but the text tower embeds "
                           f"{cfg.vocab_size} tokens: not this model's tokenizer")
    rule = {"rule": tokenizer.rule} if tokenizer.rule != "big_vision" else {}  # keys cached before rules stay
    key = json.dumps({"version": CACHE_VERSION, "file": source, "tokenizer": tokenizer.sha256, "pad": pad, **rule,
                      "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                 if not (k == "mask_after_eos" and v is None)},  # keys cached before it stay
                      "prompts": hashlib.sha256(json.dumps([texts, labels.tolist()]).encode()).hexdigest()},
                     sort_keys=True)
    stats = {} if stats is None else stats
    stats.update(prompts=len(texts), cached=False, compute_s=0.0, resumed_from=0)
    path = None if cache is None else cache / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")

    def run():
        found = _load_partial(path, key, num_classes, dim) if path is not None and path.exists() else None
        sums, done = found if found else (np.zeros((num_classes, dim), np.float64), 0)
        stats["resumed_from"] = done
        if done == len(texts):
            stats["cached"] = True
            return sums
        forward = jax.jit(lambda p, t: TextTransformer(cfg).apply({"params": p}, t))
        params = jax.tree_util.tree_map(jnp.asarray, tower.params)
        t0 = last_save = time.perf_counter()
        with tqdm(total=len(texts), initial=done, desc="text tower", unit="prompt", disable=not progress,
                  leave=False) as bar:
            while done < len(texts):
                chunk = texts[done: done + batch_size]
                tokens = tokenizer.tokenize(chunk, cfg.max_len, pad)
                if len(chunk) < batch_size:  # one shape: one compilation
                    tokens = np.concatenate([tokens, np.repeat(tokens[-1:], batch_size - len(chunk), 0)])
                z = np.asarray(forward(params, tokens), np.float64)[: len(chunk)]
                np.add.at(sums, labels[done: done + len(chunk)], _normalise(z))
                done += len(chunk)
                bar.update(len(chunk))
                if path is not None and (time.perf_counter() - last_save > SAVE_EVERY_S or done == len(texts)):
                    _save(path, key=np.asarray(key), sums=sums, done=np.asarray(done))
                    last_save = time.perf_counter()
        stats["compute_s"] = time.perf_counter() - t0
        return sums

    if path is None:
        sums = run()
    else:
        cache.mkdir(parents=True, exist_ok=True)
        with exclusive(path, folder=False, what="cache", wait_s=24 * 3600.0, remove=True):
            sums = run()
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return _normalise(sums / counts).astype(np.float32)


def head_params(embeddings: np.ndarray, log_temperature: float, bias: float) -> dict:
    """The image tower's head computing zimg . ztxt x exp(t) + b on the normalised feature."""
    kernel = (embeddings.T.astype(np.float64) * np.exp(log_temperature)).astype(np.float32)
    return {"kernel": kernel, "bias": np.full((embeddings.shape[0],), bias, np.float32)}


def attach(params: dict, config, head: dict, source: str):
    """(params, config) of the image tower with the zero-shot head."""
    if config.num_classes:
        raise FastViTError(f"{source}: the image tower has its own head ({config.num_classes} outputs): "
                           f"zero-shot reads towers whose pooled feature is the embedding (SigLIP, SigLIP 2)")
    dim = config.pre_logits or config.width
    if head["kernel"].shape[0] != dim:
        raise FastViTError(f"{source}: the text embeddings have {head['kernel'].shape[0]} dimensions, the image "
                           f"tower's features {dim}: the towers do not pair")
    return {**params, "head": head}, config.replace(num_classes=head["kernel"].shape[1], l2_normalize=True)


def attach_zero_shot(name, path, params, config, pre, *, prompts, tokenizer=None, text_pad=None, notes=None,
                     progress=True, stats=None):
    """(params, config, pre) of the image tower with a zero-shot head built from the file's text tower
    (zero_shot.py). The tokenizer and the padding come from the arguments, else from the registry entry
    (by name, or the entry whose official file has this file's name)."""
    local = checkpoint_file(name, path)
    entry = get_entry(name) if name else entry_for_file(local)
    tower = read_text_tower(local)
    spec = tokenizer or tower.tokenizer or (entry.tokenizer if entry is not None else None)
    if spec is None and tower.rule == "transformers":
        raise FastViTError(f"{path or name}: no spiece.model or tokenizer.json in the folder; pass --tokenizer SPM, "
                           f"the SentencePiece model the text tower was trained with")
    if spec is None:
        raise FastViTError(f"{path or name}: no tokenizer is known for this file; pass --tokenizer SPM, its "
                           f"SentencePiece model ({TOKENIZER_HINT})")
    tok = open_tokenizer(sources.resolve(spec, flag="--tokenizer PATH"), rule=tower.rule)
    if tower.rule != "big_vision":  # transformers 5 masks the padding after the EOS (its attention_mask)
        tower.config = dataclasses.replace(tower.config, mask_after_eos=tok.eos_id)
    if text_pad is None and tower.pad is not None:  # the folder's text_config.pad_token_id
        text_pad = tower.pad
    elif text_pad is None and tower.rule == "gemma":  # SigLIP 2 folders pad with the tokenizer's pad token
        text_pad = tok.pad_id
    elif text_pad is None and entry is not None and entry.tokenizer and not tokenizer:
        text_pad = entry.text_pad if entry.text_pad is not None else tok.pad_id
    elif text_pad is None:
        text_pad = 1 if tower.config.vocab_size in T5_VOCABULARIES else tok.pad_id
        if notes is not None:
            notes.append(f"{path or name}: padding texts with id {text_pad} ("
                         + ("SigLIP 1's T5 vocabularies pad with 1" if text_pad == 1 else "the tokenizer's pad")
                         + "); pass --text-pad to change it")
    if not 0 <= text_pad < tower.config.vocab_size:
        raise FastViTError(f"--text-pad {text_pad}: not a token id of the text tower (0 to {tower.config.vocab_size - 1})"
                           + ("; the tokenizer defines no pad id" if text_pad == -1 else ""))
    embeddings = class_embeddings(tower, tok, prompts, pad=text_pad, source=file_identity(local),
                                            cache=sources.cache_dir() / "zero_shot", progress=progress, stats=stats)
    head = head_params(embeddings, tower.log_temperature, tower.bias)
    params, config = attach(params, config, head, str(path or name))
    return params, config, pre
