"""Where fastvit keeps what it fetches and computes once: $FASTVIT_CACHE, else ~/.cache/fastvit_jax."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FASTVIT_CACHE", Path.home() / ".cache" / "fastvit_jax"))
