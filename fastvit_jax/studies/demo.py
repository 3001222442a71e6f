"""The offline demo: bundled real DeiT-Tiny on bundled ImageNet images, dense vs merged."""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from fastvit_jax.studies.bench import time_forwards
from fastvit_jax.data import batches, image_folder, label_names
from fastvit_jax.studies.evaluate import top_predictions
from fastvit_jax.models.forward import make_forward
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.checkpoints.registry import DEFAULT_MODEL, asset_path


def bundled_model():
    return load_model(DEFAULT_MODEL)


def run_demo(options: list[MergeOptions], runs: int = 3, progress: bool = True) -> dict:
    """Top-1 on the bundled images and images/s (timed round-robin) per MergeOptions.
    Returns {"rows": [{method, r, top1, gflops, images_per_s, speedup}], "predictions", "images"}."""
    params, config, pre = bundled_model()
    ds = image_folder(asset_path("images"))
    batch = next(batches(ds, pre, len(ds)))
    plans = {o: make_plan(config, o) for o in options}
    logits = {}
    # First every plan compiles and runs once (most of a cold demo's time), one bar step per plan.
    with tqdm(plans.items(), desc="demo: compiling", unit="plan", disable=not progress, leave=False) as bar:
        for o, plan in bar:
            bar.set_postfix_str(o.label)
            logits[o] = np.asarray(jax.block_until_ready(make_forward(config, plan)(params, batch.images)))
    with tqdm(total=runs, desc=f"demo: timing {len(plans)} plans", unit="round", disable=not progress,
              leave=False) as bar:
        speed = time_forwards(config, params, plans, batch_size=batch.count, runs=runs, warmup=1, warmup_s=0.0,
                              progress=lambda i: bar.update(1))
    rows = [{"method": o.method, "r": o.r, "top1": float((logits[o].argmax(-1) == batch.labels).mean()),
             "gflops": speed[o]["gflops"], "images_per_s": speed[o]["images_per_s"]} for o in plans]
    dense = next((row["images_per_s"] for row in rows if row["method"] == "none" or row["r"] == 0), rows[0]["images_per_s"])
    for row in rows:
        row["speedup"] = row["images_per_s"] / dense
    names = label_names(config.num_classes)
    probs = np.asarray(jax.nn.softmax(logits[options[0]]))
    predictions = [{"image": path, "true_label": names[lab], "top5": top_predictions(pr, names)}
                   for path, pr, lab in zip(batch.paths, probs, batch.labels)]
    return {"rows": rows, "predictions": predictions, "images": batch.count}
