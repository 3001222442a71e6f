"""What produced a stored result, recorded beside it: a result is reused or resumed only when every
setting that produced it matches (sweeps' DIR/settings.json, training's OUT.state/settings.json)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from fastvit_jax.errors import FastViTError
from fastvit_jax.util.tree import flatten
from fastvit_jax.util.untrusted import read_json
from fastvit_jax.config import ViTConfig
from fastvit_jax.data import Preprocess


def fingerprint(*parts) -> str:
    """A short hash of bytes and strings (weights, labels, file lists)."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()


def weights_fingerprint(params) -> str:
    """A short hash of a parameter tree: every leaf's key and bytes (sweeps, tunes, calibrations)."""
    flat = flatten(params)
    return fingerprint(*(x for k in sorted(flat) for x in (k, np.ascontiguousarray(flat[k]).tobytes())))


def _dotted(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _field_defaults() -> dict:
    """Settings written before a field existed compare equal to its default: the dataclasses whose
    fields are recorded whole, by where they sit in a record."""

    out = {}
    for where, cls in (("model.config.", ViTConfig), ("preprocess.", Preprocess)):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[where + f.name] = json.loads(json.dumps(f.default))
    return out


def check_settings(folder: Path, settings: dict, *, what: str, advice: str, only_given: bool = False,
                   results_without_record: bool = False) -> None:
    """folder/settings.json records `settings` the first time; later calls with other settings are refused
    with one line naming what differs. only_given: compare just the keys in `settings` (and record
    nothing). results_without_record: the folder already holds results but no record -- refused."""
    file = Path(folder) / "settings.json"
    if not file.exists():
        if results_without_record:
            raise FastViTError(f"{folder} holds results but no settings.json (written by an older fastvit): "
                               f"{advice}")
        if not only_given:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(settings, indent=1))
        return
    saved, now = _dotted(read_json(file, "settings")), _dotted(json.loads(json.dumps(settings)))
    keys = now if only_given else sorted(set(saved) | set(now))
    defaults = _field_defaults()
    value = lambda d, k: d.get(k, defaults.get(k))
    diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys if value(saved, k) != value(now, k)]
    if diff:
        raise FastViTError(f"{folder} holds {what} with other settings ({'; '.join(diff[:3])}); {advice}")
