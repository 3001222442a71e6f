"""The offline demo: bundled real DeiT-Tiny on bundled ImageNet images, dense vs merged."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fastvit_jax.data import batches, image_folder, label_names
from fastvit_jax.flops import gflops
from fastvit_jax.forward import make_forward
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.hub import load_model
from fastvit_jax.registry import DEFAULT_MODEL, asset_path


def bundled_model():
    return load_model(DEFAULT_MODEL)


def run_demo(configs, runs: int = 3, progress: bool = True) -> dict:
    """configs: [(method, r), ...]. Returns rows {method, r, top1, gflops, images_per_s, speedup}."""
    params, config, pre = bundled_model()
    ds = image_folder(asset_path("images"))
    batch = next(batches(ds, pre, len(ds)))
    names = label_names(config.num_classes)
    rows, predictions = [], []
    for method, r in tqdm(configs, desc="demo", disable=not progress, leave=False):
        plan = make_plan(config.depth, config.grid, method, int(r))
        forward = make_forward(config, plan)
        logits = np.asarray(jax.block_until_ready(forward(params, batch.images)))  # compiles
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            jax.block_until_ready(forward(params, batch.images))
            times.append(time.perf_counter() - t0)
        top1 = float((logits.argmax(-1) == batch.labels).mean())
        rows.append({"method": method, "r": int(r), "top1": top1, "gflops": gflops(config, plan),
                     "images_per_s": batch.count / statistics.median(times)})
        if not predictions:
            probs = np.asarray(jax.nn.softmax(logits))
            for path, pr, lab in zip(batch.paths, probs, batch.labels):
                top = np.argsort(-pr)[:5]
                predictions.append({"image": path, "true_label": names[lab],
                                    "top5": [{"index": int(i), "label": names[i], "prob": float(pr[i])} for i in top]})
    dense = next((row["images_per_s"] for row in rows if row["method"] == "none" or row["r"] == 0), rows[0]["images_per_s"])
    for row in rows:
        row["speedup"] = row["images_per_s"] / dense
    return {"rows": rows, "predictions": predictions, "images": batch.count}
