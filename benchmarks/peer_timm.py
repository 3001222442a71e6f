"""Peer check (outside CI; needs a second venv with timm): timm's own forward, with timm's own
preprocessing, on folders timm itself saved, against `fastvit_jax.load(folder)` with no other argument;
and how far facebookresearch/ToMe's timm patch falls from the unpatched model at r = 0 on LayerScale
models (its ToMeBlock.forward never calls ls1/ls2).

    python3.11 -m venv /work/timm-venv
    /work/timm-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm huggingface_hub safetensors pillow
    python benchmarks/peer_timm.py --timm-python /work/timm-venv/bin/python \
        --tome-repo PATH_TO/facebookresearch/ToMe --out benchmarks/results/peer_timm.json

The timm side runs in that venv (`--side timm`, started by this script): each model is built by
`timm.create_model(name)` with random weights (every bias, norm and LayerScale gamma drawn at a
realistic scale: gammas 1e-5..1e-1 per channel, not timm's constant init), saved by timm's own
`save_for_hf` (config.json with its pretrained_cfg, model.safetensors), and run on the JPEGs through
`resolve_data_config` + `create_transform`. Our side reads the folder and its preprocessing from the
files alone. Compared: top-5 softmax probabilities (heads) and pooled features. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = ("vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch14_dinov2.lvd142m",
          "deit3_small_patch16_224.fb_in1k", "vit_base_patch16_clip_224.openai")


def _randomise(model, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):  # LayerScale at trained scales
                p.copy_(10.0 ** (-5 + 4 * torch.rand(p.shape, generator=g)))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name in ("cls_token", "reg_token"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def timm_side(args) -> int:
    """Build, save and run each model with timm (this runs in the timm venv)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf

    files = json.loads(Path(args.files).read_text())
    out = Path(args.work)
    rows = {}
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        model = timm.create_model(name, pretrained=False).eval()
        _randomise(model, i)
        folder = out / name.replace("/", "_")
        save_for_hf(model, folder, safe_serialization=True)
        transform = create_transform(**resolve_data_config({}, model=model))
        x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.inference_mode():
            features = model.forward_features(x)
            pooled = model.forward_head(features, pre_logits=True)
            logits = model.forward_head(features)
        row = {"folder": str(folder), "pooled": pooled.numpy().tolist(), "logits": logits.numpy().tolist(),
               "num_classes": model.num_classes}
        if args.tome_repo and any(hasattr(b, "ls1") and not isinstance(b.ls1, torch.nn.Identity) for b in model.blocks):
            sys.path.insert(0, args.tome_repo)
            import tome

            patched = timm.create_model(name, pretrained=False).eval()
            patched.load_state_dict(model.state_dict())
            tome.patch.timm(patched)
            patched.r = 0
            with torch.inference_mode():
                tome_logits = patched(x)  # its forward sets up the per-block r list
            row["tome_r0"] = tome_logits.numpy().tolist()
        rows[name] = row
        print(f"timm: {name} done", file=sys.stderr, flush=True)
    Path(args.result).write_text(json.dumps({"timm": timm.__version__, "torch": torch.__version__, "rows": rows}))
    return 0


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="../shared/data/imagenet-samples")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--timm-python", default="/work/timm-venv/bin/python")
    p.add_argument("--tome-repo", default=None, help="a checkout of facebookresearch/ToMe (its `tome` package)")
    p.add_argument("--out", default="benchmarks/results/peer_timm.json")
    p.add_argument("--side", choices=("ours", "timm"), default="ours", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side == "timm":
        return timm_side(args)

    import fastvit_jax as fv
    from fastvit_jax.util.report import format_table, machine, write_json

    files = [str(f) for f in sorted(Path(args.images).rglob("*.JPEG"))[: args.count]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "files.json").write_text(json.dumps(files))
        cmd = [args.timm_python, __file__, "--side", "timm", "--files", str(tmp / "files.json"), "--work", str(tmp),
               "--result", str(tmp / "timm.json")] + (["--tome-repo", args.tome_repo] if args.tome_repo else [])
        subprocess.run(cmd, check=True)
        theirs = json.loads((tmp / "timm.json").read_text())
        for name, t in theirs["rows"].items():
            model = fv.load(t["folder"])
            features = model.embed(files)["features"]
            row = {"model": name, "ours_as": model.config.family,
                   "features_max_abs_diff": float(np.abs(features - np.asarray(t["pooled"])).max()),
                   "features_scale": float(np.abs(np.asarray(t["pooled"])).max())}
            if t["num_classes"] and model.config.num_classes:
                logits = np.asarray(model(model.preprocess(files)), np.float64)
                want = _softmax(t["logits"])
                top5 = np.argsort(-want, -1)[:, :5]
                got = _softmax(logits)
                row["top5_prob_max_abs_diff"] = float(np.abs(np.take_along_axis(got, top5, -1)
                                                             - np.take_along_axis(want, top5, -1)).max())
                row["top1_agree"] = float((got.argmax(-1) == want.argmax(-1)).mean())
            if "tome_r0" in t:  # facebookresearch/ToMe's patch at r = 0 against unpatched timm
                unpatched, patched = np.asarray(t["logits"]), np.asarray(t["tome_r0"])
                row["tome_patch_r0_max_abs_diff"] = float(np.abs(patched - unpatched).max())
                row["tome_patch_r0_rel_diff"] = float(np.linalg.norm(patched - unpatched) / np.linalg.norm(unpatched))
                if t["num_classes"]:
                    row["tome_patch_r0_top1_agree"] = float((patched.argmax(-1) == unpatched.argmax(-1)).mean())
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    cols = ["model", "ours_as", "features_max_abs_diff", "features_scale", "top5_prob_max_abs_diff", "top1_agree",
            "tome_patch_r0_max_abs_diff", "tome_patch_r0_rel_diff", "tome_patch_r0_top1_agree"]
    print(format_table(rows, cols))
    write_json(args.out, {"machine": machine(), "timm": theirs["timm"], "torch": theirs["torch"], "images": len(files),
                          "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
