"""Checkpoints: Google .npz (flat '/'-joined keys) and orbax, config inference, posemb resize, downloads.

One loader (`load`) fixes everything up in one place, like big_vision's `load`: it reads the file,
infers or checks the config, resizes position embeddings for a new resolution and verifies every
key and shape against the model.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import jax
import numpy as np

from fastvit_jax.checkpoint_layouts import to_model_tree
from fastvit_jax.config import ViTConfig, stem_stride
from fastvit_jax.errors import FastViTError

_PREFIXES = ("params/", "opt/target/")


# ---------------------------------------------------------------- flat <-> nested
def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        for p in _PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# ---------------------------------------------------------------- npz
def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat {key: array} of a Google .npz, read without pickle. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FastViTError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise FastViTError(f"{path}: not a readable .npz checkpoint (truncated or corrupt: {e})") from None


# What a file is (model family, GELU, preprocessing), beside the params under one extra key that
# Google-layout readers load as one more (unused) array: JSON text as uint8.
META_KEY = "fastvit_meta"
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)


def _read_meta(flat: dict, source) -> dict | None:
    raw = flat.pop(META_KEY, None)
    if raw is None:
        return None
    try:
        return json.loads(np.asarray(raw, np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise FastViTError(f"{source}: key {META_KEY} is not the JSON fastvit writes there") from None


def save_npz(params: dict, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write params as a Google-layout .npz (flat '/'-joined keys, float32), plus `meta` if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    if meta:
        flat[META_KEY] = _meta_array(meta)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    return path


# ---------------------------------------------------------------- orbax
def save_orbax(params: dict, path: str | os.PathLike, meta: dict | None = None) -> Path:
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    tree = jax.tree_util.tree_map(np.asarray, params)
    if meta:
        tree = {**tree, META_KEY: _meta_array(meta)}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=True)
    return path


def read_orbax(path: str | os.PathLike) -> dict:
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path)
    except Exception as e:  # orbax raises many types for a broken directory
        raise FastViTError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from None
    return jax.tree_util.tree_map(np.asarray, tree)


def read_file(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """(nested tree as stored, what the file says it is or None) from .npz, an orbax directory, or a
    timm .safetensors/.pth (converted on the fly; DeiT/timm weights: exact GELU, deit preprocessing)."""
    path = Path(path)
    if not path.exists():
        raise FastViTError(f"checkpoint not found: {path}")
    if path.suffix in TORCH_SUFFIXES and not path.is_dir():
        from checkpoints_convert.timm_vit import convert_file

        return convert_file(path), {"family": "deit", "gelu": "exact", "preprocessing": "deit", "crop_pct": 0.9}
    flat = flatten(read_orbax(path)) if path.is_dir() else read_npz(path)
    meta = _read_meta(flat, path)
    return unflatten(flat), meta


def read_checkpoint(path: str | os.PathLike, tower: str | None = None) -> tuple[dict, dict | None]:
    """(params in our tree, what the file says it is or None): big_vision layouts are renamed and a
    two-tower file gives its image tower (checkpoint_layouts)."""
    params, meta = read_file(path)
    return to_model_tree(params, path, tower)[0], meta


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


def infer_config(params: dict, gelu: str = "tanh", image_size: int | None = None) -> ViTConfig:
    """Architecture from parameter shapes and which keys exist (our tree: see checkpoint_layouts).

    Class token -> pool "tok", MAPHead_0 -> "map", neither -> "gap"; no position parameter ->
    sincos2d, whose resolution the file cannot say (image_size, else DEFAULT_SINCOS_SIZE)."""
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
    posemb = params["Transformer"].get("posembed_input", {}).get("pos_embedding")
    pre = params.get("pre_logits", {}).get("kernel")
    head = params.get("head", {}).get("kernel")
    cfg = dict(width=int(kernel.shape[-1]), depth=len(blocks), heads=int(q.shape[1]), mlp_dim=int(mlp.shape[1]),
               patch=int(kernel.shape[0]), num_classes=0 if head is None else int(head.shape[1]),
               pre_logits=None if pre is None else int(pre.shape[1]), gelu=gelu, resnet=resnet,
               resnet_width=resnet_width, pool=pool)
    if posemb is None:
        return ViTConfig(**cfg, image_size=image_size or DEFAULT_SINCOS_SIZE, posemb="sincos2d")
    tokens = int(posemb.shape[1]) - (pool == "tok")
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise FastViTError(f"pos_embedding has {tokens} patch tokens, not a square grid "
                           f"(pool {pool!r}: {'one class token' if pool == 'tok' else 'no class token'})")
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
    from fastvit_jax.models.vit import VisionTransformer

    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), np.float32)
    tree = jax.eval_shape(lambda x: VisionTransformer(config).init(jax.random.PRNGKey(0), x), images)
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}


def check_params(params: dict, config: ViTConfig, source: str = "checkpoint") -> None:
    """Raise naming the first key whose presence or shape differs from what `config` needs."""
    want = expected_shapes(config)
    have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    for key, shape in want.items():
        if key not in have:
            raise FastViTError(f"{source}: missing key {key} (expected shape {shape}) for {config.variant}")
        if have[key] != shape:
            raise FastViTError(f"{source}: key {key} has shape {have[key]}, expected {shape} "
                               f"for {config.variant} at {config.image_size}px with {config.num_classes} classes")
    extra = sorted(set(have) - set(want))
    if extra:
        raise FastViTError(f"{source}: unexpected key {extra[0]} (shape {have[extra[0]]}) for {config.variant}")


def load(path: str | os.PathLike, config: ViTConfig | None = None, *, with_meta: bool = False,
         tower: str | None = None, notes: list | None = None):
    """Read a checkpoint and return (params, config), and the file's own description when with_meta.

    Without config, the architecture is inferred from the shapes (GELU from the file's description,
    else tanh). With one, the file is checked against it; position embeddings are resized when only
    the resolution differs, and a representation layer (pre_logits) present in the file is used.
    """
    params, meta = read_checkpoint(path, tower)
    found = infer_config(params, gelu=config.gelu if config else (meta or {}).get("gelu", "tanh"),
                         image_size=config.image_size if config else None)
    if config is None:
        config = found
        if found.posemb == "sincos2d" and notes is not None:
            notes.append(f"{path} has fixed sincos2d position embeddings and does not store its resolution: "
                         f"using {found.image_size} px (pass --model to choose an entry with another)")
    else:
        if found.pre_logits != config.pre_logits:
            config = config.replace(pre_logits=found.pre_logits)
        if (found.grid != config.grid and found.posemb == "learn" and found.patch == config.patch
                and found.width == config.width):
            pe = params["Transformer"]["posembed_input"]
            pe["pos_embedding"] = resize_posemb(np.asarray(pe["pos_embedding"]), config.grid, config.num_prefix)
    check_params(params, config, str(path))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    return (params, config, meta) if with_meta else (params, config)


# ---------------------------------------------------------------- downloads
def describe(path: str | os.PathLike, tower: str | None = None) -> dict:
    """What `fastvit inspect` shows: the layout and config inferred from the keys and shapes, the
    parameter count and every stored key with its shape."""
    stored, meta = read_file(path)
    params, layout = to_model_tree(stored, path, tower)
    config = infer_config(params)
    cfg = {k: getattr(config, k) for k in ("width", "depth", "heads", "mlp_dim", "patch", "image_size",
                                          "num_classes", "pre_logits", "resnet", "pool", "posemb")}
    cfg["variant"], cfg["family"] = config.variant, config.family
    return {"file": str(path), "layout": layout, "config": cfg, "meta": meta,
            "parameters": sum(int(np.size(v)) for v in flatten(params).values()),
            "keys": {k: list(np.shape(v)) for k, v in flatten(stored).items()}}


GOOGLE_META = {"family": "google", "gelu": "tanh", "preprocessing": "inception"}


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str | None = None, meta: dict | None = None) -> dict:
    """Any readable checkpoint -> Google-layout .npz or orbax (fmt None: npz when dst ends in .npz).
    The output says what it is: `meta` if given, else the source's own description, else Google's
    (timm/DeiT sources describe themselves); "assumed" in the result says when that was a guess."""
    params, found = read_checkpoint(src)
    meta = meta or found or GOOGLE_META
    config = infer_config(params, gelu=meta.get("gelu", "tanh"))
    check_params(params, config, str(src))
    fmt = fmt or ("npz" if Path(dst).suffix == ".npz" else "orbax")
    out = save_npz(params, dst, meta) if fmt == "npz" else save_orbax(params, dst, meta)
    return {"src": str(src), "dst": str(out), "format": fmt, "variant": config.variant,
            "image_size": config.image_size, "num_classes": config.num_classes, "meta": meta,
            "assumed": meta is GOOGLE_META}


def cache_dir() -> Path:
    return Path(os.environ.get("FASTVIT_CACHE", Path.home() / ".cache" / "fastvit_jax"))


def cache_path(url: str) -> Path:
    """Where url is cached: its bucket path, since folders reuse file names (sam/ViT-B_16.npz,
    imagenet21k/ViT-B_16.npz, ...)."""
    path = urllib.parse.urlparse(url).path.lstrip("/")
    return cache_dir() / (path or url.rsplit("/", 1)[-1])


def download(url: str, dest: Path | None = None, progress: bool = True) -> Path:
    """Fetch url into the cache (or dest) with a progress bar; return the local path.

    When the network is unreachable the error names the URL and where to put the file by hand.
    """
    dest = Path(dest) if dest else cache_path(url)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            from tqdm import tqdm

            with open(tmp, "wb") as f, tqdm(total=total or None, unit="B", unit_scale=True,
                                            desc=dest.name[:40], disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise FastViTError(f"could not download {url} ({reason}); download it elsewhere and place it "
                           f"at {dest} (or pass --checkpoint PATH)") from None
    return dest
