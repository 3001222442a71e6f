"""Ceilings for files that come from elsewhere (checkpoints from URLs and the Hub, configs, plan
files): what a file declares is checked against what it stores before anything is allocated.

A checkpoint's arrays cannot describe more model than the file holds, except through compression,
and trained weights barely compress; so the arrays a file declares may not exceed
DECLARED_PER_STORED times its stored bytes plus DECLARED_SLACK. That refuses a decompression bomb
(a zip member that inflates to gigabytes) while a normal load's memory is never exceeded by more than
the slack. JSON files (config.json, preprocessor_config.json, plan files, recorded settings) are read
only below MAX_JSON_BYTES.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from fastvit_jax.errors import FastViTError

DECLARED_PER_STORED = 4
DECLARED_SLACK = 64 << 20
MAX_JSON_BYTES = 16 << 20


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_declared(path: Path, declared: int, stored: int, what: str = "its arrays") -> None:
    """Refuse a file whose `declared` bytes (what its headers say the arrays hold) exceed the ceiling
    for `stored` bytes on disk."""
    ceiling = DECLARED_PER_STORED * stored + DECLARED_SLACK
    if declared > ceiling:
        raise FastViTError(f"{path}: {what} declare {_size(declared)} in {_size(stored)} stored "
                           f"(at most {DECLARED_PER_STORED}x + {_size(DECLARED_SLACK)}): refused before reading, "
                           f"as a decompression bomb or a corrupt header")


def check_zip(path: Path, zf: zipfile.ZipFile) -> None:
    """A zip (npz, PyTorch's format) whose members inflate past the ceiling, by their own headers."""
    infos = zf.infolist()
    check_declared(path, sum(i.file_size for i in infos), sum(i.compress_size for i in infos), "its zip members")


def read_json(path: Path, what: str = "JSON"):
    """A JSON file, refused in one line when larger than MAX_JSON_BYTES or not valid JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise FastViTError(f"{path}: {_size(size)}, larger than any {what} file can be "
                               f"({_size(MAX_JSON_BYTES)}): refused")
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FastViTError(f"{path}: not valid JSON for a {what} file ({type(e).__name__}: {str(e)[:200]})") from None
