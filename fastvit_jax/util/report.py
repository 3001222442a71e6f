"""Shared output helpers for the CLI, the library's writers and the benchmark scripts: text and
markdown tables, figures saved as PNG and SVG, JSON files, the machine a measurement ran on."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path


def _cell(v, column: str = "") -> str:
    if isinstance(v, float):
        if column.endswith("per_s") or column.endswith("_s"):  # rates and seconds: one decimal, whatever the size
            return f"{v:.1f}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Aligned plain-text table; floats to 4 decimals (1 from 10 up; rates and seconds always 1),
    None as '-'."""
    cells = [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[str], digits: int = 3) -> str:
    """GitHub markdown table; floats to `digits` decimals."""
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows])


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = 150) -> list[Path]:
    """Write a matplotlib figure as out_dir/stem.png and .svg, close it, return the paths."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure laid out its own way (a colour bar) keeps it
        fig.tight_layout()
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: str | Path, payload) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def machine() -> dict:
    """Where a measurement ran: OS, processor, cores, JAX device and version, date."""
    import jax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "device": str(jax.devices()[0]), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d")}


@contextlib.contextmanager
def cold_compiles():
    """JAX's persistent compilation cache off inside (every compile measured cold), restored after:
    a benchmark's main() called in-process (a test worker) leaves the caller's cache as it was."""
    import jax

    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)
