"""Checkpoints: loading any layout (checkpoints/) onto our tree, config inference, posemb resize, saving.

One loader (`load`) fixes everything up in one place, like big_vision's `load`: it reads the file,
infers or checks the config, resizes position embeddings for a new resolution and verifies every
key and shape against the model.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np

from fastvit_jax import checkpoints
from fastvit_jax.checkpoints import META_KEY, Description, meta_array, sources
from fastvit_jax.checkpoints.sources import cache_dir, cache_path, download  # noqa: F401 (public here too)
from fastvit_jax.util.tree import flatten, unflatten  # noqa: F401 (public here too)
from fastvit_jax.config import ViTConfig, stem_stride
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.vit import VisionTransformer


def _replace(tmp: Path, path: Path) -> None:
    """Move a finished output into place; a folder already there (an --overwrite) goes only after."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_npz(params: dict, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write params as a Google-layout .npz (flat '/'-joined keys, float32), plus `meta` if given.
    Written under a temporary name and renamed when complete: a killed write leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    if meta:
        flat[META_KEY] = meta_array(meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_orbax(params: dict, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write params as an orbax checkpoint folder (under a temporary name, renamed when complete)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    tree = jax.tree_util.tree_map(np.asarray, params)
    if meta:
        tree = {**tree, META_KEY: meta_array(meta)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, tree, force=True)
        _replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_checkpoint(path: str | os.PathLike, tower: str | None = None) -> tuple[dict, Description]:
    """(params in our tree, what the file says it is): any layout of `checkpoints`, any source."""
    return checkpoints.read(sources.resolve(path), tower)


def read_params(path: str | os.PathLike) -> dict:
    return read_checkpoint(path)[0]


# ---------------------------------------------------------------- config inference
DEFAULT_SINCOS_SIZE = 224  # files with fixed sincos2d embeddings do not store their resolution


def resnet_stages(params: dict) -> tuple[int, ...] | None:
    """Units per stage of a hybrid's stem (block1/unit1, ...), None without conv_root."""
    if "conv_root" not in params:
        return None
    stages = []
    while f"block{len(stages) + 1}" in params:
        units = params[f"block{len(stages) + 1}"]
        stages.append(sum(1 for k in units if re.fullmatch(r"unit\d+", k)))
    return tuple(stages)


def infer_config(params: dict, gelu: str = "tanh", image_size: int | None = None, ln_eps: float = 1e-6) -> ViTConfig:
    """Architecture from parameter shapes and which keys exist (our tree: see checkpoints/).

    Class token -> pool "tok" (with `dist` beside it: distilled DeiT), MAPHead_0 -> "map", neither ->
    "gap"; no position parameter -> sincos2d, whose resolution the file cannot say (image_size, else
    DEFAULT_SINCOS_SIZE)."""
    try:
        kernel = params["embedding"]["kernel"]
        blocks = [k for k in params["Transformer"] if re.fullmatch(r"encoderblock_\d+", k)]
        block0 = params["Transformer"]["encoderblock_0"]
        q = block0["MultiHeadDotProductAttention_1"]["query"]["kernel"]
        mlp = block0["MlpBlock_3"]["Dense_0"]["kernel"]
        resnet = resnet_stages(params)
        resnet_width = int(params["conv_root"]["kernel"].shape[-1]) if resnet is not None else 64
    except (KeyError, TypeError, AttributeError) as e:
        raise FastViTError(f"not a ViT checkpoint in Google layout: missing key {e}") from None
    if "cls" in params and "MAPHead_0" in params:
        raise FastViTError(f"both a class token (cls {tuple(np.shape(params['cls']))}) and an attention-pooling "
                           f"head (MAPHead_0): no known pool type has both")
    pool = "tok" if "cls" in params else "map" if "MAPHead_0" in params else "gap"
    distilled = "dist" in params
    if distilled and pool != "tok":
        raise FastViTError("a distillation token (dist) without a class token (cls)")
    posemb = params["Transformer"].get("posembed_input", {}).get("pos_embedding")
    pre = params.get("pre_logits", {}).get("kernel")
    head = params.get("head", {}).get("kernel")
    if np.ndim(kernel) != 4 or np.ndim(q) != 3 or np.ndim(mlp) != 2:
        raise FastViTError(f"embedding/kernel {tuple(np.shape(kernel))}, query/kernel {tuple(np.shape(q))} or "
                           f"Dense_0/kernel {tuple(np.shape(mlp))} is not a ViT's (4, 3 and 2 dimensions)")
    registers = int(np.shape(params["reg"])[1]) if "reg" in params else 0
    cfg = dict(width=int(kernel.shape[-1]), depth=len(blocks), heads=int(q.shape[1]), mlp_dim=int(mlp.shape[1]),
               patch=int(kernel.shape[0]), num_classes=0 if head is None else int(head.shape[1]),
               pre_logits=None if pre is None else int(pre.shape[1]), gelu=gelu, resnet=resnet,
               resnet_width=resnet_width, pool=pool, ln_eps=float(ln_eps), distilled=distilled,
               registers=registers, layerscale="ls1" in block0, pre_norm="pre_norm" in params["Transformer"],
               patch_bias="bias" in params["embedding"])
    if posemb is None:
        return ViTConfig(**cfg, image_size=image_size or DEFAULT_SINCOS_SIZE, posemb="sincos2d")
    prefix = (1 + distilled) if pool == "tok" else 0
    if np.ndim(posemb) != 3 or not hasattr(posemb, "shape"):
        raise FastViTError(f"pos_embedding has shape {tuple(np.shape(posemb))}, expected (1, tokens, width)")
    tokens = int(posemb.shape[1]) - prefix
    if prefix and math.isqrt(tokens + prefix) ** 2 == tokens + prefix:  # a square count: patches only
        tokens, cfg["posemb_prefix"] = tokens + prefix, False
    side = math.isqrt(max(tokens, 0))
    if side * side != tokens:
        raise FastViTError(f"pos_embedding has {tokens} patch tokens, not a square grid "
                           f"(pool {pool!r}: {prefix} prefix token(s))")
    return ViTConfig(**cfg, image_size=side * cfg["patch"] * stem_stride(resnet))


# ---------------------------------------------------------------- posemb resize
def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], num_prefix: int = 1) -> np.ndarray:
    """Resize (1, prefix + gh*gw, D) position embeddings to a new grid, as the original
    vision_transformer `load_pretrained` does (scipy.ndimage.zoom, order 1, on the patch part)."""
    import scipy.ndimage

    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
    old = math.isqrt(grid.shape[0])
    grid = grid.reshape(old, old, -1)
    zoom = (new_grid[0] / old, new_grid[1] / old, 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix, grid], axis=1).astype(posemb.dtype)


# ---------------------------------------------------------------- verification
def expected_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:

    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), np.float32)
    tree = jax.eval_shape(lambda x: VisionTransformer(config).init(jax.random.PRNGKey(0), x), images)
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}


def shape_mismatch(params: dict, want: dict[str, tuple[int, ...]]):
    """The first difference between a parameter tree and the keys and shapes a model needs:
    ("missing", key, None, shape), ("shape", key, found, shape), ("extra", key, found, None), or None."""
    have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    for key, shape in want.items():
        if key not in have:
            return "missing", key, None, shape
        if have[key] != shape:
            return "shape", key, have[key], shape
    extra = sorted(set(have) - set(want))
    return ("extra", extra[0], have[extra[0]], None) if extra else None


def check_params(params: dict, config: ViTConfig, source: str = "checkpoint") -> None:
    """Raise naming the first key whose presence or shape differs from what `config` needs."""
    found = shape_mismatch(params, expected_shapes(config))
    if found is None:
        return
    kind, key, have, shape = found
    if kind == "missing":
        raise FastViTError(f"{source}: missing key {key} (expected shape {shape}) for {config.variant}")
    if kind == "shape":
        raise FastViTError(f"{source}: key {key} has shape {have}, expected {shape} "
                           f"for {config.variant} at {config.image_size}px with {config.num_classes} classes")
    raise FastViTError(f"{source}: unexpected key {key} (shape {have}) for {config.variant}")


def check_finite(params: dict, source: str = "checkpoint") -> None:
    """Raise naming the first parameter holding NaN or Inf: such a model reports an accuracy that
    means nothing (every logit NaN ranks the classes by index)."""
    for key, value in flatten(params).items():
        a = np.asarray(value)
        if a.dtype.kind != "f" and a.dtype.name != "bfloat16":  # an int, bool or complex copy of a weight is no model
            raise FastViTError(f"{source}: parameter {key} has dtype {a.dtype}; a ViT's parameters are floating point")
        if not np.isfinite(a).all():
            nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            what = ", ".join(f"{n} {name}" for n, name in ((nan, "NaN"), (inf, "Inf")) if n)
            raise FastViTError(f"{source}: parameter {key} holds {what} (of {a.size} values): the file is damaged")


STATED_FIELDS = ("gelu", "ln_eps")  # what a file's own config states about how its model computes


def load(path: str | os.PathLike, config: ViTConfig | None = None, *, with_meta: bool = False,
         tower: str | None = None, notes: list | None = None):
    """Read a checkpoint and return (params, config), and its Description when with_meta.

    Without config, the architecture is inferred from the shapes, GELU and LayerNorm eps from what
    the file says (its config files; else the layout's default). With one, the file is checked
    against it, except that what the file itself states (GELU, eps) wins; position embeddings are
    resized when only the resolution differs, and a representation layer (pre_logits) present in
    the file is used.
    """
    params, desc = read_checkpoint(path, tower)
    stated = {k: getattr(desc, k) for k in STATED_FIELDS if desc.stated(k)}
    try:
        found = infer_config(params, gelu=config.gelu if config else desc.gelu or "tanh",
                             image_size=config.image_size if config else desc.image_size,
                             ln_eps=config.ln_eps if config else desc.ln_eps or 1e-6)
    except FastViTError as e:
        raise FastViTError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:  # a key where a group belongs, ...
        raise FastViTError(f"{path}: not a ViT's parameter tree ({type(e).__name__}: {e})") from None
    if config is None:
        config = found
        if found.posemb == "sincos2d" and notes is not None and desc.image_size is None:
            notes.append(f"{path} has fixed sincos2d position embeddings and does not store its resolution: "
                         f"using {found.image_size} px (pass --model to choose an entry with another)")
    else:
        config = config.replace(**stated)
        if found.pre_logits != config.pre_logits:
            config = config.replace(pre_logits=found.pre_logits)
        if (found.grid != config.grid and found.posemb == "learn" and found.patch == config.patch
                and found.width == config.width):
            pe = params["Transformer"]["posembed_input"]
            pe["pos_embedding"] = resize_posemb(np.asarray(pe["pos_embedding"], np.float32), config.grid,
                                                config.num_prefix)
    check_params(params, config, str(path))
    check_finite(params, str(path))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    return (params, config, desc) if with_meta else (params, config)


def describe(path: str | os.PathLike, tower: str | None = None) -> dict:
    """What `fastvit inspect` shows: the layout, the config inferred from the keys and shapes, what
    the file says about itself and where each statement came from, the parameter count and every
    stored key with its shape and dtype."""
    local = sources.resolve(path)
    weights, _ = checkpoints.locate(local)
    stored = checkpoints.list_arrays(weights)
    params, desc = checkpoints.read(local, tower, listed=stored)
    config = infer_config(params, gelu=desc.gelu or "tanh", image_size=desc.image_size, ln_eps=desc.ln_eps or 1e-6)
    cfg = {k: getattr(config, k) for k in ("width", "depth", "heads", "mlp_dim", "patch", "image_size",
                                          "num_classes", "pre_logits", "resnet", "pool", "posemb", "distilled",
                                          "gelu", "ln_eps")}
    cfg["variant"], cfg["family"] = config.variant, config.family
    return {"file": str(path), "local": str(weights), "layout": desc.layout, "config": cfg,
            "description": desc.summary(), "parameters": sum(int(np.size(v)) for v in flatten(params).values()),
            "keys": {k: [list(v.shape), str(v.dtype)] for k, v in stored.items()}}


def output_format(dst: str | os.PathLike, fmt: str | None = None, overwrite: bool = False) -> str:
    """The format `convert` writes to dst ("npz" or "orbax"), refusing an existing dst without
    overwrite and a name that is neither OUT.npz nor a folder name (no extension, or .orbax)."""
    dst = Path(dst)
    suffix = dst.suffix.lower()
    fmt = fmt or ("npz" if suffix == ".npz" else "orbax" if suffix in ("", ".orbax") else None)
    if fmt is None or (fmt == "npz") != (suffix == ".npz") or (fmt == "orbax" and suffix not in ("", ".orbax")):
        raise FastViTError(f"{dst}: convert writes OUT.npz (npz) or a folder named without an extension (orbax, "
                           f"e.g. OUT or OUT.orbax), not {suffix or 'a folder'!r}" + (f" as {fmt}" if fmt else ""))
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        what = "folder" if dst.is_dir() else "file"
        raise FastViTError(f"{dst}: a {what} of that name exists; pass --overwrite to replace it, or choose another "
                           f"output")
    return fmt


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str | None = None, meta: dict | None = None,
            overwrite: bool = False) -> dict:
    """Any readable checkpoint -> Google-layout .npz or orbax (fmt None: npz when dst ends in .npz).
    The output says what it is: `meta` if given, else the source's own description (with what it
    assumed: "assumed" in the result lists those fields). An existing dst is refused unless overwrite."""
    fmt = output_format(dst, fmt, overwrite)  # before the (possibly long) read
    params, desc = read_checkpoint(src)
    assumed = [] if meta else sorted(desc.assumed)  # a given meta (`--model`) says it all
    meta = meta or desc.to_meta()
    config = infer_config(params, gelu=meta.get("gelu", "tanh"), ln_eps=meta.get("ln_eps", 1e-6),
                          image_size=desc.image_size)
    check_params(params, config, str(src))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    out = save_npz(params, dst, meta) if fmt == "npz" else save_orbax(params, dst, meta)
    return {"src": str(src), "dst": str(out), "format": fmt, "variant": config.variant,
            "image_size": config.image_size, "num_classes": config.num_classes, "meta": meta,
            "assumed": assumed}
