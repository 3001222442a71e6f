"""Checkpoint files: one module per source layout, each a pure mapping from the file's keys to our
tree (google-research/vision_transformer's) plus a Description of what the file says it is.

    read(path)  ->  (params in our tree, Description)

`arrays` lists a file's arrays before reading them; `google`, `big_vision`, `timm`, `transformers`
are the layouts, tried in LAYOUTS order on the listed keys; `sources` turns URLs, `gs://` and
`hf-hub:` names into local files. Adding a layout is one module with `NAME`, `matches(keys)` and
`to_tree(stored, source, folder, tower)`, listed in LAYOUTS.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from fastvit_jax.checkpoints import big_vision, google, timm, transformers
from fastvit_jax.checkpoints.arrays import Stored, open_file, open_safetensors
from fastvit_jax.checkpoints.description import Description
from fastvit_jax.util.tree import flatten, unflatten
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.untrusted import read_json

LAYOUTS = (transformers, timm, big_vision, google)
META_KEY = "fastvit_meta"  # what `fastvit convert` writes beside the params: JSON text as uint8
# A Hugging Face folder's weights, in the order transformers and timm prefer them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "flax_model.msgpack",
                "open_clip_model.safetensors")


@dataclasses.dataclass
class Folder:
    """A downloaded Hugging Face folder: its config files, as read."""

    path: Path
    config: dict | None = None
    preprocessor: dict | None = None
    preprocessor_file: str = "preprocessor_config.json"  # where `preprocessor` was read


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    value = read_json(path, "Hugging Face config")
    if not isinstance(value, dict):
        raise FastViTError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").exists() or any((path / f).exists() for f in WEIGHT_FILES))


def locate(path: str | Path) -> tuple[Path, Folder | None]:
    """(the weights file or orbax directory, its Hugging Face folder if it sits in one)."""
    path = Path(path)
    if not path.exists():
        raise FastViTError(f"checkpoint not found: {path}")
    if is_hf_folder(path):
        weights = next((path / f for f in WEIGHT_FILES if (path / f).exists()), None)
        if weights is None:
            raise FastViTError(f"{path}: a Hugging Face folder without weights: expected one of "
                               f"{', '.join(WEIGHT_FILES)}")
        folder = path
    else:
        weights, folder = path, path.parent if (path.is_file() and (path.parent / "config.json").exists()) else None
    if folder is None:
        return weights, None
    return weights, Folder(folder, _json(folder / "config.json"), *_preprocessor(folder))


def _preprocessor(folder: Path) -> tuple[dict | None, str]:
    """The image processor's settings: preprocessor_config.json, else (transformers 5's processor
    save) the image_processor inside processor_config.json."""
    pre = _json(folder / "preprocessor_config.json")
    if pre is not None:
        return pre, "preprocessor_config.json"
    processor = _json(folder / "processor_config.json")
    nested = processor.get("image_processor") if processor else None
    if isinstance(nested, dict):
        return nested, "processor_config.json image_processor"
    return None, "preprocessor_config.json"


def list_arrays(weights: Path) -> dict[str, Stored]:
    if weights.name.endswith(".index.json"):  # sharded safetensors
        index = _json(weights) or {}
        files = sorted(set((index.get("weight_map") or {}).values()))
        if not files:
            raise FastViTError(f"{weights}: no weight_map")
        out = {}
        for name in files:
            out.update(open_safetensors(weights.parent / name))
        return out
    return open_file(weights)


def detect(keys) -> object:
    for layout in LAYOUTS:
        if layout.matches(keys):
            return layout
    shown = ", ".join(sorted(keys)[:4])
    raise FastViTError(f"no known ViT layout (vision_transformer, big_vision, timm, transformers) in these keys: "
                       f"{shown}{', ...' if len(keys) > 4 else ''}")


def read_meta(stored: dict[str, Stored], source) -> dict | None:
    entry = stored.pop(META_KEY, None) or stored.pop("params/" + META_KEY, None)
    if entry is None:
        return None
    try:
        return json.loads(np.asarray(entry.read(), np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise FastViTError(f"{source}: key {META_KEY} is not the JSON fastvit writes there") from None


def read(path: str | Path, tower: str | None = None, *, listed: dict[str, Stored] | None = None
         ) -> tuple[dict, Description]:
    """(params in our tree, float32, what the file says it is). listed: the arrays `list_arrays`
    gave for this path already (`fastvit inspect` shows them too), so the file is listed once."""
    weights, folder = locate(path)
    stored = dict(listed) if listed is not None else list_arrays(weights)
    meta = read_meta(stored, path)
    layout = detect(stored)
    try:
        params, desc = layout.to_tree(stored, path, folder, tower)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        # a value of the wrong type in a config file, an array of the wrong shape for its key
        raise FastViTError(f"{path}: not a readable {layout.NAME} checkpoint: {type(e).__name__}: {e}") from None
    if meta:
        desc.apply_meta(meta, f"{META_KEY} in the file")
    return params, desc


def meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)


__all__ = ["read", "locate", "detect", "Description", "Folder", "flatten", "unflatten", "META_KEY", "LAYOUTS"]
