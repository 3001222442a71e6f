"""Top-1/top-5 accuracy and throughput of a (possibly merged) model over a data set."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fastvit_jax.errors import FastViTError
from fastvit_jax.data import Dataset, batches, check_labels
from fastvit_jax.util import parallel


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=-1)


def check_finite_logits(logits: np.ndarray, paths=None) -> None:
    """Non-finite logits for decoded (finite) images: stop rather than report an accuracy. The
    weights were checked when loaded, so the forward itself overflowed."""
    bad = ~np.isfinite(logits).all(axis=-1)
    if bad.any():
        first = f" (first: {paths[int(np.argmax(bad))]})" if paths is not None else ""
        raise FastViTError(f"the forward gave NaN/Inf logits for {int(bad.sum())} of {len(logits)} images{first} "
                           f"though the images and weights are finite: it overflowed (with --dtype bfloat16, "
                           f"try float32)")


def _correct(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """(top-1 correct, top-5 correct, labelled) among the labelled images (label >= 0)."""
    mask = labels >= 0
    return (int(topk_correct(logits[mask], labels[mask], 1).sum()),
            int(topk_correct(logits[mask], labels[mask], 5).sum()), int(mask.sum()))


def _stream(ds: Dataset, preprocess, batch_size: int, failed: list, mesh):
    """Batches to run: with several processes, each decodes only its share of every global batch."""
    if mesh is None or jax.process_count() == 1:
        return batches(ds, preprocess, batch_size, failed=failed)

    chunks, local = parallel.process_chunks(ds.items, batch_size)
    return batches(ds, preprocess, local, failed=failed, chunks=chunks)


def _run_batch(forward, params, b, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a batch's real images (the whole global batch with several processes)."""

    if mesh is None:
        return np.asarray(jax.block_until_ready(forward(params, b.images)))[: b.count], b.labels[: b.count]
    logits = jax.block_until_ready(forward(params, parallel.shard_batch(b.images, mesh)))
    if jax.process_count() == 1:
        return np.asarray(logits)[: b.count], b.labels[: b.count]
    return parallel.gather_batch(logits, b.labels, b.count)


def evaluate(forward, params, ds: Dataset, preprocess, *, batch_size: int = 32, progress: bool = True,
             desc: str = "eval", data_parallel: bool = True, cached: list | None = None,
             num_classes: int | None = None) -> dict:
    """Run forward(params, images) over ds. Returns top1, top5 (fractions over labelled images),
    images, labelled, images_per_s (model time after the first, compiling, batch), compile_s,
    failed, devices.

    With several devices (and data_parallel), each batch is sharded over all of them and params are
    replicated; the batch size is rounded up to a multiple of the device count and the padding masked.
    `cached`: already preprocessed batches to use instead of reading ds (sweeps reuse them).
    num_classes: refuse labels >= it before evaluating.
    """

    if num_classes is not None:  # labels the head cannot predict would score 0 without a word
        check_labels([label for _, label in ds.items], num_classes, ds.name)
    mesh = None
    if data_parallel and len(jax.devices()) > 1:
        mesh = parallel.data_mesh()
        batch_size = parallel.round_batch(batch_size, mesh)
        params = parallel.replicate(params, mesh)
    failed: list = []
    correct1 = correct5 = labelled = seen = 0
    model_s, compile_s, first = 0.0, 0.0, True
    stream = cached if cached is not None else _stream(ds, preprocess, batch_size, failed, mesh)
    with tqdm(total=len(ds), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for b in stream:
            t0 = time.perf_counter()
            logits, labels = _run_batch(forward, params, b, mesh)
            dt = time.perf_counter() - t0
            if first:
                compile_s, first = dt, False
            else:
                model_s += dt
            check_finite_logits(logits)
            c1, c5, n = _correct(logits, labels)
            correct1, correct5, labelled, seen = correct1 + c1, correct5 + c5, labelled + n, seen + len(labels)
            bar.update(len(labels))
            bar.set_postfix(top1=f"{correct1 / max(labelled, 1):.3f}")
    timed = seen - min(seen, batch_size)
    return {
        "top1": correct1 / labelled if labelled else None,
        "top5": correct5 / labelled if labelled else None,
        "images": seen,
        "labelled": labelled,
        "images_per_s": timed / model_s if model_s > 0 else None,
        "compile_s": compile_s,
        "failed": failed,
        "devices": len(jax.devices()) if mesh is not None else 1,
    }


def top_predictions(probs: np.ndarray, names: list[str], k: int = 5, logits: np.ndarray | None = None) -> list[dict]:
    """The k most probable classes of one image, most probable first (ties: lower index first).
    logits (two-tower models): each entry also gets SigLIP's own per-pair probability sigmoid(logit)."""
    top = np.argsort(-probs, kind="stable")[:k]
    out = [{"index": int(i), "label": names[i], "prob": float(probs[i])} for i in top]
    if logits is not None:
        for entry in out:
            entry["sigmoid"] = float(1.0 / (1.0 + np.exp(-np.float64(logits[entry["index"]]))))
    return out


def predict(forward, params, paths: list, preprocess, names: list[str], *, batch_size: int = 32,
            pair_sigmoid: bool = False) -> tuple[list[dict], list]:
    """Top-5 per image: ([{"image", "top5"}], [(path, why) for unreadable images]). prob is the softmax
    over the classes; pair_sigmoid adds sigmoid(logit), SigLIP's per-pair probability."""
    ds = Dataset([(Path(p), -1) for p in paths])
    failed, results = [], []
    for b in batches(ds, preprocess, min(len(ds), batch_size), failed=failed):
        logits = np.asarray(forward(params, b.images)[: b.count], np.float32)
        check_finite_logits(logits, b.paths)
        probs = np.asarray(jax.nn.softmax(logits))
        results += [{"image": path, "top5": top_predictions(pr, names, logits=lg if pair_sigmoid else None)}
                    for path, pr, lg in zip(b.paths, probs, logits)]
    return results, failed
