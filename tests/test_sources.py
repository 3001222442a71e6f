"""Checkpoints by URL, gs://, hf-hub: and AugReg stem: fetched once into the cache and reused without a
request; an interrupted transfer leaves no file that later loads; offline gives one line naming
the source and where to put the files."""

import http.server
import json
import threading

import numpy as np
import pytest

from conftest import TINY, google_checkpoint
from fastvit_jax.checkpoints import checkpoint
from fastvit_jax.checkpoints import sources
from fastvit_jax.cli import main
from fastvit_jax.errors import FastViTError


class _Server:
    """127.0.0.1 server of one file; `cut` bytes: announce the whole length, send that many, close."""

    def __init__(self, payload: bytes):
        self.payload, self.cut, self.requests, self.md5 = payload, None, 0, None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.payload)))
                if owner.md5:
                    self.send_header("x-goog-hash", f"crc32c=AAAAAA==, md5={owner.md5}")
                self.end_headers()
                self.wfile.write(owner.payload[:owner.cut] if owner.cut else owner.payload)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/ti.npz"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "ti.npz", **google_checkpoint(TINY))
    server = _Server((tmp_path / "ti.npz").read_bytes())
    yield server
    server.close()


def test_url_fetched_once_and_reused(served, tmp_path, capsys):
    params, config = checkpoint.load(served.url)
    assert config == checkpoint.load(tmp_path / "ti.npz")[1] and served.requests == 1
    assert sources.cache_path(served.url) == tmp_path / "cache" / "models" / "ti.npz"
    code = main(["inspect", served.url, "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["config"]["width"] == 32 and served.requests == 1  # from the cache


def test_interrupted_download_leaves_nothing_and_rerun_completes(served, tmp_path, capsys):
    served.cut = 2000
    code = main(["inspect", served.url])
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("fastvit:")]  # beside the progress bar
    assert code == 2 and len(errors) == 1 and "transfer ended after 2000 of" in errors[0]
    assert str(sources.cache_path(served.url)) in err
    assert not list((tmp_path / "cache").rglob("*.npz*"))  # neither the file nor a partial one
    served.cut = None
    assert checkpoint.load(served.url)[1].width == 32 and served.requests == 2


def test_gs_and_augreg_names_map_to_the_public_bucket():
    stem = "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224"
    assert sources.https_url("gs://vit_models/sam/ViT-B_16.npz") == \
        "https://storage.googleapis.com/vit_models/sam/ViT-B_16.npz"
    assert sources.https_url(stem) == f"https://storage.googleapis.com/vit_models/augreg/{stem}.npz"
    assert sources.is_augreg_stem("R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1")
    assert not sources.is_augreg_stem("vit_base_patch16_224")


def test_unreachable_url_names_url_and_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    code = main(["inspect", "gs://vit_models/no-such-bucket-here/x.npz".replace("gs://", "http://127.0.0.1:9/")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "could not download http://127.0.0.1:9/" in err
    assert str(tmp_path / "cache") in err


def test_hf_hub_from_the_cache_and_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["inspect", "hf-hub:google/vit-nothing-here"])
    _, err = capsys.readouterr()
    folder = tmp_path / "cache" / "hf-hub" / "google" / "vit-nothing-here"
    assert code == 2 and err.count("\n") == 1 and "hf-hub:google/vit-nothing-here" in err and str(folder) in err
    with pytest.raises(FastViTError, match="expected hf-hub:ORG/NAME"):
        sources.resolve("hf-hub:no-slash")
    # files placed by hand where the message says are used without a request
    from test_layouts import HF_CONFIG, _folder, hf_vit

    _folder(folder, {"model.safetensors": hf_vit(google_checkpoint(TINY.replace(depth=3)), 3)})
    params, config = checkpoint.load("hf-hub:google/vit-nothing-here")
    assert (config.depth, config.ln_eps) == (3, HF_CONFIG["layer_norm_eps"])


def test_hf_hub_reads_the_shared_hugging_face_cache_offline(tmp_path, monkeypatch):
    """A repo timm or transformers already fetched sits in HF_HOME/hub as huggingface_hub lays it out
    (models--ORG--NAME/{refs/main, snapshots/COMMIT/...}): read from there, with HF_HUB_OFFLINE=1 and
    no download attempted (huggingface_hub cannot even be imported here); a revision picks its ref."""
    import sys

    from test_layouts import _folder, hf_vit

    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # importing it would raise
    repo = tmp_path / "hf" / "hub" / "models--google--vit-cached"
    for ref, commit, depth in (("main", "a" * 40, 3), ("v2", "b" * 40, 2)):
        _folder(repo / "snapshots" / commit, {"model.safetensors": hf_vit(google_checkpoint(TINY.replace(depth=depth)), depth)})
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    assert checkpoint.load("hf-hub:google/vit-cached")[1].depth == 3
    assert checkpoint.load("hf-hub:google/vit-cached@v2")[1].depth == 2
    assert checkpoint.load("hf-hub:google/vit-cached@" + "b" * 40)[1].depth == 2  # a commit needs no ref
    assert sources.resolve("hf-hub:google/vit-cached") == repo / "snapshots" / ("a" * 40)
    with pytest.raises(FastViTError, match="huggingface_hub"):  # not cached: the one line says what to do
        sources.resolve("hf-hub:google/vit-elsewhere")


def test_augreg_index_from_the_cached_csv_and_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "download", lambda url, **kw: (_ for _ in ()).throw(
        FastViTError(f"could not download {url} (offline)")))
    code = main(["models", "--augreg", "--json"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 0 and "the full AugReg index is not here" in err and "index.csv" in err
    assert any(r["file"].startswith("B_16-i21k-300ep") and r["adapt_resolution"] == 384 for r in rows)
    from fastvit_jax.checkpoints.augreg import INDEX_URL

    path = sources.cache_path(INDEX_URL)
    path.parent.mkdir(parents=True)
    header = ("name,ds,epochs,lr,aug,wd,do,sd,best_val,final_val,final_test,adapt_ds,adapt_lr,adapt_steps,"
              "adapt_resolution,adapt_final_val,adapt_final_test,params,infer_samples_per_sec,filename,adapt_filename")
    stem = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    path.write_text(header + "\n" + f"Ti/16,i21k,300,0.001,none,0.03,0.0,0.0,0.5,0.5,0.5,cifar100,0.01,10000,224,"
                                     f"0.88,0.8812,5.7,3000,{stem},{stem}--cifar100-steps_10k-lr_0.01-res_224\n")
    code = main(["models", "--augreg", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and json.loads(out) == [{
        "name": "Ti/16", "ds": "i21k", "adapt_ds": "cifar100", "adapt_resolution": 224, "adapt_final_test": 0.8812,
        "file": f"{stem}--cifar100-steps_10k-lr_0.01-res_224"}]
    assert sources.is_augreg_stem(json.loads(out)[0]["file"])


@pytest.mark.slow
def test_second_process_compiles_nothing_it_compiled_before(tmp_path):
    """The persistent compilation cache: a second `fastvit bench` of the same plans reads every
    compiled program back (counted by JAX's cache events, not timed)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # not the suite's cache
    env.update(FASTVIT_COMPILE_CACHE=str(tmp_path / "xla"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    argv = [sys.executable, "-m", "fastvit_jax", "bench", "--model", "vit_cifar_patch4_32", "--method", "tome",
            "--r", "4", "--runs", "1", "--batch-size", "2", "--json"]
    runs = [json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    assert [runs[0][k]["compiled_from"] for k in ("dense", "merged")] == ["compiled", "compiled"]
    assert [runs[1][k]["compiled_from"] for k in ("dense", "merged")] == ["cache", "cache"]
    off = subprocess.run(argv + ["--compile-cache", "off"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(off.stdout)["merged"]["compiled_from"] == "off"


def test_md5_from_the_bucket_is_checked(served, tmp_path, capsys):
    """Google Cloud Storage sends each object's MD5 (x-goog-hash): a file that differs is refused
    and nothing is left in the cache; the right MD5 loads."""
    import base64
    import hashlib

    served.md5 = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    code = main(["inspect", served.url])
    _, err = capsys.readouterr()
    assert code == 2 and "MD5 differs" in err and not list((tmp_path / "cache").rglob("*.npz*"))
    served.md5 = base64.b64encode(hashlib.md5(served.payload).digest()).decode()
    assert checkpoint.load(served.url)[1].width == 32


def test_paligemma_files_are_refused(tmp_path):
    """A PaliGemma file's image tower runs without pooling into the language model: refused in one
    line rather than pooled silently."""
    from conftest import google_checkpoint as flat_of

    two = {f"params/img/{k}": v for k, v in flat_of(TINY.replace(pool="gap", num_classes=16)).items()}
    two["params/llm/embedder/input_embedding"] = np.ones((8, 16), np.float32)
    np.savez(tmp_path / "pg.npz", **two)
    with pytest.raises(FastViTError, match="a PaliGemma file"):
        checkpoint.load(tmp_path / "pg.npz")
