"""Load time and peak memory of one tower of a two-tower file (SigLIP's layout) against reading the
whole file, each in a fresh process, round-robin.

The file is written here in big_vision's two-tower layout with random values: params/img/... (a
ViT-B/16 tower with a MAP head) and params/txt/... (a text tower of the same width with a 32k-token
embedding), float32 or bfloat16, like SigLIP B/16's published .npz.

    python benchmarks/checkpoint_load.py [--dtype float32|bfloat16] [--runs 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WHOLE = """
import sys, time, numpy as np
from fastvit_jax.checkpoints import checkpoint  # imported alike, so "above import" compares the reads
t = time.perf_counter()
with np.load(sys.argv[1]) as z:  # every member, as fastvit read npz files before
    flat = {k: np.asarray(z[k]) for k in z.files}
img = {k: v for k, v in flat.items() if k.startswith("params/img/")}
print(time.perf_counter() - t, [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""
TOWER = """
import sys, time
from fastvit_jax.checkpoints import checkpoint
t = time.perf_counter()
params, config = checkpoint.load(sys.argv[1])
print(time.perf_counter() - t, [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""
BASELINE = """
from fastvit_jax.checkpoints import checkpoint
print(0.0, [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""


def write_two_tower(path: Path, dtype: str) -> dict:
    import ml_dtypes

    from fastvit_jax.checkpoints.checkpoint import expected_shapes
    from fastvit_jax.config import variant_config

    rng = np.random.default_rng(0)
    cast = (lambda a: a.astype(ml_dtypes.bfloat16)) if dtype == "bfloat16" else (lambda a: a)
    img = variant_config("B/16", 224, pool="map", num_classes=0)
    flat = {}
    for key, shape in expected_shapes(img).items():  # big_vision names come from the renaming; ours load too
        flat[f"params/img/{key}"] = cast(rng.standard_normal(shape, np.float32) * 0.02)
    flat["params/txt/Embed_0/embedding"] = cast(rng.standard_normal((32000, 768), np.float32) * 0.02)
    for i in range(12):
        for name, shape in (("MlpBlock_0/Dense_0/kernel", (768, 3072)), ("MlpBlock_0/Dense_1/kernel", (3072, 768)),
                            ("MultiHeadDotProductAttention_0/query/kernel", (768, 12, 64)),
                            ("MultiHeadDotProductAttention_0/key/kernel", (768, 12, 64)),
                            ("MultiHeadDotProductAttention_0/value/kernel", (768, 12, 64)),
                            ("MultiHeadDotProductAttention_0/out/kernel", (12, 64, 768))):
            flat[f"params/txt/Encoder_0/encoderblock_{i}/{name}"] = cast(rng.standard_normal(shape, np.float32) * 0.02)
    flat["params/t"], flat["params/b"] = np.ones(1, np.float32), np.zeros(1, np.float32)
    np.savez(path, **flat)
    count = lambda prefix: sum(int(np.prod(v.shape)) for k, v in flat.items() if k.startswith(prefix))
    return {"img_params": count("params/img/"), "txt_params": count("params/txt/"),
            "file_mb": round(path.stat().st_size / 2**20, 1)}


def measure(script: str, path: Path) -> tuple[float, float]:
    """(seconds, peak MB) of a fresh process: VmHWM, which a new process starts afresh (ru_maxrss would
    inherit this process's peak across fork)."""
    out = subprocess.run([sys.executable, "-c", script, str(path)], check=True, capture_output=True, text=True)
    seconds, peak_mb = out.stdout.split()[-2:]
    return float(seconds), float(peak_mb)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/checkpoint_load_cpu.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "two_tower.npz"
        info = write_two_tower(path, args.dtype)
        times = {"whole file (np.load every member)": [], "one tower (fastvit checkpoint.load)": []}
        peaks = {k: [] for k in times}
        base = measure(BASELINE, path)[1]
        for _ in range(args.runs):  # round-robin
            for name, script in zip(times, (WHOLE, TOWER)):
                s, mb = measure(script, path)
                times[name].append(s)
                peaks[name].append(mb)
    rows = [{"read": k, "seconds": round(float(np.median(times[k])), 2), "peak_rss_mb": round(max(peaks[k])),
             "above_import_mb": round(max(peaks[k]) - base)} for k in times]
    print(f"two-tower file: {info['file_mb']} MB ({args.dtype}), image tower {info['img_params']:,} params, "
          f"text tower {info['txt_params']:,}; fastvit import alone: {base:.0f} MB")
    print(f"{'read':40s} {'seconds':>8s} {'peak RSS MB':>12s} {'above import':>13s}")
    for r in rows:
        print(f"{r['read']:40s} {r['seconds']:8.2f} {r['peak_rss_mb']:12d} {r['above_import_mb']:13d}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "dtype": args.dtype, **info,
                                          "import_mb": round(base), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
