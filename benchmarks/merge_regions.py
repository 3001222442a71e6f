"""How local are the final merged regions? ToMe vs LGTM at matched final token counts (paper Figure 7).

    python benchmarks/merge_regions.py --data ../shared/data/imagenet-samples --num-images 200 \
        --out benchmarks/results/deit_tiny/regions

For each plan, over the images: the share of multi-patch final tokens whose patches form one
4-connected region, and their mean bounding-box extent (patches), from the tracked sources of the
bundled DeiT-Tiny. The LGTM r is the one whose final token count is closest to ToMe's at r = --tome-r.
Writes regions_<size>.json and prints a table. --image-size 384 mirrors the paper's 384 px setting.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli.arguments import ArgumentParser
from fastvit_jax.data import image_folder, load_arrays, spread
from fastvit_jax.studies.demo import bundled_model
from fastvit_jax.errors import report_errors
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.merge.options import DEFAULT_WINDOW, MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.checkpoints.registry import DEFAULT_MODEL, asset_path, get_entry
from fastvit_jax.util.report import format_table, write_json
from fastvit_jax.studies.visualize import final_sources, region_stats, token_map


def matched_lgtm(config, tokens: int, skip: int, window: int):
    """The LGTM plan (given skip and window) whose final token count is closest to `tokens`."""
    plans = [make_plan(config, MergeOptions("lgtm", r, skip=skip, window=window)) for r in range(1, 80)]
    return min(plans, key=lambda p: abs(p.final_tokens - tokens))


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/imagenet-samples")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--tome-r", type=int, default=13)
    p.add_argument("--model", help="registry name (default: the bundled DeiT-Tiny)")
    p.add_argument("--checkpoint", help="checkpoint file (e.g. a ViT-L/16-384 .npz, as the paper's figure)")
    p.add_argument("--image-size", type=int, help="bundled model at this resolution (posemb resized)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="initial LGTM window")
    p.add_argument("--skip", type=int, default=2, help="DFE skip of the second LGTM plan")
    p.add_argument("--out", default="benchmarks/results/deit_tiny/regions")
    args = p.parse_args(argv)
    params, config, pre = load_model(args.model, args.checkpoint) if args.model or args.checkpoint else bundled_model()
    if args.image_size and args.image_size != config.image_size and not (args.model or args.checkpoint):  # e.g. 384 as the paper's Figure 7: finer token grid
        config = config.replace(image_size=args.image_size)
        params, config = checkpoint.load(asset_path(get_entry(DEFAULT_MODEL).bundled), config)
        pre = dataclasses.replace(pre, size=args.image_size)
    images, _ = load_arrays(spread(image_folder(args.data), args.num_images), pre)
    tome = make_plan(config, MergeOptions("tome", args.tome_r))
    plans = [tome, matched_lgtm(config, tome.final_tokens, 0, args.window),
             matched_lgtm(config, tome.final_tokens, args.skip, args.window)]
    rows = []
    for plan in plans:
        print(plan.describe())
        stats = []
        for i in range(0, len(images), 50):
            for src in final_sources(config, plan, params, images[i:i + 50]):
                stats.append(region_stats(token_map(src, config.grid)))
        rows.append({"method": plan.method, "r": plan.r, "skip": plan.skip, "image_size": config.image_size, "final_tokens": plan.final_tokens,
                     **{k: float(np.mean([s[k] for s in stats])) for k in stats[0]}, "images": len(stats)})
    out = write_json(Path(args.out) / f"regions_{config.image_size}.json", rows)
    print(format_table(rows, ["method", "r", "skip", "final_tokens", "merged_tokens", "connected_share",
                              "mean_extent", "images"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(report_errors(main, Path(__file__).name))
