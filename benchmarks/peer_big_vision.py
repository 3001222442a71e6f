"""Zero-shot scores against big_vision's own two-tower forward (two_towers.py, text_transformer.py,
vit.py), on the same file and the same tokens.

Outside CI: needs a checkout of google-research/big_vision (FASTVIT_BIG_VISION_REPO, the folder
holding big_vision/). Its models are imported as they are; only `big_vision.utils` and
`big_vision.models.common`, which the forward does not use (they serve `load`), are stubbed, so
tensorflow is not needed.

For each layout (SigLIP: unstacked blocks, 32k vocabulary, pad 1; SigLIP 2: scan-stacked blocks,
256k vocabulary), big_vision's Model(B/16 image tower with MAP head, B text tower) is initialised,
its LayerNorm and bias leaves perturbed (zero-initialised pieces hide bugs), t and b set to a
trained model's (exp(t) = 112, b = -16.5), and saved as a
two-tower .npz as big_vision publishes them. Then:
  - big_vision: zimg, ztxt from model.apply; class embeddings as its discriminative classifier
    builds them; scores zimg . ztxt x exp(t) + b;
  - ours: the file through `hub.load_model` + `attach_zero_shot` (what `fastvit eval --zero-shot`
    runs), dense and ToMe r=8;
  - mixed: our ToMe r=8 image embeddings against big_vision's class embeddings.
Both sides get the same tokens (our tokenizer's; its rules are tested in tests/test_zero_shot.py)
and the same preprocessed images.

    FASTVIT_BIG_VISION_REPO=/tmp/bv python benchmarks/peer_big_vision.py --classes 20 --images 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def import_big_vision(repo: Path):
    sys.path.insert(0, str(repo))
    for name in ("big_vision.utils", "big_vision.models.common"):
        sys.modules[name] = types.ModuleType(name)  # used only by load(), not by the forward
    import big_vision.models.proj.image_text.two_towers as two_towers

    return two_towers


def model_config(scan: bool, vocab: int):
    return dict(image_model="vit", text_model="proj.image_text.text_transformer",
                image=dict(variant="B/16", pool_type="map", scan=scan),
                text=dict(variant="B", vocab_size=vocab, scan=scan),
                out_dim=(None, 768), bias_init=-10.0, temperature_init=10.0)


def perturbed(params, seed):
    import jax

    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(path[-1].key)
        a = np.asarray(leaf, np.float32)
        if name in ("scale", "bias"):
            a = a + 0.05 * rng.standard_normal(a.shape).astype(np.float32)
        out.append(a)
    return jax.tree_util.tree_unflatten(tree, out)


def train_tokenizer(path: Path, names: list[str]):
    import sentencepiece as spm

    from fastvit_jax.zero_shot import canonicalize_text, read_templates

    templates, _ = read_templates("clip")
    lines = [canonicalize_text(t, keep="{}").replace("{}", canonicalize_text(n)) for n in names for t in templates]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 3), model_writer=out, vocab_size=400, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(out.getvalue())
    return path


def run(layout: str, args, workdir: Path, two_towers, images, class_lines) -> dict:
    import jax
    import jax.numpy as jnp

    from fastvit_jax import zero_shot
    from fastvit_jax.util.tree import flatten
    from fastvit_jax.models.forward import make_forward
    from fastvit_jax.checkpoints.hub import load_model
    from fastvit_jax.zero_shot import attach_zero_shot
    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.zero_shot.tokenizer import Tokenizer

    scan, vocab, pad = (False, 32_000, 1) if layout == "siglip" else (True, 256_000, 0)
    model = two_towers.Model(**model_config(scan, vocab))
    init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 64), jnp.int32))
    params = perturbed(init["params"], seed=1)
    # a trained SigLIP's temperature and bias (exp(t) ~ 112, b ~ -16.5) rather than the init's 10 and -10
    params = {**params, "t": np.array([np.log(112.0)], np.float32), "b": np.array([-16.5], np.float32)}
    path = workdir / f"{layout}.npz"
    np.savez(path, **{f"params/{k}": np.asarray(v) for k, v in flatten(params).items()})

    spm_path = train_tokenizer(workdir / "tok.model", [c.split(",")[0] for c in class_lines])
    prompts = zero_shot.Prompts(tuple(class_lines), zero_shot.read_templates(args.templates)[0])
    texts, labels = prompts.texts()
    tokens = Tokenizer(spm_path).tokenize(texts, 64, pad)

    t0 = time.perf_counter()
    apply = jax.jit(model.apply)
    zimg_bv, _, out = apply({"params": params}, images, None)
    ztxt = np.concatenate([np.asarray(apply({"params": params}, None, tokens[i:i + 64])[1])
                           for i in range(0, len(tokens), 64)])
    classes = np.stack([ztxt[labels == c].mean(0) for c in range(len(class_lines))])
    classes /= 1e-8 + np.linalg.norm(classes, axis=1, keepdims=True)
    t, b = float(np.asarray(out["t"]).reshape(-1)[0]), float(np.asarray(out["b"]).reshape(-1)[0])  # out["t"] = exp(t)
    scores_bv = np.asarray(zimg_bv, np.float64) @ classes.T.astype(np.float64) * t + b
    bv_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    p, config, pre = load_model(path=path)
    p, config, _ = attach_zero_shot(None, path, p, config, pre, prompts=prompts, tokenizer=str(spm_path),
                                    text_pad=pad, progress=False)
    dense = np.asarray(make_forward(config, None)(p, images), np.float64)
    plan = make_plan(config, MergeOptions("tome", 8))
    merged = np.asarray(make_forward(config, plan)(p, images), np.float64)
    ours_s = time.perf_counter() - t0

    # our merged image embeddings (the head's input: the normalised feature) against big_vision's classes
    tower = config.replace(num_classes=0, l2_normalize=False)
    feats = np.asarray(make_forward(tower, plan)({k: v for k, v in p.items() if k != "head"}, images), np.float64)
    feats /= 1e-8 + np.linalg.norm(feats, axis=1, keepdims=True)
    mixed = feats @ classes.T.astype(np.float64) * t + b
    return {"layout": layout, "scan": scan, "vocab": vocab, "pad": pad, "classes": len(class_lines),
            "prompts": len(texts), "images": len(images),
            "dense_max_abs_diff": float(np.abs(dense - scores_bv).max()),
            "tome8_vs_mixed_max_abs_diff": float(np.abs(merged - mixed).max()),
            "tome8_vs_dense_max_abs_diff": float(np.abs(merged - dense).max()),
            "top1_agree_dense": float(np.mean(dense.argmax(1) == scores_bv.argmax(1))),
            "score_range": [float(scores_bv.min()), float(scores_bv.max())], "big_vision_s": bv_s, "ours_s": ours_s}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=20, help="the first N ImageNet classes (CLIP names)")
    ap.add_argument("--images", type=int, default=8, help="real ImageNet sample images")
    ap.add_argument("--templates", default="clip-best")
    ap.add_argument("--layouts", default="siglip,siglip2")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peer_big_vision.json"))
    args = ap.parse_args(argv)
    repo = Path(os.environ.get("FASTVIT_BIG_VISION_REPO", "/tmp/bv"))
    if not (repo / "big_vision").is_dir():
        raise SystemExit(f"set FASTVIT_BIG_VISION_REPO to a google-research/big_vision checkout (not at {repo})")
    two_towers = import_big_vision(repo)

    from fastvit_jax.data import Preprocess, image_folder, load_image
    from fastvit_jax.zero_shot import read_classes

    ds = image_folder(SHARED / "data" / "imagenet-samples")
    images = np.stack([Preprocess("inception", 224)(load_image(p)) for p, _ in ds.items[: args.images]])
    class_lines = list(read_classes(None)[0][: args.classes])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        os.environ["FASTVIT_CACHE"] = str(Path(d) / "cache")
        for layout in args.layouts.split(","):
            rows.append(run(layout, args, Path(d), two_towers, images, class_lines))
            print(json.dumps(rows[-1]), flush=True)
    cols = ["layout", "prompts", "images", "dense_max_abs_diff", "tome8_vs_mixed_max_abs_diff",
            "tome8_vs_dense_max_abs_diff", "top1_agree_dense"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2e}" if isinstance(r[c], float) and c.endswith("diff") else str(r[c]) for c in cols))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
