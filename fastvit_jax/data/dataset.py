"""A data set as a list of (image source, label): what every reader (folders, packed files, tfds)
produces and every consumer (batches, evaluation, training) takes."""

from __future__ import annotations

import dataclasses
import io
from typing import Callable

import numpy as np
from PIL import Image

from fastvit_jax.errors import FastViTError


@dataclasses.dataclass
class Dataset:
    items: list[tuple[object, int]]  # (path or zero-arg loader returning a PIL image, label)
    class_names: list[str] | None = None  # for non-ImageNet folders
    name: str = ""

    def __len__(self):
        return len(self.items)

    def limit(self, n: int | None) -> "Dataset":
        """n items spread evenly over the set (a class-sorted folder keeps all its classes); None: all."""
        if n is not None and n < 1:
            raise FastViTError(f"limit must be a positive number of images, got {n}")
        return spread(self, n)


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedImage:
    """Loader of one encoded image (packed sets, tfds): `read` returns its bytes when a batch needs them;
    its str names it in skip reports."""

    name: str
    read: Callable[[], bytes] = dataclasses.field(repr=False)

    def __call__(self) -> Image.Image:
        return Image.open(io.BytesIO(self.read()))

    def __str__(self) -> str:
        return self.name


def spread(ds: Dataset, n: int | None) -> Dataset:
    """n items evenly spaced over ds (covers many classes of a class-sorted set); all when n is None."""
    if not n or n >= len(ds):
        return ds
    picks = np.linspace(0, len(ds) - 1, n).round().astype(int)
    return dataclasses.replace(ds, items=[ds.items[i] for i in picks])
