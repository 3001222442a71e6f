"""The AugReg index (Steiner et al. 2021): every checkpoint in gs://vit_models/augreg with its
pretraining, fine-tuning and recorded accuracy, as `index.csv` in the bucket lists them.

Read from the cached CSV (downloaded once); offline and never downloaded, the registry's AugReg
files stand in (without recorded accuracies) and a note says where the full index comes from. Any
file stem of the index loads by name: `--checkpoint STEM` (checkpoints/sources.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

from fastvit_jax.checkpoints import sources
from fastvit_jax.errors import FastViTError
from fastvit_jax.checkpoints.registry import REGISTRY

INDEX_URL = sources.AUGREG + "index.csv"
COLUMNS = ("name", "ds", "adapt_ds", "adapt_resolution", "adapt_final_test", "file")


def _rows_from_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise FastViTError(f"{path}: not a readable AugReg index ({e})") from None
    missing = {"name", "ds", "filename"} - set(table[0] if table else {})
    if missing:
        raise FastViTError(f"{path}: not the AugReg index: no column {sorted(missing)[0]}")
    rows = []
    for r in table:
        adapted = bool(r.get("adapt_filename"))
        rows.append({"name": r["name"], "ds": r["ds"], "adapt_ds": r.get("adapt_ds") or "-",
                     "adapt_resolution": int(float(r["adapt_resolution"])) if r.get("adapt_resolution") else None,
                     "adapt_final_test": float(r["adapt_final_test"]) if r.get("adapt_final_test") else None,
                     "file": r["adapt_filename"] if adapted else r["filename"]})
    return rows


def _rows_from_registry() -> list[dict]:

    rows = []
    for e in REGISTRY.values():
        if e.url and "/augreg/" in e.url:
            stem = e.filename.removesuffix(".npz")
            fine = "--" in stem
            rows.append({"name": e.config.variant, "ds": "i21k", "adapt_ds": "imagenet2012" if fine else "-",
                         "adapt_resolution": e.config.image_size if fine else None, "adapt_final_test": None,
                         "file": stem})
    return rows


def index(download: bool = True, notes: list | None = None) -> list[dict]:
    """Rows of the index: the cached CSV, else a download of it, else the registry's AugReg files."""
    path = sources.cache_path(INDEX_URL)
    if not path.exists() and download:
        try:
            sources.download(INDEX_URL, progress=False)
        except FastViTError as e:
            if notes is not None:
                notes.append(f"the full AugReg index is not here ({e}); listing the registry's AugReg files")
    return _rows_from_csv(path) if path.exists() else _rows_from_registry()
