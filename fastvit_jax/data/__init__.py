"""Images in, batches out: folders, synset-named files, tensorflow-datasets; preprocessing per family.

Data sets are lists of (path-or-loader, label). Labels: ImageNet synset folders or file-name prefixes
(`n01440764_tench.JPEG`) map to the standard ImageNet-1k index (sorted synsets); any other class
folders (`test/<class>/*.jpg`) map to the sorted folder index; -1 means unlabelled.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastvit_jax.data.dataset import Dataset, EncodedImage, spread  # noqa: F401 (public here too)
from fastvit_jax.errors import FastViTError

IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_SYNSET = re.compile(r"^(n\d{8})")


# ---------------------------------------------------------------- class names
@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """((synset, name), ...) in ImageNet-1k index order, shipped with the package."""
    text = resources.files("fastvit_jax").joinpath("assets/imagenet1k_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return tuple((syn, name) for _, syn, name in rows)


@lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    return {syn: i for i, (syn, _) in enumerate(imagenet_classes())}


def label_names(num_classes: int, class_names: list[str] | None = None) -> list[str]:
    if class_names:
        return list(class_names)
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [str(i) for i in range(num_classes)]


# ---------------------------------------------------------------- preprocessing
FAMILIES = ("inception", "deit", "crop", "hf_crop")  # preprocessing families, see Preprocess


INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
_DEFAULT_INTERPOLATION = {"inception": "bilinear", "deit": "bicubic", "crop": "bilinear", "hf_crop": "bicubic"}


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Two steps: `pixels` resizes/crops an image to (size, size, 3) uint8, `normalise` maps those
    pixels to the model's input; calling the object does both.

    family "inception": resize to size x size (bilinear), pixels to [-1, 1] (AugReg/SAM/Google;
    transformers' ViTImageProcessor is this geometry).
    family "deit": shorter side to floor(size / crop_pct) (bicubic), center crop, ImageNet mean/std
    (timm's eval transform is this geometry).
    family "crop": shorter side to round(size / crop_pct) (bilinear), center crop, [-1, 1] (the CIFAR
    models trained here on random size x size crops of 32 x 32 images: crop_pct = 28/32).
    family "hf_crop": transformers' shortest-edge resize and center crop (CLIP's and DINOv2's image
    processors): shorter side to round(size / crop_pct) (its `size.shortest_edge`), the crop's offsets
    floored as transformers crops (timm's round), ImageNet mean/std unless stated.
    mean, std (of pixels in [0, 1]) and interpolation replace the family's when a checkpoint's own
    config states them (timm's pretrained_cfg, transformers' preprocessor_config.json)."""

    family: str = "inception"
    size: int = 224
    crop_pct: float = 0.9
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise FastViTError(f"unknown preprocessing {self.family!r}; allowed: {', '.join(FAMILIES)}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise FastViTError(f"unknown interpolation {self.interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                try:
                    value = tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    raise FastViTError(f"preprocessing {name} must be 3 numbers, got {value!r}") from None
                if len(value) != 3 or (name == "std" and min(value) <= 0):
                    raise FastViTError(f"preprocessing {name} must be 3 numbers{' > 0' if name == 'std' else ''}, "
                                       f"got {value}")
                object.__setattr__(self, name, value)

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalise(self.pixels(img))

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The pixels the model sees, (size, size, 3) uint8."""
        img = img.convert("RGB")
        resample = INTERPOLATIONS[self.interpolation or _DEFAULT_INTERPOLATION[self.family]]
        if self.family == "inception":
            img = img.resize((self.size, self.size), resample)
        elif self.family == "deit":
            img = _center_crop(_resize_shorter(img, math.floor(self.size / self.crop_pct), resample), self.size)
        elif self.family == "hf_crop":
            img = _center_crop(_resize_shorter(img, round(self.size / self.crop_pct), resample), self.size, floor=True)
        else:
            img = _center_crop(_resize_shorter(img, self.train_size, resample), self.size)
        return np.asarray(img, np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> float32 model input."""
        x = np.asarray(pixels, np.float32)
        if self.mean is not None or self.std is not None:
            mean, std = self.mean_std
            return (x / np.float32(255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        if self.family in ("deit", "hf_crop"):
            return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return x / 127.5 - 1.0

    @property
    def mean_std(self) -> tuple:
        """(mean, std) of pixels in [0, 1]: the stated ones, else the family's."""
        default = (tuple(IMAGENET_MEAN.tolist()), tuple(IMAGENET_STD.tolist())) if self.family in ("deit", "hf_crop") \
            else ((0.5,) * 3, (0.5,) * 3)
        return (self.mean if self.mean is not None else default[0], self.std if self.std is not None else default[1])

    @property
    def train_size(self) -> int:
        """Side of the images training crops from: larger than `size` only for family "crop"."""
        return round(self.size / self.crop_pct) if self.family == "crop" else self.size

    def for_training(self) -> "Preprocess":
        """Preprocessing of training images: uncropped (square, train_size) so augmentation can crop."""
        return Preprocess("inception", self.train_size) if self.family == "crop" else self


def _resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
    # torchvision.transforms.Resize(int) semantics, which timm's eval transform uses.
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def _center_crop(img: Image.Image, size: int, floor: bool = False) -> Image.Image:
    w, h = img.size
    if floor:  # transformers' center_crop
        top, left = (h - size) // 2, (w - size) // 2
    else:  # torchvision's CenterCrop (timm)
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | Path) -> Image.Image:
    """Open an image file (any mode; converted to RGB by Preprocess). Errors name the file."""
    try:
        return decode(Image.open(path))
    except IMAGE_ERRORS as e:  # PIL's own message may name the file again
        why = str(e).replace(f": {str(path)!r}", "").replace(f" {str(path)!r}", "")  # PIL may name the file again
        raise FastViTError(f"{path}: cannot read image ({why})") from None


# What a damaged, truncated, unknown or oversized (decompression bomb) image raises while decoding.
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode(img: Image.Image) -> Image.Image:
    """Decode now (PIL is lazy), so a damaged file fails here, where it can be named and skipped."""
    img.load()
    return img


# ---------------------------------------------------------------- data sets
def check_labels(labels, num_classes: int, name: str) -> None:
    """Labels must index the model's classes; -1 (unlabelled) is allowed."""
    labels = np.asarray(labels)
    bad = labels >= num_classes
    if bad.any():
        raise FastViTError(f"{name}: {int(bad.sum())} of {len(labels)} labels are >= the model's {num_classes} "
                           f"classes (up to {int(labels.max())}): is this data set labelled for another model?")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def image_folder(root: str | Path) -> Dataset:
    """A folder of class folders, a flat folder of (synset-named) images, or one image file."""
    root = Path(root)
    if not root.exists():
        raise FastViTError(f"data not found: {root}")
    if root.is_file():
        return Dataset([(root, _file_label(root))], name=str(root))
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subdirs:
        names = [d.name for d in subdirs]
        syn = synset_index()
        if all(n in syn for n in names):
            labels, class_names = [syn[n] for n in names], None
        else:
            labels, class_names = list(range(len(names))), names
        items = [(p, lab) for d, lab in zip(subdirs, labels) for p in sorted(d.rglob("*")) if _is_image(p)]
    else:
        items, class_names = [(p, _file_label(p)) for p in sorted(root.iterdir()) if _is_image(p)], None
    if not items:
        raise FastViTError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under {root}")
    return Dataset(items, class_names, name=str(root))


def _file_label(p: Path) -> int:
    m = _SYNSET.match(p.name)
    return synset_index().get(m.group(1), -1) if m else -1


PACK_KEYS = ("encoded", "offsets", "labels", "class_names")


def pack_dataset(ds: Dataset, out: str | Path) -> Path:
    """Write ds as one .npz of the files' encoded bytes (no re-encoding), labels and class names:
    one file to copy to a Colab or accelerator machine instead of tens of thousands."""
    if any(callable(src) for src, _ in ds.items):
        raise FastViTError(f"{ds.name}: only image files can be packed (this data set is decoded on the fly)")
    blobs = [Path(src).read_bytes() for src, _ in ds.items]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    out = Path(out)
    np.savez(out, encoded=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             labels=np.array([lab for _, lab in ds.items], np.int32), class_names=np.array(ds.class_names or []))
    return out


def packed_dataset(path: str | Path) -> Dataset:
    """A .npz written by pack_dataset (`fastvit pack`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in PACK_KEYS if k not in z.files]
            if missing:
                raise FastViTError(f"{path}: not a packed image set (missing {', '.join(missing)}; "
                                   f"write one with `fastvit pack DIR OUT.npz`)")
            encoded, offsets, labels, names = (z[k] for k in PACK_KEYS)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise FastViTError(f"{path}: not a readable packed image set (truncated or corrupt: {e})") from None

    def loader(i):
        start, end = int(offsets[i]), int(offsets[i + 1])
        return EncodedImage(f"{path}[{i}]", lambda: encoded[start:end].tobytes())

    return Dataset([(loader(i), int(labels[i])) for i in range(len(labels))],
                   [str(n) for n in names] or None, name=str(path))


def open_dataset(spec: str, **kw) -> Dataset:
    """An image folder or file, a packed .npz, or tfds:NAME[:SPLIT] (kw: data_dir, manual_dir for tfds)."""
    if spec.startswith("tfds:"):
        from fastvit_jax.data.tfds import tfds_dataset

        return tfds_dataset(spec, **kw)
    if spec.endswith(".npz") and Path(spec).is_file():
        return packed_dataset(spec)
    return image_folder(spec)


# ---------------------------------------------------------------- batching
@dataclasses.dataclass
class Batch:
    images: np.ndarray  # (batch_size, H, W, 3), padded with zeros past `count`
    labels: np.ndarray  # (batch_size,), -1 for padding/unlabelled
    count: int  # real images in this batch
    paths: list


def batches(ds: Dataset, preprocess: Callable, batch_size: int, *, workers: int | None = None,
            failed: list | None = None, chunks: list[list] | None = None) -> Iterator[Batch]:
    """Decode and preprocess on a thread pool, one batch ahead; every batch has full size.

    Unreadable images are skipped and appended to `failed` as (path, reason); a batch with no
    readable image is skipped too, unless `chunks` (the items of each batch, given by the caller)
    are given: then every chunk yields a batch (count 0 if empty), so processes stay in step.
    """
    workers = workers or min(8, (os.cpu_count() or 2) + 2)
    size = getattr(preprocess, "size", None)

    def work(item):
        src, label = item
        try:
            img = decode(src()) if callable(src) else load_image(src)
            return preprocess(img), label, src, None
        except FastViTError as e:
            return None, label, src, str(e).removeprefix(f"{src}: ")
        except IMAGE_ERRORS as e:  # an image decoded on the fly (packed, tfds)
            return None, label, src, f"cannot read image ({e})"

    keep_empty = chunks is not None
    chunks = chunks if keep_empty else [ds.items[i:i + batch_size] for i in range(0, len(ds.items), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.map(work, c) for c in chunks[:2]]
        for ci in range(len(chunks)):
            results = list(pending.pop(0))
            if ci + 2 < len(chunks):
                pending.append(pool.map(work, chunks[ci + 2]))
            ok = [r for r in results if r[3] is None]
            if failed is not None:
                failed.extend((str(r[2]), r[3]) for r in results if r[3] is not None)
            if not ok and not keep_empty:
                continue
            shape = (size, size, 3) if size is not None else ok[0][0].shape
            images = np.zeros((batch_size,) + shape, np.float32)
            labels = np.full((batch_size,), -1, np.int32)
            for j, (arr, lab, _, _) in enumerate(ok):
                images[j], labels[j] = arr, lab
            yield Batch(images, labels, len(ok), [str(r[2]) for r in ok])


def load_arrays(ds: Dataset, preprocess, *, require_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every readable image of ds, preprocessed, in memory: (images, labels)."""
    chunks = list(batches(ds, preprocess, 256))
    if not chunks:
        raise FastViTError(f"{ds.name}: no readable images")
    images = np.concatenate([b.images[: b.count] for b in chunks])
    labels = np.concatenate([b.labels[: b.count] for b in chunks])
    if require_labels and (labels < 0).any():
        raise FastViTError(f"{ds.name}: labelled images needed (class folders or synset-named files)")
    return images, labels
