"""Our methods against their authors' released code, on the genuine DeiT-Tiny and real ImageNet images.

Outside CI: needs torch + timm (e.g. /work/timmvenv) and checkouts of the official repositories:
  FASTVIT_PITOME_REPO=/path/to/hchautran/PiToMe (the image-classification release, 776bd62)
  FASTVIT_PPT_REPO=/path/to/xjwu1024/PPT (ppt_deit.py + its tome.py)
  FASTVIT_MCTF_REPO=/path/to/mlvlab/MCTF (its models/ and utils/)

Both models get the same preprocessed images (timm's DeiT eval transform) and the same weights
(../shared/weights/deit_tiny_patch16_224.safetensors). The official side runs the release's own
block, attention and merge code (loaded from the checkout, patched into timm's model by its own
`apply_patch`); only the model-level loop (patch embedding, blocks, norm, head) is written here, as
the release's `forward_features` does it. Reported per method: top-1 agreement, the mean absolute
difference of the probability each side gives the official top-1 class, both accuracies, and the
dense model's distance from the official method for scale.

    python benchmarks/peer_methods.py --data ../shared/data/imagenet-val-1300 --limit 500
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def load_release_package(repo: Path, name: str = "pitome_release"):
    """algo/pitome of the checkout as an importable package (merge.py, patch/timm.py, patch/deit.py),
    without its other patches' dependencies (BLIP, CLIP, ...)."""
    base = repo / "algo" / "pitome"
    for pkg, path in ((name, base), (f"{name}.patch", base / "patch")):
        module = types.ModuleType(pkg)
        module.__path__ = [str(path)]
        sys.modules[pkg] = module
    loaded = {}
    for mod, path in (("merge", base / "merge.py"), ("patch.timm", base / "patch" / "timm.py"),
                      ("patch.deit", base / "patch" / "deit.py")):
        spec = importlib.util.spec_from_file_location(f"{name}.{mod}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"{name}.{mod}"] = module
        spec.loader.exec_module(module)
        loaded[mod] = module
    return loaded


def official_pitome(weights: Path, ratio: float):
    import timm
    import torch
    from safetensors.torch import load_file

    repo = os.environ.get("FASTVIT_PITOME_REPO")
    if not repo:
        raise SystemExit("set FASTVIT_PITOME_REPO to a checkout of hchautran/PiToMe (776bd62)")
    release = load_release_package(Path(repo))
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    release["patch.deit"].apply_patch(model)  # the release's defaults: margins .95(1 - l/L), ratio blocks
    model.ratio = ratio

    @torch.inference_mode()
    def forward(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        info = model._tome_info
        info["ratio"], info["size"], info["source"] = [ratio] * len(model.blocks), None, None
        x = model.patch_embed(x)
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = model.pos_drop(x + model.pos_embed)
        for block in model.blocks:
            x = block(x)
        x = model.norm(x)
        return model.head(x[:, 0]).numpy()

    return forward


def official_ppt(weights: Path, r: int, threshold: float):
    """PPT's ppt_deit.apply_patch on timm's DeiT, as its README evaluates it (blocks 3, 6, 9)."""
    import timm
    import torch
    from safetensors.torch import load_file

    repo = os.environ.get("FASTVIT_PPT_REPO")
    if not repo:
        raise SystemExit("set FASTVIT_PPT_REPO to a checkout of xjwu1024/PPT")
    sys.path.insert(0, repo)  # its ppt_deit.py imports its own tome.py
    import ppt_deit

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    ppt_deit.apply_patch(model, prop_attn=True, pp_loc_list=[3, 6, 9], threshold=threshold)
    model.r = r

    @torch.inference_mode()
    def forward(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()

    return forward


def official_mctf(weights: Path, r: int):
    """MCTF's own DeiT-T with run/eval_deit_t_mctf.sh's settings: mctf_type [16,0,0,1,1,1,20,40,1,1,0]
    (prop. attention, one step ahead, taus 1/20/40, bidirectional, pooling type 1), blocks 1-11."""
    import torch
    from safetensors.torch import load_file

    repo = os.environ.get("FASTVIT_MCTF_REPO")
    if not repo:
        raise SystemExit("set FASTVIT_MCTF_REPO to a checkout of mlvlab/MCTF")
    sys.path.insert(0, repo)
    from models.deit import deit_tiny

    model = deit_tiny(use_mctf=True, mctf_type=[r, 0, 0, 1, 1, 1, 20, 40, 1, 1, 0], task_type=[1, 0, 0, 0],
                      activate_layer=list(range(1, 12)))
    missing = model.load_state_dict(load_file(str(weights)), strict=False)
    assert not missing.missing_keys, missing
    model.eval()

    @torch.inference_mode()
    def forward(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), r_eval=r).numpy()

    return forward


def ours(options):
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.checkpoints.hub import load_model
    from fastvit_jax.merge.plan import make_plan

    params, config, _ = load_model("deit_tiny_patch16_224")
    forward = make_forward(config, make_plan(config, options) if options else None)
    return lambda images: np.asarray(forward(params, images))


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> dict:
    """a: ours, b: official logits."""
    pa, pb = softmax(a.astype(np.float64)), softmax(b.astype(np.float64))
    top_b = pb.argmax(1)
    rows = np.arange(len(labels))
    return {"top1_agree": float((pa.argmax(1) == top_b).mean()),
            "prob_diff": float(np.abs(pa[rows, top_b] - pb[rows, top_b]).mean()),
            "top1_ours": float((pa.argmax(1) == labels).mean()), "top1_official": float((top_b == labels).mean())}


def main(argv=None) -> int:
    from fastvit_jax.data import load_arrays, open_dataset
    from fastvit_jax.checkpoints.hub import load_model
    from fastvit_jax.merge.options import MergeOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300"))
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--method", choices=["pitome", "ppt", "mctf"], default="pitome")
    p.add_argument("--ratio", type=float, default=0.9125, help="pitome: the keep ratio")
    p.add_argument("--r", type=int, help="ppt: tokens removed at each of its blocks (50); mctf: per block (16)")
    p.add_argument("--threshold", type=float, default=7e-5, help="ppt: the score-variance threshold")
    p.add_argument("--out", help="JSON results (default benchmarks/results/peer_METHOD.json)")
    p.add_argument("--noise-floor", action="store_true",
                   help="also run the official code with torch's scalar CPU kernels (ATEN_CPU_CAPABILITY=default): "
                        "how far the release is from itself when only float summation order changes")
    p.add_argument("--official-only", metavar="NPY", help=argparse.SUPPRESS)  # the noise floor's child process
    args = p.parse_args(argv)
    args.out = args.out or str(ROOT / "benchmarks" / "results" / f"peer_{args.method}.json")
    _, _, preprocess = load_model("deit_tiny_patch16_224")
    images, labels = load_arrays(open_dataset(args.data).limit(args.limit), preprocess, require_labels=True)
    weights = SHARED / "weights" / "deit_tiny_patch16_224.safetensors"
    args.r = args.r or {"ppt": 50, "mctf": 16}.get(args.method, 0)
    if args.method == "pitome":
        mine, theirs = ours(MergeOptions("pitome", keep=args.ratio)), official_pitome(weights, args.ratio)
    elif args.method == "mctf":
        mine, theirs = ours(MergeOptions("mctf", args.r, skip=1)), official_mctf(weights, args.r)
    else:
        mine, theirs = ours(MergeOptions("ppt", args.r, threshold=args.threshold)), \
            official_ppt(weights, args.r, args.threshold)
    runs = {f"ours, {args.method}": (mine, theirs), "ours, dense": (ours(None), None)}

    def logits(fn):
        return np.concatenate([fn(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)])

    t0 = time.time()
    official = logits(theirs)
    if args.official_only:
        np.save(args.official_only, official)
        return 0
    rows = []
    for name, (mine, _) in runs.items():
        row = {"method": name, "images": len(labels), **compare(logits(mine), official, labels)}
        rows.append(row)
    if args.noise_floor:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            npy = Path(tmp) / "official.npy"
            subprocess.run([sys.executable, __file__, "--data", args.data, "--limit", str(args.limit), "--ratio",
                            str(args.ratio), "--method", args.method, "--r", str(args.r), "--threshold",
                            str(args.threshold), "--official-only", str(npy)], check=True,
                           env=dict(os.environ, ATEN_CPU_CAPABILITY="default"))
            rows.append({"method": "official, scalar kernels", "images": len(labels),
                         **compare(np.load(npy), official, labels)})
    setting = {"pitome": f"PiToMe release, ratio {args.ratio}",
               "ppt": f"PPT, r {args.r} at blocks 3, 6, 9, threshold {args.threshold:g}",
               "mctf": f"MCTF, r {args.r} in blocks 1-11, one step ahead"}[args.method]
    print(f"{len(labels)} images of {args.data}; official: {setting}")
    print(f"{'compared with official':24s} {'top1 agree':>10s} {'|dp| top1':>10s} {'top1 ours':>10s} {'top1 official':>13s}")
    for r in rows:
        print(f"{r['method']:24s} {r['top1_agree']:10.4f} {r['prob_diff']:10.4f} {r['top1_ours']:10.4f} "
              f"{r['top1_official']:13.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "method": args.method, "setting": setting, "rows": rows,
                                          "wall_s": time.time() - t0}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
