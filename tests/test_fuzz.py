"""Property-based fuzzing of what comes from outside: checkpoint files in real layouts (Google .npz,
a timm Hugging Face folder: model.safetensors + config.json), images in every mode PIL opens, and
plan files. Every mutated input must end in one of two ways: refused with one FastViTError line, or
loaded with outputs equal to the unmutated file's; only mutations no reader can detect (a value
byte of an uncompressed tensor, a dtype change, a missing optional piece) may load with other
outputs, and those must be finite. Never another exception, and never memory beyond the ceiling.

FASTVIT_FUZZ_EXAMPLES scales the number of examples per test (BENCHMARKS records a long run)."""

import functools
import io
import json
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from conftest import TINY, google_checkpoint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.checkpoints import timm as timm_layout
from fastvit_jax.util.tree import unflatten
from fastvit_jax.errors import FastViTError
from fastvit_jax.models.forward import make_forward

EXAMPLES = int(os.environ.get("FASTVIT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PEAK_BYTES = 300 << 20  # what one load of a tiny model may allocate, whatever the file says
IMAGES = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _forward(config):
    return make_forward(config)


def load_outcome(path):
    """("refused", message) or ("loaded", logits); anything else fails the test."""
    tracemalloc.start()
    try:
        params, config = checkpoint.load(path)
        logits = np.asarray(_forward(config)(params, IMAGES[..., :3] if config.image_size == 32 else
                                             np.zeros((1, config.image_size, config.image_size, 3), np.float32)))
        return "loaded", logits
    except FastViTError as e:
        assert "\n" not in str(e) and str(e), repr(e)
        return "refused", str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_BYTES, f"loading allocated {peak >> 20} MiB"


# ---------------------------------------------------------------- the files
@functools.lru_cache(maxsize=1)
def _flat():
    return google_checkpoint(TINY, seed=3)


def _npz_bytes(flat) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **flat)
    return buf.getvalue()


def _safetensors_bytes(sd: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sd.items()})


TIMM_CONFIG = {"architecture": "vit_tiny_test", "num_classes": 10,
               "model_args": {"embed_dim": 32, "depth": 4, "num_heads": 2, "patch_size": 4, "img_size": 32},
               "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.9,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 10}}


def _timm_sd():
    return timm_layout.to_state_dict(unflatten(dict(_flat())))


@functools.lru_cache(maxsize=2)
def _reference(kind):
    """Logits of the unmutated file."""
    import tempfile

    folder = tempfile.mkdtemp()
    path = _write(kind, folder, _npz_bytes(_flat()) if kind == "npz" else _safetensors_bytes(_timm_sd()),
                  json.dumps(TIMM_CONFIG).encode())
    status, logits = load_outcome(path)
    assert status == "loaded", logits
    return logits


def _write(kind, folder, weights: bytes, config: bytes = b""):
    from pathlib import Path

    folder = Path(folder)
    if kind == "npz":
        (folder / "model.npz").write_bytes(weights)
        return folder / "model.npz"
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_bytes(config)
    return folder


def _check(kind, tmp_path, weights: bytes, config: bytes, may_differ: bool):
    for old in tmp_path.iterdir():
        old.unlink()
    status, got = load_outcome(_write(kind, tmp_path, weights, config))
    event(f"{status}{' (may differ)' if may_differ else ''}")
    if status == "loaded" and not np.isfinite(got).all():
        # finite weights can still overflow (a flipped exponent bit): evaluation stops in one line
        from fastvit_jax.studies.evaluate import check_finite_logits

        assert may_differ
        with pytest.raises(FastViTError, match="NaN/Inf logits"):
            check_finite_logits(got)
        return "refused"
    if status == "loaded":
        if not may_differ:
            np.testing.assert_array_equal(got, _reference(kind))
    return status


# ---------------------------------------------------------------- mutations
KEYS = sorted(google_checkpoint(TINY, seed=3))


def _mutate_tree(flat: dict, op: str, key: str, data) -> tuple[dict, bool]:
    """(mutated flat dict, whether outputs may differ when it loads)."""
    flat = dict(flat)
    a = flat[key]
    if op == "delete":
        del flat[key]
        return flat, key.endswith("pos_embedding")  # without it a file is a sincos2d model: undetectable
    if op == "rename":
        flat[key + data.draw(st.sampled_from(["_x", "/extra", "0"]))] = flat.pop(key)
        return flat, False
    if op == "reshape":
        shapes = [a.reshape(-1), a.reshape(1, -1), a[..., :-1] if a.shape[-1] > 1 else a[..., None]]
        flat[key] = data.draw(st.sampled_from(shapes))
        return flat, False
    if op == "dtype":
        dtype = data.draw(st.sampled_from([np.float16, np.float64, np.int32, np.int8, np.bool_, np.complex64]))
        flat[key] = a.astype(dtype)
        return flat, dtype in (np.float16, np.float64)  # a half/double copy is still the model; others are refused
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))  # op == "nonfinite"
    b = np.array(a, copy=True).reshape(-1)
    b[data.draw(st.integers(0, b.size - 1))] = value
    flat[key] = b.reshape(a.shape)
    return flat, False


def _mutate_bytes(blob: bytes, data, protected: int = 0) -> tuple[bytes, int]:
    """Truncate, or flip one byte; returns (bytes, offset touched)."""
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(blob) - 1))
        return blob[:cut], cut
    at = data.draw(st.integers(0, len(blob) - 1))
    flip = data.draw(st.integers(1, 255))
    return blob[:at] + bytes([blob[at] ^ flip]) + blob[at + 1:], at


TREE_OPS = ["delete", "rename", "reshape", "dtype", "nonfinite"]


@FUZZ
@given(data=st.data())
def test_fuzz_google_npz(tmp_path, data):
    if data.draw(st.booleans()):
        flat, may_differ = _mutate_tree(_flat(), data.draw(st.sampled_from(TREE_OPS)), data.draw(st.sampled_from(KEYS)),
                                        data)
        status = _check("npz", tmp_path, _npz_bytes(flat), b"", may_differ)
        if any(np.asarray(v).dtype.kind != "f" or not np.isfinite(v).all() for v in flat.values()):
            assert status == "refused"  # NaN/Inf or non-float weights are never evaluated
    else:
        blob, _ = _mutate_bytes(_npz_bytes(_flat()), data)
        # every member of a zip carries a CRC: a flipped byte is caught, so outputs may not differ
        _check("npz", tmp_path, blob, b"", may_differ=False)


@FUZZ
@given(data=st.data())
def test_fuzz_timm_folder(tmp_path, data):
    sd = _timm_sd()
    config = json.dumps(TIMM_CONFIG).encode()
    what = data.draw(st.sampled_from(["tree", "bytes", "config"]))
    if what == "tree":
        key = data.draw(st.sampled_from(sorted(sd)))
        sd, may_differ = _mutate_tree(sd, data.draw(st.sampled_from(TREE_OPS)), key, data)
        _check("timm", tmp_path, _safetensors_bytes(sd), config, may_differ)
    elif what == "bytes":
        blob = _safetensors_bytes(sd)
        blob, at = _mutate_bytes(blob, data)
        header_end = 8 + struct.unpack("<Q", _safetensors_bytes(sd)[:8])[0]
        # a value byte of a tensor has no checksum: it may load, with other (finite) outputs
        _check("timm", tmp_path, blob, config, may_differ=at >= header_end and len(blob) == header_end + (
            len(_safetensors_bytes(sd)) - header_end))
    else:
        cfg = json.loads(config)
        section = data.draw(st.sampled_from(["model_args", "pretrained_cfg", None]))
        target = cfg if section is None else cfg[section]
        field = data.draw(st.sampled_from(sorted(target)))
        target[field] = data.draw(st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                                            st.text(max_size=5), st.lists(st.integers(-3, 300), max_size=4),
                                            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        text = json.dumps(cfg).encode()
        if data.draw(st.booleans()):
            text, _ = _mutate_bytes(text, data)
        # a changed preprocessing field (mean, crop_pct, ...) is a valid file that runs differently
        _check("timm", tmp_path, _safetensors_bytes(sd), text, may_differ=True)


# ---------------------------------------------------------------- images
def _image_bytes(kind: str, rng) -> tuple[bytes, str]:
    from PIL import Image

    pixels = rng.integers(0, 256, (13, 17, 4), dtype=np.uint8)
    rgb = Image.fromarray(pixels[..., :3], "RGB")
    buf = io.BytesIO()
    if kind == "cmyk":
        Image.fromarray(pixels, "CMYK").save(buf, "JPEG")
    elif kind == "i16":
        Image.fromarray(rng.integers(0, 65535, (13, 17), dtype=np.uint16)).save(buf, "PNG")
    elif kind == "palette":
        rgb.convert("P").save(buf, "PNG")
    elif kind == "alpha":
        Image.fromarray(pixels, "RGBA").save(buf, "PNG")
    elif kind == "la":
        rgb.convert("LA").save(buf, "PNG")
    elif kind == "bilevel":
        rgb.convert("1").save(buf, "PNG")
    elif kind == "float":
        Image.fromarray(rng.standard_normal((13, 17)).astype(np.float32), "F").save(buf, "TIFF")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated 90 degrees: decoded as stored, as timm and big_vision read it
        rgb.save(buf, "JPEG", exif=exif)
    elif kind == "tiny":
        Image.fromarray(pixels[:1, :1, :3], "RGB").save(buf, "PNG")
    elif kind == "huge":  # large but valid: 6000 x 4000 of one colour compresses to a few kB
        Image.new("RGB", (6000, 4000), (10, 20, 30)).save(buf, "PNG")
    else:
        rgb.save(buf, kind.upper())
    return buf.getvalue(), "tif" if kind == "float" else "jpg" if kind in ("cmyk", "exif", "jpeg") else "png"


IMAGE_KINDS = ["png", "jpeg", "bmp", "gif", "webp", "cmyk", "i16", "palette", "alpha", "la", "bilevel", "float",
               "exif", "tiny", "huge"]


@FUZZ
@given(kind=st.sampled_from(IMAGE_KINDS), data=st.data())
def test_fuzz_images(tmp_path, kind, data):
    """Every mode decodes to finite (size, size, 3) inputs for every preprocessing family, or the image
    is refused in one line; damaged bytes likewise."""
    from fastvit_jax.data import Preprocess, load_image

    blob, ext = _image_bytes(kind, np.random.default_rng(data.draw(st.integers(0, 3))))
    if kind != "huge" and data.draw(st.booleans()):
        blob, _ = _mutate_bytes(blob, data)
    path = tmp_path / f"x.{ext}"
    path.write_bytes(blob)
    family = data.draw(st.sampled_from(["inception", "deit", "crop"]))
    try:
        x = Preprocess(family, 24)(load_image(path))
    except FastViTError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        event("refused")
        return
    event("decoded")
    assert x.shape == (24, 24, 3) and x.dtype == np.float32 and np.isfinite(x).all()


# ---------------------------------------------------------------- plan files
@functools.lru_cache(maxsize=1)
def _plan_text():
    import tempfile
    from pathlib import Path

    from fastvit_jax.merge.options import MergeOptions
    from fastvit_jax.merge.plan import make_plan
    from fastvit_jax.checkpoints.plan_file import save_plan

    path = Path(tempfile.mkdtemp()) / "p.json"
    save_plan(path, TINY, make_plan(TINY, MergeOptions("tome", 3)))
    return path.read_text()


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix


@FUZZ
@given(data=st.data())
def test_fuzz_plan_files(tmp_path, data):
    from fastvit_jax.checkpoints.plan_file import load_plan_options

    record = json.loads(_plan_text())
    if data.draw(st.booleans()):
        where = data.draw(st.sampled_from(sorted(_leaves(record))))
        node = record
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = data.draw(st.one_of(
            st.none(), st.booleans(), st.integers(-10, 10**9), st.floats(allow_nan=True), st.text(max_size=6),
            st.lists(st.integers(-2, 300), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        text = json.dumps(record).encode()
    else:
        text, _ = _mutate_bytes(_plan_text().encode(), data)
    path = tmp_path / "p.json"
    path.write_bytes(text)
    try:
        load_plan_options(path, TINY)
        event("loaded")
    except FastViTError as e:
        assert "\n" not in str(e) and str(e)
        event("refused")


# ---------------------------------------------------------------- tokenizers and class-name files
@functools.lru_cache(maxsize=1)
def _spm_bytes():
    import sentencepiece as spm

    out = io.BytesIO()
    lines = ["a photo of a tench", "a bad photo of the goldfish", "itap of a hen"] * 30
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=30, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


@FUZZ
@given(data=st.data())
def test_fuzz_tokenizer_and_prompt_files(tmp_path, data):
    """A damaged SentencePiece model, class-name or template file: one line, or it works."""
    from fastvit_jax import zero_shot
    from fastvit_jax.zero_shot.tokenizer import Tokenizer

    path = tmp_path / "t.model"
    path.write_bytes(_mutate_bytes(_spm_bytes(), data)[0])
    try:
        tokens = Tokenizer(path).tokenize(["a photo of a tench", ""], 8, 0)
        assert tokens.shape == (2, 8)
        event("tokenizer loaded")
    except FastViTError as e:
        assert "\n" not in str(e) and str(e)
        event("tokenizer refused")
    text, _ = _mutate_bytes("tench, Tinca tinca\ngoldfish\n\na photo of a {}.\n".encode(), data)
    (tmp_path / "lines.txt").write_bytes(text)
    for read in (zero_shot.read_classes, zero_shot.read_templates):
        try:
            lines, _ = read(str(tmp_path / "lines.txt"))
            zero_shot.Prompts(lines, ("{}",)).texts() if read is zero_shot.read_classes else \
                zero_shot.Prompts(("x",), lines).texts()
        except FastViTError as e:
            assert "\n" not in str(e) and str(e)


# ---------------------------------------------------------------- bombs
@pytest.mark.slow
def test_npz_bomb_refused_before_it_inflates(tmp_path):
    """A 1 MB .npz whose embedding/kernel member inflates to 768 MiB (a declared shape far beyond the
    model's) is refused from its headers, and the process never holds the inflated member."""
    import subprocess
    import sys

    flat = google_checkpoint(TINY)
    np.savez(tmp_path / "ok.npz", **flat)
    bomb = tmp_path / "bomb.npz"
    shape = (4, 4, 3, 4 << 20)  # float32: 768 MiB of zeros
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, value in flat.items():
            if key != "embedding/kernel":
                with zf.open(key + ".npy", "w") as f:
                    np.lib.format.write_array(f, value)
        with zf.open("embedding/kernel.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            zeros = bytes(64 << 20)
            for _ in range(12):
                f.write(zeros)
    assert bomb.stat().st_size < 4 << 20
    probe = ("import resource, sys\nfrom fastvit_jax.checkpoints import checkpoint\nfrom fastvit_jax.errors import FastViTError\n"
             "try:\n    checkpoint.load(sys.argv[1]); print('loaded')\nexcept FastViTError as e:\n    print(e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    runs = {name: subprocess.run([sys.executable, "-c", probe, str(tmp_path / name)], capture_output=True, text=True,
                                 check=True).stdout.splitlines() for name in ("ok.npz", "bomb.npz")}
    assert runs["ok.npz"][0] == "loaded"
    assert "decompression bomb" in runs["bomb.npz"][0] and "bomb.npz" in runs["bomb.npz"][0]
    peak_kib = {name: int(out[-1]) for name, out in runs.items()}
    assert peak_kib["bomb.npz"] <= peak_kib["ok.npz"] + 300 * 1024, peak_kib


def test_declared_ceiling_in_every_zip_reader(tmp_path):
    """The ceiling is read from zip headers too (PyTorch's format is a zip): a member whose header
    declares far more than is stored is refused without inflating it."""
    from fastvit_jax.util.untrusted import check_zip

    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/0", bytes(200 << 20))
    with zipfile.ZipFile(path) as zf, pytest.raises(FastViTError, match="decompression bomb"):
        check_zip(path, zf)


def test_json_ceiling(tmp_path):
    from fastvit_jax.util.untrusted import MAX_JSON_BYTES, read_json

    big = tmp_path / "config.json"
    with open(big, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(FastViTError, match="larger than any"):
        read_json(big, "Hugging Face config")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(FastViTError, match="not valid JSON"):
        read_json(deep)
