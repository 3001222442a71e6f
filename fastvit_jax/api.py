"""The library in one value: `load(source)` -> Model, which merges, runs, predicts and embeds.

    import fastvit_jax as fv
    model = fv.load("deit_tiny_patch16_224")          # a name, a file, a folder, a URL, hf-hub:ORG/NAME
    merged = model.merge("tome", r=13)                  # or merge(target_gflops=0.7), merge(options)
    logits = merged(merged.preprocess(["cat.jpg"]))     # jit-compiled once per plan and runtime

A Model is frozen: merge, with_runtime and zero_shot return new Models sharing the same weights.
The CLI builds every command on these calls.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fastvit_jax.config import ViTConfig
from fastvit_jax.data import Dataset, Preprocess, _is_image, label_names, load_image, open_dataset
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import MergePlan, as_options, make_plan
from fastvit_jax.runtime import Runtime
from fastvit_jax.checkpoints.plan_file import load_plan_options
from fastvit_jax.search.budget import options_for_target
from fastvit_jax.models.forward import make_forward
from fastvit_jax.studies.evaluate import check_finite_logits, evaluate, top_predictions
from fastvit_jax.studies.embed import embed
from fastvit_jax.studies.bench import compare
from fastvit_jax.studies.sharpness import measure
from fastvit_jax.studies.visualize import paint_plans
from fastvit_jax.merge.flops import gflops
from fastvit_jax.zero_shot import Prompts, attach_zero_shot, read_classes, read_templates
from fastvit_jax.models.vit import check_images
from fastvit_jax.checkpoints.registry import ALIASES, DEFAULT_MODEL, REGISTRY, asset_path
from fastvit_jax.checkpoints.sources import is_remote
from fastvit_jax.checkpoints.hub import load_model


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A ViT ready to run: weights in Google's tree, the architecture, the preprocessing its files
    state, a merge plan (None: dense) and how it runs (Runtime).

    params: the parameter tree; config: ViTConfig; preprocessing: Preprocess (pixels -> input);
    plan: MergePlan or None; runtime: Runtime; source: where it was loaded from; notes: what was
    assumed where its files were silent; class_names: the outputs' names (zero-shot classes), or
    None for the head's own label set."""

    params: Any
    config: ViTConfig
    preprocessing: Preprocess
    plan: MergePlan | None = None
    runtime: Runtime = Runtime()
    source: str = ""
    notes: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    origin: tuple[str | None, str | None] = (None, None)  # (registered name, path) it was loaded from

    # ------------------------------------------------------------ merging and running
    def merge(self, method: str | MergeOptions | MergePlan | None = None, *, r: float | None = None,
              target_gflops: float | None = None, target_speedup: float | None = None, **knobs) -> "Model":
        """This model with a merge plan. method: a method name ("tome", "dfe", "lgtm", ...; `fastvit
        plan --help` lists them), MergeOptions, a MergePlan, or a plan file (`fastvit plan --out`);
        None or "none": dense. r and knobs are MergeOptions fields (skip, window, keep, r_list,
        metric, ...); target_gflops / target_speedup choose r (by FLOPs) for the budget instead."""
        if isinstance(method, MergePlan):
            if knobs or r is not None or target_gflops or target_speedup:
                raise FastViTError("merge(plan) takes no other options: the plan says everything")
            return dataclasses.replace(self, plan=method)
        if isinstance(method, (str, os.PathLike)) and str(method).endswith(".json"):

            options = load_plan_options(str(method), self.config)
        else:
            options = as_options(method)
        if r is not None or knobs:
            options = options.replace(**({"r": r} if r is not None else {}), **knobs)
        if (target_gflops is not None or target_speedup is not None) and options.method == "none":
            raise FastViTError("a budget (target_gflops / target_speedup) needs a merging method, e.g. merge('tome', "
                               "target_gflops=...)")
        if target_gflops is not None or target_speedup is not None:

            options = options_for_target(self.config, options, gflops_target=target_gflops,
                                         speedup_target=target_speedup, measured=False, params=self.params)
        return dataclasses.replace(self, plan=make_plan(self.config, options))

    @property
    def options(self) -> MergeOptions:
        """What was asked of the merge (MergeOptions("none") for the dense model)."""
        return self.plan.options if self.plan is not None else MergeOptions()

    def with_runtime(self, runtime: Runtime | None = None, **kw) -> "Model":
        """This model run another way: Runtime fields dtype ("float32", "bfloat16"), examples_per_step,
        merge_impl, attention. Logits change only by rounding (and the dtype)."""
        base = runtime if runtime is not None else self.runtime
        return dataclasses.replace(self, runtime=base.replace(**kw) if kw else base)

    @property
    def forward(self):
        """The jit-compiled forward(params, images[, merge_key]) -> logits of this plan and runtime."""

        return make_forward(self.config, self.plan, self.runtime)

    def __call__(self, images, *, merge_key=None):
        """Logits (B, classes) of preprocessed images (B, H, W, 3) float (`preprocess` makes them)."""
        if not self.config.num_classes:
            raise FastViTError(f"{self.source or 'this model'} has no classification head (an image tower): use "
                               f"model.embed(images), or model.zero_shot(class_names) for a two-tower file")
        return self.forward(self.params, _checked(images, self.config.image_size), merge_key)

    def preprocess(self, images) -> np.ndarray:
        """(B, H, W, 3) float32 model input from image paths, PIL images or uint8 arrays (H, W, 3),
        one or a list, with this model's preprocessing."""
        from PIL import Image


        items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) or (
            isinstance(images, np.ndarray) and images.ndim == 3) else list(images)
        out = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                item = load_image(item)
            elif isinstance(item, np.ndarray):
                if item.dtype != np.uint8 or item.ndim != 3 or item.shape[-1] != 3:
                    raise FastViTError(f"preprocess takes uint8 pixels (H, W, 3), got {item.dtype} {item.shape}: "
                                       f"already preprocessed images go to model(images) directly")
                item = Image.fromarray(item)
            elif not isinstance(item, Image.Image):
                raise FastViTError(f"preprocess takes image paths, PIL images or uint8 arrays, got "
                                   f"{type(item).__name__}")
            out.append(self.preprocessing(item))
        return np.stack(out) if out else np.zeros((0, *(self.config.image_size,) * 2, 3), np.float32)

    def _inputs(self, images) -> np.ndarray:
        """Model input from paths / PIL / uint8 pixels (preprocessed here) or float arrays (as they are)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and np.issubdtype(images.dtype, np.floating):
            return images
        if hasattr(images, "shape") and len(images.shape) == 4 and not isinstance(images, np.ndarray):
            return images  # a jax array: already model input
        return self.preprocess(images)

    def predict(self, images, k: int = 5) -> list[list[dict]]:
        """The k most probable classes of each image, most probable first: [{"index", "label", "prob"}]
        (softmax over the classes; two-tower models add SigLIP's per-pair "sigmoid"). images: paths,
        PIL images, uint8 arrays, or preprocessed float arrays (B, H, W, 3)."""
        import jax


        logits = np.asarray(self(self._inputs(images)), np.float32)
        check_finite_logits(logits)
        probs = np.asarray(jax.nn.softmax(logits))
        names = self.labels
        return [top_predictions(p, names, k=k, logits=lg if self.config.l2_normalize else None)
                for p, lg in zip(probs, logits)]

    @property
    def labels(self) -> list[str]:
        """The name of every output: the zero-shot classes, else the head's label set (ImageNet's...)."""

        return list(self.class_names) if self.class_names else label_names(self.config.num_classes)

    def embed(self, images, *, tokens: bool = False, batch_size: int = 32) -> dict[str, np.ndarray]:
        """{"features": (B, D)}: the pooled feature before the head (merged: the size-weighted pool).
        tokens=True adds "tokens" (B, N, width), "sizes" (B, N) and "sources" (B, N, patches)."""

        return embed(self.config, self.params, _checked(self._inputs(images), self.config.image_size), self.plan,
                     tokens=tokens, batch_size=batch_size, runtime=self.runtime)

    def evaluate(self, data=None, *, limit: int | None = None, batch_size: int = 32, progress: bool = True) -> dict:
        """Top-1 / top-5 and images/s on labelled images: an image folder, a packed .npz, tfds:NAME[:SPLIT]
        or a Dataset; None: the bundled images. limit: N images spread evenly over the set."""

        ds = _dataset(data).limit(limit)
        res = evaluate(self.forward, self.params, ds, self.preprocessing, batch_size=batch_size, progress=progress,
                       num_classes=self.config.num_classes)
        return {**res, "gflops": self.gflops, "options": self.options.to_dict()}

    def benchmark(self, *, batch_size: int = 32, runs: int = 20) -> dict:
        """This model against its dense self, timed round-robin on this machine: {"dense", "merged",
        "speedup" (measured), "ideal_speedup" (FLOPs ratio), ...}, each with images_per_s and compile_s."""

        plan = self.plan if self.plan is not None else make_plan(self.config)
        return compare(self.config, self.params, plan, batch_size=batch_size, runs=runs, runtime=self.runtime)

    def sharpness(self, data=None, *, num_images: int = 16, micro_batch: int = 8, iters: int = 20,
                  solver: str = "power", progress: bool = True) -> dict:
        """lambda_max, the dominant Hessian eigenvalue of the loss at these weights (this plan), on
        num_images labelled images spread over data (None: the bundled images)."""

        return measure(self.config, self.params, self.preprocessing, _dataset(data), self.plan,
                       num_images=num_images, micro_batch=micro_batch, iters=iters, solver=solver, progress=progress,
                       runtime=self.runtime)

    def visualize(self, image, out: str | os.PathLike, *, compare_with: "Model | None" = None) -> dict:
        """Paint which patches each final token holds (Figure 7) into out (.png); compare_with: a second
        merged Model painted beside this one. Returns the region statistics per plan."""

        plans = [self.plan or make_plan(self.config)] + ([compare_with.plan] if compare_with is not None else [])
        img = load_image(image) if isinstance(image, (str, os.PathLike)) else image
        _, stats = paint_plans(self.config, self.params, img, self.preprocessing, plans, out, self.runtime)
        return stats

    @property
    def gflops(self) -> float:
        """GFLOPs per image of this plan (multiply-adds x 2, as the paper counts)."""

        return gflops(self.config, self.plan)

    # ------------------------------------------------------------ zero-shot and description
    def zero_shot(self, class_names: Sequence[str] | str | None = None, templates: Sequence[str] | str = "clip", *,
                  all_aliases: bool = False, tokenizer: str | None = None, text_pad: int | None = None,
                  progress: bool = True) -> "Model":
        """This two-tower model (SigLIP, SigLIP 2) with a zero-shot head: class embeddings of the prompts
        from the file's text tower, cached. class_names: a list (aliases comma-separated), a file of one
        class a line, or None (ImageNet-1k as CLIP names them); templates: a bundled set ("clip",
        "clip-best", "none"), a file, or a list holding "{}"."""

        prompts = make_prompts(class_names, templates, all_aliases)
        notes: list[str] = []
        name, path = self.origin
        if self.config.num_classes:
            raise FastViTError(f"{self.source}: already has a head ({self.config.num_classes} outputs); zero-shot "
                               f"builds one for an image tower")
        params, config, _ = attach_zero_shot(name, path, self.params, self.config, self.preprocessing,
                                             prompts=prompts, tokenizer=tokenizer, text_pad=text_pad, notes=notes,
                                             progress=progress)
        plan = make_plan(config, self.plan.options) if self.plan is not None else None
        return dataclasses.replace(self, params=params, config=config, plan=plan, notes=self.notes + tuple(notes),
                                   class_names=tuple(prompts.names))

    def describe(self) -> str:
        """A few lines: where it came from, the architecture, preprocessing, plan, GFLOPs, runtime, notes."""
        c, p = self.config, self.preprocessing
        lines = [f"{self.source or 'model'}: {c.variant} ({c.family}), {c.image_size}px, patch {c.patch}, "
                 f"depth {c.depth}, width {c.width}, "
                 + (f"{c.num_classes} classes" if c.num_classes else "no head (features)"),
                 f"preprocessing: {p.family}, crop_pct {p.crop_pct}, mean/std {p.mean_std}, "
                 f"interpolation {p.interpolation or 'the family default'}",
                 (self.plan.describe() if self.plan is not None else "dense (no merging)"),
                 f"{self.gflops:.3f} GFLOPs per image; runtime {self.runtime.to_dict()}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.source or c.variant!r}, {c.variant}, {c.image_size}px, {self.options.label}, "
                f"{self.gflops:.3f} GFLOPs)")


def make_prompts(class_names, templates, all_aliases: bool = False):
    """zero_shot.Prompts from lists or files (None: ImageNet-1k's CLIP names)."""

    if class_names is None or isinstance(class_names, (str, os.PathLike)):
        classes, classes_from = read_classes(class_names)
    else:
        classes, classes_from = tuple(str(c) for c in class_names), "a list"
        if not classes:
            raise FastViTError("zero_shot needs at least one class name")
    if isinstance(templates, (str, os.PathLike)):
        temps, templates_from = read_templates(str(templates))
    else:
        temps, templates_from = tuple(str(t) for t in templates), "a list"
        bad = [t for t in temps if t.count("{}") != 1]
        if not temps or bad:
            raise FastViTError(f"templates must each hold the class name's place {{}} once, got {bad[:1] or 'none'}")
    return Prompts(classes, temps, all_aliases, classes_from, templates_from)


def _checked(images, size: int):
    """Refuse what is not model input before tracing (one FastViTError naming what was expected)."""

    if isinstance(images, (list, tuple, str, os.PathLike)):
        raise FastViTError("model(images) takes a preprocessed array (B, H, W, 3); for paths or PIL images use "
                           "model.predict(...) or model(model.preprocess(...))")
    images = images if hasattr(images, "dtype") else np.asarray(images)
    check_images(images, size)
    return images


def _dataset(data):

    if isinstance(data, Dataset):
        return data
    return open_dataset(str(data) if data is not None else str(asset_path("images")))


def bundled_images() -> list[Path]:
    """The 32 ImageNet validation images shipped with the package (one per class shown), sorted."""

    return sorted(p for p in asset_path("images").iterdir() if _is_image(p))


def _is_name(source: str) -> bool:
    """A registered model name (ours or Google's), not something on disk or remote."""

    if is_remote(source) or Path(source).exists():
        return False
    if source in REGISTRY or source in ALIASES:
        return True
    return not (os.sep in source or "/" in source or Path(source).suffix)  # a typo of a name gets its hint


def load(source: str | os.PathLike | None = None, *, model: str | None = None, gelu: str | None = None,
         preprocessing: str | None = None, crop_pct: float | None = None, tower: str | None = None,
         random_weights: bool = False, runtime: Runtime | None = None) -> Model:
    """A Model from any source: a registered name (`fastvit models`: bundled, or its official file
    downloaded once), a file, a folder (orbax, timm, transformers), a URL, hf-hub:ORG/NAME[@REV], an
    AugReg file stem; None: the bundled DeiT-Tiny. model: a registered name saying what a file is
    (its preprocessing) when the file does not; gelu / preprocessing / crop_pct override what the
    files say; tower: the image tower of a two-tower file; random_weights: the named architecture,
    randomly initialised. What was assumed is in model.notes."""

    name, path = model, None
    if source is not None:
        if isinstance(source, os.PathLike) or not _is_name(str(source)):
            path = source
        elif model is not None:
            raise FastViTError(f"load({source!r}, model={model!r}): give one model name")
        else:
            name = str(source)
    notes: list[str] = []
    labels: list[str] = []
    params, config, pre = load_model(name, path, gelu=gelu, preprocessing=preprocessing, crop_pct=crop_pct,
                                     random_weights=random_weights, notes=notes, tower=tower, labels=labels)

    label = str(path) if path is not None else name or f"{DEFAULT_MODEL} (bundled)"
    return Model(params, config, pre, None, runtime or Runtime(), label, tuple(notes), tuple(labels) or None,
                 origin=(name, str(path) if path is not None else None))
