"""Peers, outside CI (skipped unless transformers / timm and torch are installed): folders written by
those libraries' own save code load through `fastvit predict --checkpoint FOLDER` with no --model
and give the same top-5 probabilities as the libraries' own forward with their own preprocessing,
on real JPEGs (their resize and crop included)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastvit_jax.cli import main  # noqa: E402


def _jpegs(shared_dir, n=4):
    return sorted((shared_dir / "data" / "imagenet-samples").glob("*.JPEG"))[:n]


def _spread(model, head_names, scale=40.0):
    """Random init gives near-uniform probabilities; scale the head so top-5 probabilities are large
    enough to tell tanh from exact GELU, and move every parameter off its init so nothing is zero."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
            if any(name.startswith(h) for h in head_names):
                p.mul_(scale)


def _ours(capsys, folder, images, *extra):
    code = main(["predict", *map(str, images), "--checkpoint", str(folder), "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def _compare(ours, probs, tol):
    for row, p in zip(ours, probs):
        want = np.argsort(-p)[:5]
        got = [t["index"] for t in row["top5"]]
        assert got == list(want)
        np.testing.assert_allclose([t["prob"] for t in row["top5"]], p[want], atol=tol)


def test_transformers_vit_folder_matches_transformers(tmp_path, shared_dir, capsys):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                                    intermediate_size=768, image_size=224, patch_size=16, num_labels=1000)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    _spread(model, ["classifier"])
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    # transformers 5 resizes with torchvision when it is installed and with PIL otherwise; the two
    # round a few pixels one level apart. We resize with PIL, so the PIL processor is the peer.
    processor = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)()
    processor.save_pretrained(folder)
    images = _jpegs(shared_dir)
    with torch.no_grad():
        inputs = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        probs = torch.softmax(model(**inputs).logits, -1).numpy()
    ours, err = _ours(capsys, folder, images)
    assert "note" not in err
    _compare(ours, probs, 2e-4)
    # the check can fail: the tanh GELU moves some top-5 probability by more than the tolerance
    tanh, _ = _ours(capsys, folder, images, "--gelu", "tanh")
    diff = max(abs(a["prob"] - b["prob"]) for r1, r2 in zip(tanh, ours) for a, b in zip(r1["top5"], r2["top5"]))
    assert diff > 2e-4


def test_timm_folders_match_timm(tmp_path, shared_dir, capsys):
    """An AugReg-tagged ViT folder (pretrained_cfg: mean = std = 0.5, bicubic, crop 0.9) and a
    distilled DeiT, both written by timm's own save code (safetensors + config.json)."""
    timm = pytest.importorskip("timm")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    for arch, tag, args in (("vit_tiny_patch16_224", "augreg_in21k_ft_in1k", {"depth": 4}),
                            ("deit_tiny_distilled_patch16_224", "fb_in1k", {"depth": 4})):
        model = timm.create_model(arch, pretrained=False, **args).eval()
        _spread(model, ["head"])
        model.pretrained_cfg = dict(model.pretrained_cfg, tag=tag)
        if tag.startswith("augreg"):
            model.pretrained_cfg.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                                        crop_pct=0.9)
        folder = tmp_path / arch
        timm.models.push_to_hf_hub  # noqa: B018 (the module that holds save_for_hf)
        from timm.models._hub import save_for_hf

        save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
        transform = create_transform(**resolve_data_config({}, model=model))
        images = _jpegs(shared_dir)
        with torch.no_grad():
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
            probs = torch.softmax(model(batch), -1).numpy()
        ours, err = _ours(capsys, folder, images)
        assert "note" not in err, err
        _compare(ours, probs, 2e-4)
