"""Which input patches each final token holds (paper Figure 7, ToMe's source visualisation).

Every final token's patches are painted with the mean colour of those pixels and token borders
are drawn, so contiguous merged regions show as flat areas.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime

RASTER_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def token_map(source: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(tokens, patches) 0/1 source matrix -> (gh, gw) id of the token holding each patch."""
    return np.asarray(source).argmax(axis=0).reshape(grid)


def final_sources(config: ViTConfig, plan: MergePlan, params, images: np.ndarray,
                  runtime: Runtime = Runtime()) -> np.ndarray:
    """Source matrices of the final tokens: (tokens, patches) for one preprocessed image (H, W, 3),
    (B, tokens, patches) for a batch (B, H, W, 3)."""
    plan = dataclasses.replace(plan, track_source=True)
    model = VisionTransformer(config, plan, runtime)
    batch = images if images.ndim == 4 else images[None]
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, return_state=True))(params, batch)
    return np.asarray(state.source if images.ndim == 4 else state.source[0])


def region_stats(ids: np.ndarray) -> dict:
    """How local the merged regions are: the share of multi-patch tokens whose patches form one
    4-connected region, and the mean bounding-box extent (in patches) of multi-patch tokens."""
    from scipy import ndimage

    tokens = [t for t in np.unique(ids) if (ids == t).sum() > 1]
    connected, extent = 0, []
    for t in tokens:
        mask = ids == t
        connected += ndimage.label(mask)[1] == 1
        ys, xs = np.nonzero(mask)
        extent.append(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    return {"tokens": int(len(np.unique(ids))), "merged_tokens": len(tokens),
            "connected_share": connected / len(tokens) if tokens else 1.0,
            "mean_extent": float(np.mean(extent)) if extent else 1.0}


def paint(rgb: np.ndarray, ids: np.ndarray, patch: int, border: bool = True) -> np.ndarray:
    """rgb (H, W, 3) uint8 at model resolution; ids (gh, gw). Each token's area gets its mean colour."""
    pix = np.kron(ids, np.ones((patch, patch), dtype=ids.dtype))
    out = np.zeros_like(rgb, dtype=np.float64)
    for t in np.unique(pix):
        mask = pix == t
        out[mask] = rgb[mask].mean(axis=0)
    out = out.round().astype(np.uint8)
    if border:
        edge = np.zeros(pix.shape, bool)
        edge[:-1] |= pix[:-1] != pix[1:]
        edge[:, :-1] |= pix[:, :-1] != pix[:, 1:]
        out[edge] = 255
    return out


def render(panels: list[tuple[str, np.ndarray]], out: str | Path) -> Path:
    """Side-by-side panels with titles, written as a raster image (format from the extension)."""
    out = Path(out)
    if out.suffix.lower() not in RASTER_EXTS:
        raise FastViTError(f"--out {out}: cannot write a {out.suffix or 'no-extension'} image; "
                           f"use one of {', '.join(RASTER_EXTS)}")
    h, w = panels[0][1].shape[:2]
    canvas = Image.new("RGB", (len(panels) * (w + 8) + 8, h + 28), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(panels):
        canvas.paste(Image.fromarray(img), (8 + i * (w + 8), 22))
        draw.text((8 + i * (w + 8), 5), title, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def model_rgb(img: Image.Image, preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(pixels the model sees as uint8 RGB, the model input made from them)."""
    rgb = preprocess.pixels(img)
    return rgb, preprocess.normalise(rgb)


def paint_plans(config: ViTConfig, params, img: Image.Image, preprocess, plans: list[MergePlan],
                out: str | Path, runtime: Runtime = Runtime()) -> tuple[Path, dict]:
    """The input and, per plan, its final tokens painted, side by side in one image at `out`.
    Returns the path and {method: {"r", "skip", region_stats...}}."""
    rgb, x = model_rgb(img, preprocess)
    panels, stats = [("input", rgb)], {}
    for plan in plans:
        ids = token_map(final_sources(config, plan, params, x, runtime), config.grid)
        stats[plan.method] = {"r": plan.r, "skip": plan.skip, **region_stats(ids)}
        title = f"{plan.method} r={plan.r} skip={plan.skip}: {stats[plan.method]['tokens']} tokens"
        panels.append((title, paint(rgb, ids, config.stride)))
    return render(panels, out), stats
