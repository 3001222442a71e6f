"""Every command, walked through bad values: exit 2 and one line `fastvit: error: ...`, never a
traceback; unreadable images are skipped and reported on every path."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, google_checkpoint
from fastvit_jax.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    np.savez(root / "m.npz", **google_checkpoint(TINY))
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for name in ("n01440764_a.png", "n01443537_b.gif", "n01484850_c.tif"):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(root / "imgs" / name)
    (root / "trunc.npz").write_bytes(b"PK\x03\x04" + bytes(40))
    (root / "zero.npz").write_bytes(b"")
    return root


def run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def model(files):
    return ["--checkpoint", files / "m.npz", "--preprocessing", "inception", "--gelu", "tanh"]


BAD = [  # (command line after the model/data arguments, what the one line must say)
    (["eval", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got '0'"),
    (["eval", "--batch-size", "-4"], "expected a positive integer, got '-4'"),
    (["eval", "--limit", "0"], "argument --limit: expected a positive integer"),
    (["eval", "--limit", "-5"], "argument --limit: expected a positive integer"),
    (["eval", "--crop-pct", "-1"], "argument --crop-pct: expected a positive number"),
    (["eval", "--crop-pct", "0"], "argument --crop-pct: expected a positive number"),
    (["eval", "--crop-pct", "1.5"], "expected a fraction in (0, 1]"),
    (["eval", "--method", "tome", "--r", "-2"], "r must be non-negative"),
    (["eval", "--method", "lgtm", "--r", "2", "--window", "1"], "window must be >= 2"),
    (["eval", "--method", "fast"], "argument --method: invalid choice: 'fast'"),
    (["sweep", "--batch-size", "0", "--out", "OUT"], "argument --batch-size"),
    (["sweep", "--r", "16:0", "--out", "OUT"], "empty range"),
    (["sweep", "--methods", "tome,fast", "--out", "OUT"], "bad --methods 'tome,fast'"),
    (["sweep", "--bench-runs", "0", "--out", "OUT"], "argument --bench-runs"),
    (["sharpness", "--num-images", "0"], "argument --num-images"),
    (["sharpness", "--micro-batch", "0"], "argument --micro-batch"),
    (["sharpness", "--num-images", "3", "--micro-batch", "2"], "not a multiple of --micro-batch 2"),
    (["sharpness", "--num-images", "99"], "has 3 images"),
    (["train", "--steps", "0", "--out", "OUT"], "argument --steps"),
    (["analyze", "--num-images", "0", "--out", "OUT"], "argument --num-images"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line(files, capsys, tmp_path, argv, msg):
    argv = [tmp_path / "o" if a == "OUT" else a for a in argv]
    code, _, err = run(capsys, [*argv, *model(files), "--data", files / "imgs"])
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("fastvit: error: ") and msg in err, err


@pytest.mark.parametrize("argv,msg", [
    (["bench", "--model", "vit_cifar_patch4_32", "--batch-size", "0"], "argument --batch-size"),
    (["bench", "--model", "vit_cifar_patch4_32", "--runs", "0"], "argument --runs"),
    (["eval", "--data", "{trunc}"], "not a readable packed image set"),
    (["eval", "--data", "{zero}"], "not a readable packed image set"),
    (["visualize", "{img}", "--out", "x.txt"], "cannot write a .txt image"),
    (["demo", "--configs", "tome"], "use METHOD:R"),
    (["convert", "{trunc}", "out.npz"], "not a readable .npz checkpoint"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["inspect", "{missing}"], "checkpoint not found"),
    (["pack", "{missing}", "out.npz"], "data not found"),
    (["predict", "{img}", "--model", "vit_nonsense"], "unknown model 'vit_nonsense'"),
    (["finetune", "--data", "{imgs}", "--out", "x.npz", "--keep-checkpoints", "0"], "argument --keep-checkpoints"),
    (["analyze", "--data", "{imgs}", "--out", "o", "--r", "4:1"], "empty range"),
    (["eval", "--data", "tfds:"], "use tfds:NAME or tfds:NAME:SPLIT"),
])
def test_more_bad_inputs(files, capsys, tmp_path, argv, msg):
    subs = {"{trunc}": files / "trunc.npz", "{zero}": files / "zero.npz", "{img}": files / "imgs" / "n01440764_a.png",
            "{missing}": tmp_path / "missing", "{imgs}": files / "imgs"}
    argv = [subs.get(a, a) for a in argv]
    extra = [] if argv[0] in ("bench", "demo", "convert", "nonsense", "inspect", "pack") or "--model" in argv else model(files)
    code, _, err = run(capsys, [*argv, *extra])
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and msg in err, err


def test_unreadable_images_are_skipped_and_reported(files, capsys, tmp_path, monkeypatch):
    """A truncated file, a decompression bomb and a damaged packed image: skipped and named; gif and tif count."""
    data = tmp_path / "mixed"
    data.mkdir()
    for p in (files / "imgs").iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    (data / "n01491361_trunc.jpg").write_bytes((files / "imgs" / "n01440764_a.png").read_bytes()[:60])
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "n01494475_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 80 x 80 > 2x the limit: a decompression bomb
    code, out, _ = run(capsys, ["eval", *model(files), "--data", data, "--json", "--no-progress"])
    res = json.loads(out)
    assert code == 0 and res["images"] == 3 and sorted(p.rsplit("/", 1)[-1] for p, _ in res["failed"]) == [
        "n01491361_trunc.jpg", "n01494475_bomb.png"]
    assert all("cannot read image" in why and data.name not in why for _, why in res["failed"])
    code, out, _ = run(capsys, ["pack", data, tmp_path / "p.npz"])
    code, out, _ = run(capsys, ["eval", *model(files), "--data", tmp_path / "p.npz", "--json", "--no-progress"])
    res = json.loads(out)
    assert code == 0 and res["images"] == 3 and len(res["failed"]) == 2 and res["failed"][0][0].startswith(str(tmp_path))


def test_predict_lists_failures(files, capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code, out, err = run(capsys, ["predict", bad, *model(files), "--json"])
    assert code == 2 and out == "" and err == (f"fastvit: error: no readable image: {bad}: "
                                               f"cannot read image (cannot identify image file)\n")
    code, _, err = run(capsys, ["predict", tmp_path / "nosuchimage.jpg", *model(files)])
    assert code == 2 and err == f"fastvit: error: image not found: {tmp_path / 'nosuchimage.jpg'}\n"
    code, out, _ = run(capsys, ["predict", bad, files / "imgs" / "n01440764_a.png", *model(files)])
    assert code == 0 and out.count(str(bad)) == 1


def test_method_none_reports_r_0(files, capsys):
    code, out, _ = run(capsys, ["eval", *model(files), "--data", files / "imgs", "--method", "none", "--r", "8",
                                "--json", "--no-progress"])
    assert code == 0 and json.loads(out)["r"] == 0 and json.loads(out)["plan"]["r"] == 0
    code, out, _ = run(capsys, ["eval", *model(files), "--data", files / "imgs", "--method", "lgtm", "--r", "2",
                                "--reducer", "mctf", "--window", "4", "--no-progress"])
    header, row = out.splitlines()[:2]
    assert code == 0 and header.split()[:3] == ["method", "reducer", "schedule"]
    assert row.split()[:4] == ["lgtm", "mctf", "r", "2"]


def test_limit_spreads_over_a_class_sorted_folder(tmp_path):
    """`--limit N` on class folders keeps the classes (the first N files would all be one class)."""
    from fastvit_jax.data import image_folder

    for cls in ("airplane", "cat", "dog", "frog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = image_folder(tmp_path)
    assert sorted({label for _, label in ds.limit(8).items}) == [0, 1, 2, 3] and len(ds.limit(8)) == 8
    assert len(ds.limit(None)) == len(ds.limit(400)) == 40


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`fastvit inspect FILE | head -c 100`: the pipe closes early; exit 141 (SIGPIPE's), nothing on stderr."""
    import subprocess
    import sys

    from conftest import TINY, google_checkpoint

    np.savez(tmp_path / "t.npz", **google_checkpoint(TINY))
    proc = subprocess.Popen([sys.executable, "-m", "fastvit_jax", "inspect", str(tmp_path / "t.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def test_r_without_method_is_refused_and_method_without_r_noted(capsys):
    from fastvit_jax.cli import main

    code = main(["plan", "--r", "8"])
    _, err = capsys.readouterr()
    assert code == 2 and err == ("fastvit: error: --r 8 needs a merging --method "
                                 "(tome, dfe, lgtm, drop, pitome, tofu, mctf, ppt, atm)\n")
    code = main(["plan", "--method", "tome", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err.count("fastvit: note: --method tome with r = 0 is the dense model") == 1
    assert json.loads(out)["plan"]["r"] == 0


def test_tables_format_rates_alike():
    from fastvit_jax.util.report import format_table

    text = format_table([{"images_per_s": 8.123456, "compile_s": 0.5, "top1": 0.79}, {"images_per_s": 123.456}],
                        ["images_per_s", "compile_s", "top1"])
    assert "8.1 " in text and "123.5" in text and "0.5 " in text and "0.7900" in text and "8.1234" not in text
