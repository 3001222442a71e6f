"""Peer check (outside CI; needs torch and transformers): the ViT families of issue 38 as transformers
saves them, random weights, against transformers' own forward with its own preprocessing on real
JPEGs.

    pip install torch==2.13.0 transformers
    python benchmarks/peer_families.py --images ../shared/data/imagenet-samples --out benchmarks/results/peer_families.json

For each of Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel, SiglipVisionModel (saved by
transformers 5: unprefixed keys) and SiglipModel (zero-shot; SigLIP 1 with spiece.model, SigLIP 2
with a Gemma-style tokenizer.json), a small random model is built
(LayerScale at trained scales, 1e-1 to 1e-5), saved with `save_pretrained` beside its image
processor (and, for SigLIP, a SentencePiece tokenizer trained here), then loaded by
`fastvit_jax.load(folder)` with no other argument. Compared: the pooled features (max abs
difference), or the zero-shot softmax over classes (SiglipProcessor, padding="max_length"), and
ToMe r=4 against our dense model as a sanity line. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
import tempfile

import numpy as np

WIDTH, DEPTH, HEADS, MLP, PATCH, SIDE = 64, 3, 4, 128, 8, 64


def _layerscale(model, rng):
    import torch

    for name, p in model.named_parameters():
        if "lambda1" in name:
            with torch.no_grad():
                p.copy_(torch.tensor(10.0 ** rng.uniform(-5, -1, p.shape[0]), dtype=p.dtype))


def _pixels(processor, files):
    from PIL import Image

    return processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]


def vision_cases(tmp: Path, rng):
    import torch
    import transformers as tf

    torch.manual_seed(0)  # before the models are built: their random weights are then the same every run
    crop = {"size": {"shortest_edge": SIDE + 8}, "crop_size": {"height": SIDE, "width": SIDE}}
    common = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
                  image_size=SIDE, patch_size=PATCH)
    # DINOv2's weights at a larger grid than its processor's crop (as the Hub's 518 px weights with a 224
    # crop): transformers resamples the position embeddings at run time
    dinov2 = {**{k: v for k, v in common.items() if k != "intermediate_size"}, "image_size": SIDE + 3 * PATCH}
    cases = {
        "Dinov2Model": (tf.Dinov2Model(tf.Dinov2Config(**dinov2, mlp_ratio=MLP // WIDTH)),
                        tf.BitImageProcessor(do_center_crop=True, **crop)),
        "Dinov2WithRegistersModel": (tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(
            **dinov2, mlp_ratio=MLP // WIDTH, num_register_tokens=4)), tf.BitImageProcessor(do_center_crop=True, **crop)),
        "CLIPVisionModel": (tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)),
                            tf.CLIPImageProcessor(**crop)),
        "SiglipVisionModel": (tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)),
                              tf.SiglipImageProcessor(size={"height": SIDE, "width": SIDE})),
    }
    for name, (model, processor) in cases.items():
        model.eval()
        _layerscale(model, rng)
        folder = tmp / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        yield name, model, processor, folder


def tiny_spm(path: Path, texts: list[str]) -> Path:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 20), model_writer=out, vocab_size=60, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(out.getvalue())
    return path


def gemma_style_tokenizer(texts: list[str]):
    """A small BPE tokenizer in Gemma's pipeline (spaces as U+2581, byte fallback, ids pad 0, eos 1,
    bos 2), wrapped as transformers' GemmaTokenizer the way SigLIP 2 folders configure it (no BOS,
    EOS appended, padding on the right)."""
    import transformers as tf
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.train_from_iterator(texts * 20, BpeTrainer(vocab_size=80, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>",
                                                                                   "<mask>"]))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tf.GemmaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=False, add_eos_token=True,
                             padding_side="right")


def siglip_zero_shot(folder: Path, files, classes, *, label: str, tokenizer, vocab_size: int, template: str,
                     seed: int, merged: bool) -> dict:
    """A random SiglipModel saved with its processor (this tokenizer) by `save_pretrained`; the softmax
    of transformers' logits_per_image (SiglipProcessor, padding="max_length") against our zero-shot
    head built from the folder alone, with the same prompts (template filled with each class)."""
    import torch
    import transformers as tf
    from PIL import Image

    import fastvit_jax as fv

    length = 16
    cfg = tf.SiglipConfig(text_config=dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                           intermediate_size=MLP, vocab_size=vocab_size, max_position_embeddings=length),
                          vision_config=dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                             intermediate_size=MLP, image_size=SIDE, patch_size=PATCH))
    torch.manual_seed(seed)
    model = tf.SiglipModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.7)
        model.logit_bias.fill_(-16.5 / 4)
    model.save_pretrained(folder)
    processor = tf.SiglipProcessor(image_processor=tf.SiglipImageProcessor(size={"height": SIDE, "width": SIDE}),
                                   tokenizer=tokenizer)
    processor.save_pretrained(folder)
    inputs = processor(text=[template.format(c) for c in classes], images=[Image.open(f).convert("RGB") for f in files],
                       padding="max_length", max_length=length, return_tensors="pt")
    if tokenizer.pad_token_id != tokenizer.eos_token_id:  # SigLIP 2: the EOS once, no BOS (SigLIP pads with its EOS)
        assert inputs["input_ids"][0].tolist().count(tokenizer.eos_token_id) == 1
    with torch.no_grad():
        theirs = torch.softmax(model(**inputs).logits_per_image, -1).numpy()
    names = folder / "classes.txt"
    names.write_text("\n".join(classes) + "\n")
    ours = fv.load(folder).zero_shot(str(names), templates=[template], progress=False)
    softmax = lambda m: np.asarray(__import__("jax").nn.softmax(m(m.preprocess(files)), -1))
    got = softmax(ours)
    return {"model": label, "max_abs_diff": float(np.abs(got - theirs).max()), "scale": 1.0,
            "tome_r4_vs_dense": float(np.abs(softmax(ours.merge("tome", r=4)) - got).max()) if merged else None,
            "config": ours.config.family}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="../shared/data/imagenet-samples")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/peer_families.json")
    args = p.parse_args(argv)
    import torch
    import transformers as tf

    import fastvit_jax as fv
    from fastvit_jax.util.report import format_table, machine, write_json

    files = sorted(Path(args.images).rglob("*.JPEG"))[: args.count]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, model, processor, folder in vision_cases(tmp, rng):
            with torch.no_grad():
                theirs = model(pixel_values=_pixels(processor, files)).pooler_output.numpy()
            ours = fv.load(folder)
            got = ours.embed(files)["features"]
            merged = ours.merge("tome", r=4).embed(files)["features"]
            rows.append({"model": name, "max_abs_diff": float(np.abs(got - theirs).max()),
                         "scale": float(np.abs(theirs).max()), "tome_r4_vs_dense": float(np.abs(merged - got).max()),
                         "config": ours.config.family})
            print(rows[-1], file=sys.stderr, flush=True)
        # SiglipModel: zero-shot against logits_per_image. SigLIP: spiece.model; SigLIP 2: a Gemma-style
        # tokenizer.json and no spiece.model, lower-case class names as its model card asks. No
        # punctuation in the prompts: ours drop it, as big_vision canonicalises them.
        classes = ["tench", "goldfish", "great white shark", "cock", "hen", "ostrich"]
        spm = tf.SiglipTokenizer(str(tiny_spm(tmp / "spiece.model", classes)), model_max_length=16)
        rows.append(siglip_zero_shot(tmp / "SiglipModel", files, classes, label="SiglipModel zero-shot", tokenizer=spm,
                                     vocab_size=64, template="{}", seed=1, merged=False))
        gemma = gemma_style_tokenizer([f"a photo of a {c}." for c in classes] + classes)
        rows.append(siglip_zero_shot(tmp / "Siglip2Model", files, classes,
                                     label="SiglipModel (SigLIP 2, tokenizer.json) zero-shot", tokenizer=gemma,
                                     vocab_size=len(gemma), template="a photo of a {}", seed=2, merged=True))
        assert not (tmp / "Siglip2Model" / "spiece.model").exists()
    print(format_table(rows, ["model", "max_abs_diff", "scale", "tome_r4_vs_dense", "config"]))
    write_json(args.out, {"machine": machine(), "transformers": tf.__version__, "torch": torch.__version__,
                          "images": len(files), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
