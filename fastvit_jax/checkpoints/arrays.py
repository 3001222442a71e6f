"""Arrays as stored in a file, listed before they are read.

Every reader returns {key: Stored}: the declared shape and dtype of each array and a function that
reads it. Listing costs no array data, so a layout can pick one tower of a two-tower file (or refuse
a file) without reading the rest. npz and safetensors are read member by member; PyTorch, Flax
msgpack and orbax files are read whole by their own libraries. No reader unpickles.

bfloat16 arrays come back as ml_dtypes.bfloat16: numpy has no such type and writes them into .npz
files as raw 2-byte values ('|V2'), which is how big_vision's bf16 checkpoints look on disk.
"""

from __future__ import annotations

import dataclasses
import re
import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from fastvit_jax.util.tree import flatten
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.untrusted import check_declared, check_zip

BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class Stored:
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_float32(stored: Stored) -> np.ndarray:
    """The array, with bfloat16/float16 widened to float32 as it is read (one array at a time, so a
    half-precision file never holds both copies of every array at once)."""
    a = stored.read()
    return a.astype(np.float32) if a.dtype in (BF16, np.float16) else a


def loaded(value) -> Stored:
    """A Stored for an array already in memory."""
    a = np.asarray(value)
    return Stored(tuple(a.shape), a.dtype, lambda: a)


def _npz_dtype(dtype: np.dtype) -> np.dtype:
    # numpy writes bfloat16 as an anonymous 2-byte void; nothing else stores such values.
    return BF16 if dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None else dtype


def open_npz(path: Path) -> dict[str, Stored]:
    """Members of a .npz, each listed from its .npy header only."""
    try:
        zf = zipfile.ZipFile(path)
        check_zip(path, zf)
        infos = zf.infolist()
        out = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise FastViTError(f"{path}: member {info.filename} holds Python objects (pickle): refused")
            out[info.filename[:-4]] = Stored(tuple(shape), _npz_dtype(dtype), _npz_reader(path, info.filename))
        zf.close()
        check_declared(path, sum(s.nbytes for s in out.values()), sum(i.compress_size for i in infos),
                       "its .npy headers")
    except FastViTError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, struct.error) as e:
        raise FastViTError(f"{path}: not a readable .npz checkpoint (truncated or corrupt: {e})") from None
    if not out:
        raise FastViTError(f"{path}: a zip file with no arrays in it, not a .npz checkpoint")
    return out


def _npz_reader(path: Path, member: str) -> Callable[[], np.ndarray]:
    def read():
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
            raise FastViTError(f"{path}: member {member} is unreadable (truncated or corrupt: {e})") from None
        return a.view(BF16) if _npz_dtype(a.dtype) is BF16 else a
    return read


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": BF16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def open_safetensors(path: Path) -> dict[str, Stored]:
    """Tensors of a .safetensors file, listed from its JSON header (the format is that header's
    length, the header, then the raw bytes at the offsets it gives)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        out = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
            if end - start != math.prod(shape) * dtype.itemsize or not 0 <= start <= end <= size - 8 - n:
                raise ValueError(f"tensor {key} {shape} {info['dtype']} does not fit its offsets {start}..{end}")
            out[key] = Stored(shape, dtype, _slice_reader(path, 8 + n + start, shape, dtype))
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise FastViTError(f"{path}: not a readable .safetensors file ({e})") from None
    return out


def safetensors_metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__") or {}


def _slice_reader(path: Path, offset: int, shape, dtype) -> Callable[[], np.ndarray]:
    def read():
        with open(path, "rb") as f:
            f.seek(offset)
            return np.frombuffer(f.read(math.prod(shape) * dtype.itemsize), dtype).reshape(shape)
    return read


def open_torch(path: Path) -> dict[str, Stored]:
    """A PyTorch state dict (.pth/.pt/.bin) through torch.load(weights_only=True): no arbitrary pickle."""
    try:
        import torch
    except ImportError:
        raise FastViTError(f"{path}: reading PyTorch checkpoints needs torch "
                           f"(pip install 'fastvit-jax[torch]'), or convert to .safetensors") from None
    if zipfile.is_zipfile(path):  # torch's own format is a zip: its members must not inflate past the ceiling
        with zipfile.ZipFile(path) as zf:
            check_zip(path, zf)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or unsafe files
        raise FastViTError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise FastViTError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    out = {}
    for k, v in sd.items():
        if hasattr(v, "numpy"):
            out[k] = loaded(v.float().numpy() if v.is_floating_point() else v.numpy())
    return out


def open_msgpack(path: Path) -> dict[str, Stored]:
    """A Flax msgpack file (transformers' flax_model.msgpack), keys '/'-joined."""
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises its own types for damaged data
        raise FastViTError(f"{path}: not a readable Flax msgpack file ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict):
        raise FastViTError(f"{path}: holds a {type(tree).__name__}, not a parameter tree")
    return {k: loaded(v) for k, v in flatten(tree).items()}


def open_orbax(path: Path) -> dict[str, Stored]:
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(path)
            leaves = jax.tree_util.tree_leaves(getattr(meta, "item_metadata", meta))
            declared = sum(math.prod(m.shape) * np.dtype(m.dtype).itemsize for m in leaves if hasattr(m, "shape"))
            stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            check_declared(path, declared, stored)
            tree = ckptr.restore(path)
    except FastViTError:
        raise
    except Exception as e:  # orbax raises many types for a broken directory
        raise FastViTError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from None
    return {k: loaded(v) for k, v in flatten(jax.tree_util.tree_map(np.asarray, tree)).items()}


READERS = {".npz": open_npz, ".safetensors": open_safetensors, ".pth": open_torch, ".pt": open_torch,
           ".bin": open_torch, ".msgpack": open_msgpack}


def open_file(path: Path) -> dict[str, Stored]:
    """List the arrays of one weights file (or an orbax directory)."""
    if path.is_dir():
        return open_orbax(path)
    reader = READERS.get(path.suffix)
    if reader is None:
        # an .npz saved under another name is still a zip of .npy members
        if zipfile.is_zipfile(path):
            return open_npz(path)
        raise FastViTError(f"{path}: unknown checkpoint format {path.suffix!r}; allowed: "
                           f"{', '.join(READERS)} or an orbax/Hugging Face folder")
    return reader(path)


# The published ResNet hybrids store every GroupNorm scale and bias as (1, 1, 1, C); the model's are
# (C,) (vision_transformer's own loader fixes them the same way: vit_jax/checkpoint.py, `_fix_groupnorm`).
_GROUPNORM = re.compile(r"(^|/)gn[^/]*/(scale|bias)$")


def fix_groupnorm(key: str, stored: Stored) -> Stored:
    if _GROUPNORM.search(key) and len(stored.shape) == 4 and stored.shape[:3] == (1, 1, 1):
        return dataclasses.replace(stored, shape=stored.shape[3:], read=lambda: stored.read().reshape(-1))
    return stored
