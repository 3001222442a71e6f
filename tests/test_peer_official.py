"""Official implementations as peers, outside CI: skipped unless a checkout is named by an
environment variable (nothing of theirs is in this repository).

  FASTVIT_GOOGLE_VIT=/path/to/google-research/vision_transformer   (its vit_jax: flax, ml_collections)
  FASTVIT_TOME_REPO=/path/to/facebookresearch/ToMe                 (with torch and timm installed)

Google's own models_vit on files written as published (hybrid GroupNorm leaves (1, 1, 1, C); a
bfloat16 npz), and facebookresearch/ToMe's timm patch on a distilled DeiT saved by timm, against
fastvit loading the same files with no --model.
"""

import json
import os
import sys

import numpy as np
import pytest

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.cli import main
from fastvit_jax.models.forward import make_forward
from fastvit_jax.merge.plan import make_plan

GOOGLE = os.environ.get("FASTVIT_GOOGLE_VIT")
TOME = os.environ.get("FASTVIT_TOME_REPO")


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


@pytest.mark.skipif(not GOOGLE, reason="FASTVIT_GOOGLE_VIT (a vision_transformer checkout) not set")
@pytest.mark.parametrize("case", ["hybrid_groupnorm_1110", "bfloat16"])
def test_google_models_vit_on_published_layouts(tmp_path, case):
    import jax
    import ml_collections
    import ml_dtypes

    sys.path.insert(0, GOOGLE)
    from vit_jax import models_vit

    hybrid = case.startswith("hybrid")
    model = models_vit.VisionTransformer(
        num_classes=10, patches=ml_collections.ConfigDict({"size": (8, 8) if hybrid else (16, 16)}),
        transformer=dict(num_layers=2, mlp_dim=768, num_heads=3, attention_dropout_rate=0.0, dropout_rate=0.0),
        hidden_size=192, classifier="token", representation_size=None,
        resnet=ml_collections.ConfigDict(dict(num_layers=(), width_factor=1)) if hybrid else None)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 224, 224, 3), minval=-1, maxval=1)
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    flat = _flat(jax.device_get(params))
    if hybrid:
        flat = {k: v.reshape(1, 1, 1, -1) if "/gn" in "/" + k and k.endswith(("scale", "bias")) else v
                for k, v in flat.items()}
    else:
        flat = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()}
        params = jax.tree_util.tree_map(lambda a: a.astype("bfloat16").astype("float32"), params)
    np.savez(tmp_path / "published.npz", **flat)
    want = np.asarray(model.apply({"params": params}, x, train=False))
    ours, config = checkpoint.load(tmp_path / "published.npz")
    np.testing.assert_allclose(make_forward(config, make_plan(config))(ours, np.asarray(x)), want, atol=1e-5)


@pytest.mark.skipif(not TOME, reason="FASTVIT_TOME_REPO (a facebookresearch/ToMe checkout) not set")
def test_official_tome_on_distilled_deit(tmp_path, shared_dir, capsys):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf

    sys.path.insert(0, TOME)
    import tome

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
            if name.startswith("head"):
                p.mul_(40)  # spread the probabilities so they can disagree
    save_for_hf(model, str(tmp_path / "deit"), safe_serialization=True)
    images = sorted((shared_dir / "data" / "imagenet-samples").glob("*.JPEG"))[:8]
    transform = create_transform(**resolve_data_config({}, model=model))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    tome.patch.timm(model)
    model.r = 8
    with torch.no_grad():
        probs = torch.softmax(model(batch), -1).numpy()
    assert main(["predict", *map(str, images), "--checkpoint", str(tmp_path / "deit"), "--method", "tome",
                 "--r", "8", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    for row, p in zip(ours, probs):
        want = np.argsort(-p)[:5]
        assert [t["index"] for t in row["top5"]] == list(want)
        np.testing.assert_allclose([t["prob"] for t in row["top5"]], p[want], atol=2e-4)
