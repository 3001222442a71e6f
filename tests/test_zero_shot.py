"""Zero-shot classification through big_vision two-tower files (SigLIP, SigLIP 2).

The files are written here in big_vision's exact layout (img/ and txt/ trees as vit.py and
text_transformer.py name them, t and b), with random values at realistic scales; the text tower,
the tokenizer rules, the prompts and the scores are checked against tests/reference.py's numpy
forward and against big_vision's rules written out here, not against our own code.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

import reference
from conftest import google_checkpoint, interrupt_on_call
from fastvit_jax import zero_shot
from fastvit_jax.cli import main
from fastvit_jax.config import ViTConfig
from fastvit_jax.models.forward import make_forward
from fastvit_jax.checkpoints.hub import load_model
from fastvit_jax.zero_shot import attach_zero_shot
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import make_plan
from fastvit_jax.zero_shot.tokenizer import Tokenizer, ascii_lower, sticky_eos

IMG = ViTConfig(width=32, depth=3, heads=2, mlp_dim=64, patch=4, image_size=32, pool="map", num_classes=0)
TXT = dict(width=32, depth=2, heads=2, mlp=64, vocab=48, max_len=8, embed=32)
T, B = 4.7, -16.5  # a trained SigLIP's log-temperature and bias
CLASSES = ["tench, Tinca tinca", "goldfish", "great white shark", "cock", "hen", "ostrich"]
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "{}"]
BV_IMG_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
                "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}


def _normal(rng, shape, std):
    return (std * rng.standard_normal(shape)).astype(np.float32)


def text_tower_flat(seed=0, *, embed=TXT["embed"], pool="last", width=TXT["width"], vocab=TXT["vocab"]):
    """txt/ keys as big_vision's text_transformer.py names them (unstacked), realistic scales."""
    rng = np.random.default_rng(seed)
    d, m, h = width, TXT["mlp"], TXT["heads"]
    f = {"Embed_0/embedding": _normal(rng, (vocab, d), 1 / math.sqrt(d)),
         "pos_embedding": _normal(rng, (1, TXT["max_len"], d), 1 / math.sqrt(d))}

    def attention(pre):
        for name in ("query", "key", "value"):
            f[f"{pre}{name}/kernel"] = _normal(rng, (d, h, d // h), 1 / math.sqrt(d))
            f[f"{pre}{name}/bias"] = _normal(rng, (h, d // h), 0.02)
        f[f"{pre}out/kernel"] = _normal(rng, (h, d // h, d), 1 / math.sqrt(d))
        f[f"{pre}out/bias"] = _normal(rng, (d,), 0.02)

    def norm(pre):
        f[pre + "scale"] = (1 + _normal(rng, (d,), 0.1)).astype(np.float32)
        f[pre + "bias"] = _normal(rng, (d,), 0.02)

    def mlp(pre):
        f[pre + "Dense_0/kernel"], f[pre + "Dense_0/bias"] = _normal(rng, (d, m), 1 / math.sqrt(d)), _normal(rng, (m,), 0.02)
        f[pre + "Dense_1/kernel"], f[pre + "Dense_1/bias"] = _normal(rng, (m, d), 1 / math.sqrt(m)), _normal(rng, (d,), 0.02)

    for i in range(TXT["depth"]):
        pre = f"Encoder_0/encoderblock_{i}/"
        norm(pre + "LayerNorm_0/")
        attention(pre + "MultiHeadDotProductAttention_0/")
        norm(pre + "LayerNorm_1/")
        mlp(pre + "MlpBlock_0/")
    norm("Encoder_0/encoder_norm/")
    if pool == "map":
        f["MAPHead_0/probe"] = _normal(rng, (1, 1, d), 1 / math.sqrt(d))
        attention("MAPHead_0/MultiHeadDotProductAttention_0/")
        norm("MAPHead_0/LayerNorm_0/")
        mlp("MAPHead_0/MlpBlock_0/")
    if embed:
        f["head/kernel"], f["head/bias"] = _normal(rng, (d, embed), 1 / math.sqrt(d)), _normal(rng, (embed,), 0.02)
    return f


def stacked(flat, prefix="Encoder_0/encoderblock_"):
    """scan=True: Encoder_0/encoderblock/<leaf> with a leading depth axis (SigLIP 2)."""
    out, blocks = {}, {}
    for key, value in flat.items():
        if key.startswith(prefix):
            i, rest = key[len(prefix):].split("/", 1)
            blocks.setdefault(rest, {})[int(i)] = value
        else:
            out[key] = value
    for rest, per in blocks.items():
        out["Encoder_0/encoderblock/" + rest] = np.stack([per[i] for i in range(len(per))])
    return out


def image_tower_flat(seed=0):
    """(img/ keys in big_vision's vit.py names, the same in our names for the numpy reference)."""
    ours = google_checkpoint(IMG, seed=seed)
    bv = {}
    for key, value in ours.items():
        parts = key.split("/")
        if key == "Transformer/posembed_input/pos_embedding":
            bv["pos_embedding"] = value
            continue
        if parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = BV_IMG_BLOCK[parts[2]]
        bv["/".join(parts)] = value
    return bv, ours


def two_tower_file(path, *, seed=0, txt=None, scan=False, bias=True, bf16=False):
    img_bv, img_ours = image_tower_flat(seed)
    txt = text_tower_flat(seed + 1) if txt is None else txt
    stored_txt = stacked(txt) if scan else txt
    flat = {**{f"params/img/{k}": v for k, v in img_bv.items()}, **{f"params/txt/{k}": v for k, v in stored_txt.items()},
            "params/t": np.array([T], np.float32)}
    if bias:
        flat["params/b"] = np.array([B], np.float32)
    if bf16:
        import ml_dtypes

        flat = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()}
    np.savez(path, **flat)
    return path, img_ours, txt


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    """A tiny SentencePiece model trained on the test's prompts, with T5's ids (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    lines = [zero_shot.canonicalize_text(t, keep="{}").replace("{}", zero_shot.canonicalize_text(c.split(",")[0]))
             for c in CLASSES for t in TEMPLATES] * 10
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=40, pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(tmp_path):
    classes, templates = tmp_path / "classes.txt", tmp_path / "templates.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    templates.write_text("\n".join(TEMPLATES) + "\n")
    return classes, templates


def _images(n=4, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _want_class_embeddings(txt, spm_path, *, all_aliases=False, pad=1, pool="last", eos_mask=None, encode=None):
    """big_vision's discriminative classifier, written out: canonicalised names (first alias) x
    canonicalised templates, tokenised with the EOS, sticky, padded; embeddings normalised, averaged
    per class, normalised. encode: text -> ids (default: the SentencePiece model at spm_path)."""
    import sentencepiece as spm

    if encode is None:
        encode = spm.SentencePieceProcessor(model_file=str(spm_path)).EncodeAsIds
    rows = []
    for line in CLASSES:
        names = [a.strip() for a in zero_shot.canonicalize_text(line, keep=",").split(",")]
        names = names if all_aliases else names[:1]
        prompts = [zero_shot.canonicalize_text(t, keep="{}").replace("{}", n) for n in names for t in TEMPLATES]
        ids = []
        for p in prompts:
            toks = encode(p) + [1]
            toks = toks[:7] + [1] if len(toks) >= 8 else toks + [pad] * (8 - len(toks))
            ids.append(toks)
        z = reference.text_forward(txt, np.array(ids), heads=TXT["heads"], pool=pool, eos_mask=eos_mask)
        z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-8)
        m = z.mean(0)
        rows.append(m / (np.linalg.norm(m) + 1e-8))
    return np.stack(rows)


# ------------------------------------------------------------------ text rules
def test_canonicalize_text_as_big_vision():
    c = zero_shot.canonicalize_text
    assert c("test_test") == c("test___test") == "test test"
    assert c("test.") == c(" test ") == c("test") == "test"
    assert c("test\ntest") == c("test  test") == "test test"
    assert c("test {}") == "test"
    assert c("test {}", keep="{}") == "test {}" and c(" test  {}...", keep="{}") == "test {}"
    assert c("test {}  {}  {}", keep="{}") == "test {} {} {}"
    assert c("Tench, Tinca_tinca!", keep=",") == "tench, tinca tinca"
    assert c("kite (bird of prey)") == "kite bird of prey"


def test_sticky_eos_and_ascii_lowercase(spm_file):
    assert sticky_eos([5, 6, 1], 5, 0) == [5, 6, 1, 0, 0]
    assert sticky_eos([5, 6, 7, 8, 1], 5, 0) == [5, 6, 7, 8, 1]  # exactly max_len: kept
    assert sticky_eos([5, 6, 7, 8, 9, 1], 5, 1) == [5, 6, 7, 8, 1]  # longer: cut, EOS kept last
    assert ascii_lower("A Photo ÄÖ") == "a photo ÄÖ"  # tf.strings.lower without an encoding
    tok = Tokenizer(spm_file)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    texts = ["a photo of a goldfish.", "A PHOTO of the great white shark and a hen and an ostrich"]
    got = tok.tokenize(texts, 8, pad=1)
    for text, row in zip(texts, got):
        ids = sp.EncodeAsIds(text.lower()) + [sp.eos_id()]
        want = ids[:7] + [ids[-1]] if len(ids) >= 8 else ids + [1] * (8 - len(ids))
        assert row.tolist() == want
    assert got[1][-1] == 1 and len(sp.EncodeAsIds(texts[1].lower())) > 8


def test_prompts_first_alias_or_all():
    p = zero_shot.Prompts(("tench, Tinca tinca", "goldfish"), ("a photo of a {}.", "{}"))
    texts, labels = p.texts()
    assert texts == ["a photo of a tench", "tench", "a photo of a goldfish", "goldfish"]
    assert labels.tolist() == [0, 0, 1, 1] and p.names == ["tench", "goldfish"]
    texts, labels = zero_shot.Prompts(p.classes, p.templates, all_aliases=True).texts()
    assert texts[:4] == ["a photo of a tench", "tench", "a photo of a tinca tinca", "tinca tinca"]
    assert labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_bundled_class_names_and_templates():
    classes, source = zero_shot.read_classes(None)
    assert len(classes) == 1000 and source == "imagenet" and classes[0] == "tench" and classes[999] == "toilet paper"
    for name, n in (("clip", 81), ("clip-best", 8), ("name", 1)):
        templates, _ = zero_shot.read_templates(name)
        assert len(templates) == n and all(zero_shot.canonicalize_text(t, keep="{}").count("{}") == 1 for t in templates)


# ------------------------------------------------------------------ the text tower
@pytest.mark.parametrize("scan,pool,embed", [(False, "last", 32), (True, "last", 32), (False, "map", 0)])
def test_text_tower_matches_numpy(tmp_path, scan, pool, embed):
    from fastvit_jax.zero_shot.text_tower import read_text_tower
    from fastvit_jax.models.text import TextTransformer

    txt = text_tower_flat(3, embed=embed, pool=pool)
    path, _, _ = two_tower_file(tmp_path / "two.npz", txt=txt, scan=scan)
    tower = read_text_tower(path)
    assert tower.config.pool == pool and tower.config.out_dim == 32 and tower.config.max_len == 8
    assert (tower.log_temperature, tower.bias) == (pytest.approx(T), pytest.approx(B))
    tokens = np.random.default_rng(0).integers(0, TXT["vocab"], (3, 8)).astype(np.int32)
    got = np.asarray(TextTransformer(tower.config).apply({"params": tower.params}, tokens))
    np.testing.assert_allclose(got, reference.text_forward(txt, tokens, heads=2, pool=pool), atol=2e-5)


def test_old_files_posemb_added_twice_is_folded(tmp_path):
    from fastvit_jax.zero_shot.text_tower import read_text_tower

    txt = text_tower_flat(4)
    extra = _normal(np.random.default_rng(9), (1, 8, 32), 0.1)
    path, _, _ = two_tower_file(tmp_path / "old.npz", txt={**txt, "Encoder_0/pos_embedding": extra})
    tower = read_text_tower(path)
    np.testing.assert_allclose(tower.params["pos_embedding"], txt["pos_embedding"] + extra, atol=1e-7)


# ------------------------------------------------------------------ zero-shot scores
def _zero_shot(path, spm_file, templates=TEMPLATES, **kw):
    params, config, pre = load_model(path=path)
    prompts = zero_shot.Prompts(tuple(CLASSES), tuple(templates))
    return attach_zero_shot(None, path, params, config, pre, prompts=prompts, tokenizer=str(spm_file),
                            progress=False, **kw)


@pytest.mark.parametrize("scan,bias", [(False, True), (True, False)])
def test_zero_shot_logits_match_numpy(tmp_path, spm_file, cache, scan, bias):
    path, img, txt = two_tower_file(tmp_path / "two.npz", scan=scan, bias=bias)
    notes: list = []
    params, config, _ = _zero_shot(path, spm_file, notes=notes)
    assert config.num_classes == len(CLASSES) and config.l2_normalize
    assert any("padding texts with id 0" in n for n in notes)  # a 48-token vocabulary: not T5's, its own pad
    images = _images()
    got = np.asarray(make_forward(config, None)(params, images))
    feats = reference.forward(img, images, heads=2, pool="map", features=True)
    want = reference.zero_shot_logits(feats, _want_class_embeddings(txt, spm_file, pad=0), T, B if bias else 0.0)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_merged_image_tower_zero_shot(tmp_path, spm_file, cache):
    path, img, txt = two_tower_file(tmp_path / "two.npz")
    params, config, _ = _zero_shot(path, spm_file, text_pad=1)
    images = _images()
    dense = np.asarray(make_forward(config, None)(params, images))
    zero = np.asarray(make_forward(config, make_plan(config, MergeOptions("tome", 0)))(params, images))
    np.testing.assert_array_equal(zero, dense)  # r = 0 is the dense model, bit for bit
    plan = make_plan(config, MergeOptions("tome", 8))
    got = np.asarray(make_forward(config, plan)(params, images))
    feats = reference.forward(img, images, heads=2, pool="map", features=True, plan=reference.plan_ops(plan))
    want = reference.zero_shot_logits(feats, _want_class_embeddings(txt, spm_file, pad=1), T, B)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.allclose(got, dense, atol=1e-3)  # merging changed the image side


def test_class_embeddings_cached_resumed_and_keyed(tmp_path, spm_file, cache, monkeypatch):
    from fastvit_jax.zero_shot.text_tower import read_text_tower

    path, _, txt = two_tower_file(tmp_path / "two.npz")
    tower, tok = read_text_tower(path), Tokenizer(spm_file)
    prompts = zero_shot.Prompts(tuple(CLASSES), tuple(TEMPLATES))
    source = zero_shot.file_identity(path)
    kw = dict(pad=1, source=source, batch_size=5, progress=False)
    plain = zero_shot.class_embeddings(tower, tok, prompts, **kw)  # no cache
    np.testing.assert_allclose(plain, _want_class_embeddings(txt, spm_file), atol=2e-5)

    monkeypatch.setattr(zero_shot, "SAVE_EVERY_S", 0.0)  # save after every batch
    real = interrupt_on_call(monkeypatch, Tokenizer, "tokenize", 3)
    with pytest.raises(KeyboardInterrupt):
        zero_shot.class_embeddings(tower, tok, prompts, cache=cache, **kw)
    monkeypatch.setattr(Tokenizer, "tokenize", real)
    stats: dict = {}
    resumed = zero_shot.class_embeddings(tower, tok, prompts, cache=cache, stats=stats, **kw)
    assert stats["resumed_from"] == 10 and not stats["cached"]  # two batches of 5 were saved
    np.testing.assert_array_equal(resumed, zero_shot.class_embeddings(tower, tok, prompts, cache=tmp_path / "c2", **kw))
    stats = {}
    again = zero_shot.class_embeddings(tower, tok, prompts, cache=cache, stats=stats, **kw)
    assert stats["cached"] and np.array_equal(again, resumed)
    # every setting that produced it is part of the key
    for changed in (dict(pad=0), dict(source={**source, "mtime_ns": 1})):
        stats = {}
        zero_shot.class_embeddings(tower, tok, prompts, cache=cache, stats=stats, **{**kw, **changed})
        assert not stats["cached"], changed
    stats = {}
    zero_shot.class_embeddings(tower, tok, zero_shot.Prompts(prompts.classes, ("{}",)), cache=cache, stats=stats, **kw)
    assert not stats["cached"]


# ------------------------------------------------------------------ the command line
def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_and_predict_zero_shot(tmp_path, spm_file, cache, capsys):
    path, img, txt = two_tower_file(tmp_path / "two.npz", bf16=True)
    classes, templates = _files(tmp_path)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in range(len(CLASSES)):
        (data / f"{label:03d}").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(data / f"{label:03d}" / f"{j}.png")
    flags = ["--checkpoint", path, "--zero-shot", "--tokenizer", spm_file, "--class-names", classes,
             "--templates", templates, "--text-pad", 1]
    code, out, err = _run(capsys, "eval", "--data", data, *flags, "--json", "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    from fastvit_jax.data import Preprocess, image_folder, load_image

    ds = image_folder(data)
    x = np.stack([Preprocess("inception", 32)(load_image(p)) for p, _ in ds.items])
    labels = np.array([lab for _, lab in ds.items])
    import ml_dtypes

    bf = lambda f: {k: np.asarray(v).astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in f.items()}
    t = float(bf({"t": np.float32(T)})["t"])  # the file stores t in bfloat16 too
    want = reference.zero_shot_logits(reference.forward(bf(img), x, heads=2, pool="map", features=True),
                                      _want_class_embeddings(bf(txt), spm_file), t, B)
    assert res["top1"] == pytest.approx(float(np.mean(want.argmax(1) == labels)))
    assert res["zero_shot"] == {"classes": 6, "classes_from": str(classes), "templates": 4,
                                "templates_from": str(templates), "prompts": 24, "all_aliases": False}

    # a sweep over the merged image tower reuses the cached classifier; its r = 0 point is the eval above
    code, out, err = _run(capsys, "sweep", "--data", data, *flags, "--methods", "tome", "--r", "0,4", "--bench-runs", 1,
                          "--out", tmp_path / "sweep", "--json")
    assert code == 0, err
    rows = {r["r"]: r for r in json.loads(out)}
    assert rows[0]["top1"] == res["top1"] and rows[4]["gflops"] < rows[0]["gflops"]

    img_path = ds.items[0][0]
    code, out, err = _run(capsys, "predict", img_path, *flags, "--method", "tome", "--r", 4, "--json")
    assert code == 0, err
    top5 = json.loads(out)[0]["top5"]
    assert [t["label"] for t in top5][:1] == [["tench", *CLASSES[1:]][top5[0]["index"]]]
    plan = make_plan(IMG, MergeOptions("tome", 4))
    logit = reference.zero_shot_logits(reference.forward(bf(img), x[:1], heads=2, pool="map", features=True,
                                                         plan=reference.plan_ops(plan)),
                                       _want_class_embeddings(bf(txt), spm_file), t, B)[0]
    prob = np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
    order = np.argsort(-prob, kind="stable")[:5]
    assert [t["index"] for t in top5] == order.tolist()
    np.testing.assert_allclose([t["prob"] for t in top5], prob[order], atol=1e-4)
    np.testing.assert_allclose([t["sigmoid"] for t in top5], 1 / (1 + np.exp(-logit[order])), atol=1e-4)


def test_zero_shot_refusals_are_one_line(tmp_path, spm_file, cache, capsys):
    path, _, _ = two_tower_file(tmp_path / "two.npz")
    classes, _ = _files(tmp_path)
    bad_templates = tmp_path / "bad.txt"
    bad_templates.write_text("a photo of a {}.\na photo\n")
    not_spm = tmp_path / "x.model"
    not_spm.write_bytes(b"\x00" * 100)
    huge = tmp_path / "huge.model"
    with open(huge, "wb") as f:  # sparse: 65 MiB declared, nothing written
        f.truncate(65 << 20)
    txt_nan = text_tower_flat(1)
    txt_nan["Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel"][0, 0] = np.nan
    nan_path, _, _ = two_tower_file(tmp_path / "nan.npz", txt=txt_nan)
    img_only = tmp_path / "img.npz"
    np.savez(img_only, **{f"params/img/{k}": v for k, v in image_tower_flat()[0].items()})
    cases = [
        ([path, "--zero-shot"], "no tokenizer is known for this file; pass --tokenizer SPM"),
        ([path, "--zero-shot", "--tokenizer", not_spm], "not a SentencePiece model"),
        ([path, "--zero-shot", "--tokenizer", tmp_path / "missing.model"], "tokenizer not found"),
        ([path, "--zero-shot", "--tokenizer", spm_file, "--templates", bad_templates],
         "line 2 ('a photo') should hold the class name's place `{}` exactly once"),
        ([path, "--zero-shot", "--tokenizer", spm_file, "--templates", "clip-bestt"], "neither a file nor a bundled set"),
        ([path, "--zero-shot", "--tokenizer", spm_file, "--text-pad", 99], "--text-pad 99: not a token id"),
        ([img_only, "--zero-shot", "--tokenizer", spm_file], "no text tower"),
        ([path, "--zero-shot", "--tokenizer", huge], "is too large for a SentencePiece model"),
        ([nan_path, "--zero-shot", "--tokenizer", spm_file], "MlpBlock_0/Dense_0/kernel holds 1 NaN"),
        ([path], "add --zero-shot (with --tokenizer SPM) if it is a two-tower file"),
    ]
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    for argv, message in cases:
        code, _, err = _run(capsys, "predict", image, "--checkpoint", *argv, "--class-names", classes)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("fastvit: error: ") and message in last, (argv, err)
        assert "Traceback" not in err


def test_siglip_registry_entries_name_their_tokenizers():
    from fastvit_jax.checkpoints.registry import ALIASES, REGISTRY, TOKENIZERS, entry_for_file

    siglip = {k: e for k, e in REGISTRY.items() if k.startswith("siglip")}
    assert len([k for k in siglip if k.startswith("siglip2_")]) == 15 and len(siglip) == 25
    for name, e in siglip.items():
        assert e.tokenizer in TOKENIZERS.values() and e.config.pool == "map" and e.config.num_classes == 0
        assert (e.text_pad is None) == name.startswith("siglip2_")  # SigLIP 2 pads with the Gemma tokenizer's own id
        assert entry_for_file(f"/somewhere/{e.filename}") is e
    assert REGISTRY[ALIASES["SigLIP2 So400m/14 384"]].config.grid == (27, 27)  # 384 px, VALID conv of 14 px patches
    assert REGISTRY[ALIASES["SigLIP B/16-i18n 256"]].tokenizer == TOKENIZERS["mc4"]


def test_a_file_with_an_official_name_is_that_entry(tmp_path, spm_file, cache, monkeypatch):
    """Its resolution (a VALID patch convolution cuts 34 px to 8 x 4), tokenizer and padding come from the
    registry entry whose official file has that name."""
    import dataclasses

    from fastvit_jax.checkpoints import registry

    path, img, txt = two_tower_file(tmp_path / "tiny_two_tower_34.npz")
    entry = dataclasses.replace(registry.REGISTRY["siglip_base_patch16_224"], name="tiny_two_tower",
                                config=IMG.replace(image_size=34), url="https://example.com/tiny_two_tower_34.npz",
                                tokenizer=str(spm_file), text_pad=1)
    monkeypatch.setitem(registry.REGISTRY, "tiny_two_tower", entry)
    params, config, pre = load_model(path=path)
    assert config.image_size == 34 and config.grid == (8, 8) and pre.size == 34
    prompts = zero_shot.Prompts(tuple(CLASSES), tuple(TEMPLATES))
    params, config, _ = attach_zero_shot(None, path, params, config, pre, prompts=prompts, progress=False)
    images = np.random.default_rng(2).uniform(-1, 1, (2, 34, 34, 3)).astype(np.float32)
    got = np.asarray(make_forward(config, None)(params, images))
    feats = reference.forward(img, images, heads=2, pool="map", features=True)
    np.testing.assert_allclose(got, reference.zero_shot_logits(feats, _want_class_embeddings(txt, spm_file), T, B),
                               atol=1e-4)


# ------------------------------------------------------------------ a transformers SiglipModel folder
def hf_siglip_text(txt):
    """big_vision's txt/ tree -> a transformers SiglipModel's text_model.* state dict."""
    t, sd = "text_model.", {}
    sd[t + "embeddings.token_embedding.weight"] = txt["Embed_0/embedding"]
    sd[t + "embeddings.position_embedding.weight"] = txt["pos_embedding"][0]
    lin = lambda k, b: (k.reshape(k.shape[0], -1).T.copy(), b.reshape(-1).copy())
    for i in range(TXT["depth"]):
        blk, b = f"Encoder_0/encoderblock_{i}/", f"{t}encoder.layers.{i}."
        a = blk + "MultiHeadDotProductAttention_0/"
        for n, p in (("query", "q"), ("key", "k"), ("value", "v")):
            sd[b + f"self_attn.{p}_proj.weight"], sd[b + f"self_attn.{p}_proj.bias"] = lin(txt[a + n + "/kernel"], txt[a + n + "/bias"])
        w = txt[a + "out/kernel"]
        sd[b + "self_attn.out_proj.weight"], sd[b + "self_attn.out_proj.bias"] = w.reshape(-1, w.shape[-1]).T.copy(), txt[a + "out/bias"]
        for ours, theirs in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
            sd[b + theirs + ".weight"], sd[b + theirs + ".bias"] = txt[blk + ours + "/scale"], txt[blk + ours + "/bias"]
        for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[b + f"mlp.{theirs}.weight"] = txt[blk + f"MlpBlock_0/{ours}/kernel"].T.copy()
            sd[b + f"mlp.{theirs}.bias"] = txt[blk + f"MlpBlock_0/{ours}/bias"]
    sd[t + "final_layer_norm.weight"], sd[t + "final_layer_norm.bias"] = txt["Encoder_0/encoder_norm/scale"], txt["Encoder_0/encoder_norm/bias"]
    sd[t + "head.weight"], sd[t + "head.bias"] = txt["head/kernel"].T.copy(), txt["head/bias"]
    return sd


def test_zero_shot_from_a_transformers_siglip_folder(tmp_path, spm_file, cache):
    """SiglipModel folder (vision_model.*, text_model.*, logit_scale, logit_bias, spiece.model,
    text_config with pad_token_id 1): the text half runs in our text tower, tokenised by
    SiglipTokenizer's rules (canonicalised, EOS, padded to max_length with the pad id, the padding
    masked as transformers 5's attention_mask does), the same classifier construction: logits
    against the numpy towers. No --tokenizer, no --text-pad."""
    from test_layouts import hf_siglip_vision

    img_bv, img = image_tower_flat(seed=4)
    txt = text_tower_flat(5)
    sd = {**hf_siglip_vision(img, IMG.depth), **hf_siglip_text(txt), "logit_scale": np.array([T], np.float32),
          "logit_bias": np.array([B], np.float32)}
    folder = siglip_model_folder(tmp_path / "siglip", sd, spm_file)
    params, config, pre = load_model(path=folder)
    prompts = zero_shot.Prompts(tuple(CLASSES), tuple(TEMPLATES))
    notes: list = []
    params, config, _ = attach_zero_shot(None, folder, params, config, pre, prompts=prompts, progress=False, notes=notes)
    assert notes == []  # the folder said everything: tokenizer, padding
    images = _images()
    got = np.asarray(make_forward(config, None)(params, images))
    feats = reference.forward(img, images, heads=2, pool="map", features=True)
    want = reference.zero_shot_logits(feats, _want_class_embeddings(txt, spm_file, pad=1, eos_mask=1), T, B)
    np.testing.assert_allclose(got, want, atol=1e-4)
    unmasked = reference.zero_shot_logits(feats, _want_class_embeddings(txt, spm_file, pad=1), T, B)
    assert np.abs(unmasked - want).max() > 1e-3  # the mask matters: the test would see it missing
    from fastvit_jax.zero_shot.tokenizer import transformers_canonical

    assert transformers_canonical("  A Photo of the  Cat's toy!  ") == "a photo of the cats toy"


def siglip_model_folder(folder, sd, spm_file, *, config=True, spm=True):
    """A transformers SiglipModel folder: model.safetensors, config.json, spiece.model."""
    import shutil

    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}, str(folder / "model.safetensors"))
    if spm:
        shutil.copy(spm_file, folder / "spiece.model")
    text_config = {"hidden_size": 32, "num_attention_heads": 2, "hidden_act": "gelu_pytorch_tanh",
                   "layer_norm_eps": 1e-6, "max_position_embeddings": TXT["max_len"], "pad_token_id": 1,
                   "vocab_size": TXT["vocab"]}
    (folder / "config.json").write_text(json.dumps({
        "model_type": "siglip", **({"text_config": text_config} if config else {}),
        "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "hidden_act": "gelu_pytorch_tanh",
                          "layer_norm_eps": 1e-6, "image_size": 32, "patch_size": 4}}))
    return folder


def test_a_siglip_folder_missing_its_text_pieces_is_refused_in_one_line(tmp_path, spm_file, cache, capsys):
    from test_layouts import hf_siglip_vision

    _, img = image_tower_flat(seed=4)
    sd = {**hf_siglip_vision(img, IMG.depth), **hf_siglip_text(text_tower_flat(5)),
          "logit_scale": np.array([T], np.float32), "logit_bias": np.array([B], np.float32)}
    nan = {**sd, "text_model.final_layer_norm.weight": np.full(32, np.nan, np.float32)}
    classes, _ = _files(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    cases = {"no spiece.model": (siglip_model_folder(tmp_path / "a", sd, spm_file, spm=False), "no spiece.model"),
             "no text_config": (siglip_model_folder(tmp_path / "b", sd, spm_file, config=False), "text_config"),
             "NaN": (siglip_model_folder(tmp_path / "c", nan, spm_file), "NaN")}
    for what, (folder, msg) in cases.items():
        code = main(["predict", str(image), "--checkpoint", str(folder), "--zero-shot", "--class-names", str(classes)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("fastvit: error:") and msg in err, (what, err)


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0-3


def gemma_style_tokenizer_json(folder):
    """tokenizer.json + tokenizer_config.json as a SigLIP 2 folder ships them: Gemma's special ids
    (pad 0, eos 1, bos 2), a post-processor that prepends <bos> (Gemma's default, which big_vision's
    SigLIP 2 does not use), and a word-level vocabulary so the test can write the ids by hand."""
    from tokenizers import Tokenizer as HFTokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    words = sorted({w for c in CLASSES for t in TEMPLATES
                    for w in zero_shot.canonicalize_text(t, keep="{}").replace("{}", zero_shot.canonicalize_text(
                        c.split(",")[0])).split()})
    vocab = {w: i for i, w in enumerate(GEMMA_SPECIALS + words)}
    tok = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
         "eos_token": "<eos>", "pad_token": "<pad>", "model_max_length": TXT["max_len"]}))
    return lambda text: [vocab[w] for w in text.lower().split()]


def test_zero_shot_from_a_siglip2_folder_reads_its_gemma_tokenizer_json(tmp_path, spm_file, cache):
    """A SigLIP 2 SiglipModel folder ships tokenizer.json (Gemma), no spiece.model: texts lower-cased,
    no BOS although the file's post-processor adds one, EOS appended, padded with the tokenizer's
    <pad> (0), not text_config.pad_token_id (1); the padding masked as transformers' attention_mask
    does. Logits against the numpy towers with the ids written by hand."""
    pytest.importorskip("tokenizers")
    from test_layouts import hf_siglip_vision

    _, img = image_tower_flat(seed=4)
    txt = text_tower_flat(5)
    sd = {**hf_siglip_vision(img, IMG.depth), **hf_siglip_text(txt), "logit_scale": np.array([T], np.float32),
          "logit_bias": np.array([B], np.float32)}
    folder = siglip_model_folder(tmp_path / "siglip2", sd, spm_file, spm=False)
    encode = gemma_style_tokenizer_json(folder)
    params, config, pre = load_model(path=folder)
    prompts = zero_shot.Prompts(tuple(CLASSES), tuple(TEMPLATES))
    notes: list = []
    params, config, _ = attach_zero_shot(None, folder, params, config, pre, prompts=prompts, progress=False, notes=notes)
    assert notes == []
    images = _images()
    got = np.asarray(make_forward(config, None)(params, images))
    feats = reference.forward(img, images, heads=2, pool="map", features=True)
    want = reference.zero_shot_logits(feats, _want_class_embeddings(txt, None, pad=0, eos_mask=1, encode=encode), T, B)
    np.testing.assert_allclose(got, want, atol=1e-4)
    with_pad_1 = reference.zero_shot_logits(feats, _want_class_embeddings(txt, None, pad=1, eos_mask=1, encode=encode), T, B)
    assert np.abs(with_pad_1 - want).max() > 1e-3  # the pad id matters: the test would see the wrong one

    from fastvit_jax.zero_shot.tokenizer import JsonTokenizer

    tok = JsonTokenizer(folder / "tokenizer.json")
    assert tok.ids("A Photo of the HEN") == encode("a photo of the hen") + [1]  # lower-cased, no <bos>
    assert (tok.eos_id, tok.pad_id) == (1, 0)


def test_a_bad_tokenizer_json_is_refused_in_one_line(tmp_path, spm_file, cache, capsys):
    pytest.importorskip("tokenizers")
    from test_layouts import hf_siglip_vision

    _, img = image_tower_flat(seed=4)
    sd = {**hf_siglip_vision(img, IMG.depth), **hf_siglip_text(text_tower_flat(5)),
          "logit_scale": np.array([T], np.float32), "logit_bias": np.array([B], np.float32)}
    classes, _ = _files(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    garbled = siglip_model_folder(tmp_path / "a", sd, spm_file, spm=False)
    (garbled / "tokenizer.json").write_text("{not json")
    no_eos = siglip_model_folder(tmp_path / "b", sd, spm_file, spm=False)
    gemma_style_tokenizer_json(no_eos)
    (no_eos / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    siglip1 = siglip_model_folder(tmp_path / "c", sd, spm_file, spm=False)
    gemma_style_tokenizer_json(siglip1)
    (siglip1 / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    for folder, msg in ((garbled, "not a tokenizers tokenizer.json"), (no_eos, "no eos_token '</s>' in the vocabulary"),
                        (siglip1, "tokenizer.json of a SiglipTokenizer")):
        code = main(["predict", str(image), "--checkpoint", str(folder), "--zero-shot", "--class-names", str(classes)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("fastvit: error:") and msg in err, err
