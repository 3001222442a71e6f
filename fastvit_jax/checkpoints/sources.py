"""Where a checkpoint comes from: a local path, a URL (`http(s)://`, `gs://` public buckets through
their https form), a Hugging Face repo (`hf-hub:ORG/NAME[@REVISION]`) or an AugReg file stem.
Remote files are fetched once into the cache (`$FASTVIT_CACHE`, default ~/.cache/fastvit_jax) and
reused without a request. A download is written under a temporary name and renamed only when
complete (its length checked against what the server announced), so an interrupted transfer never
leaves a file that later loads.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fastvit_jax.checkpoints import WEIGHT_FILES
from fastvit_jax.errors import FastViTError
from fastvit_jax.util.cache import cache_dir
from fastvit_jax.util.lock import exclusive

GCS_HTTPS = "https://storage.googleapis.com/"
AUGREG = GCS_HTTPS + "vit_models/augreg/"
# AugReg file stems: {model}-{pretraining recipe}[--{fine-tuning recipe}], e.g.
# S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224
_AUGREG_STEM = re.compile(r"^(R\d*_)?[A-Za-z]+_\d+-i(1k|21k)-\d+ep-lr_[\d.]+-aug_\w+-wd_[\d.]+-do_[\d.]+-sd_[\d.]+"
                          r"(--[\w.]+-steps_\d+k-lr_[\d.]+-res_\d+)?$")
# A Hugging Face repo's files worth fetching: its configs and weights (and a sharded model's shards).
HF_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "model-*.safetensors", *WEIGHT_FILES,
            "spiece.model", "tokenizer.json", "tokenizer_config.json")  # a SiglipModel's tokenizer, for --zero-shot


def cache_path(url: str) -> Path:
    """Where url is cached: its bucket path, since folders reuse file names (sam/ViT-B_16.npz,
    imagenet21k/ViT-B_16.npz, ...)."""
    path = urllib.parse.urlparse(url).path.lstrip("/")
    return cache_dir() / (path or url.rsplit("/", 1)[-1])


def is_remote(spec: str) -> bool:
    return str(spec).startswith(("http://", "https://", "gs://", "hf-hub:")) or is_augreg_stem(spec)


def is_augreg_stem(spec) -> bool:
    return bool(_AUGREG_STEM.match(str(spec).removesuffix(".npz")))


def https_url(spec: str) -> str:
    """gs://bucket/path -> its public https form; AugReg stems -> their file in gs://vit_models/augreg."""
    if spec.startswith("gs://"):
        return GCS_HTTPS + spec[len("gs://"):]
    if is_augreg_stem(spec):
        return AUGREG + spec.removesuffix(".npz") + ".npz"
    return spec


def resolve(spec: str | os.PathLike, progress: bool = True, flag: str = "--checkpoint PATH") -> Path:
    """A local path for any checkpoint spec (downloading it into the cache the first time). flag: how
    the user passes a local copy instead (named when the download fails)."""
    spec_s = str(spec)
    if isinstance(spec, Path) or not is_remote(spec_s) or Path(spec_s).exists():
        return Path(spec)
    if spec_s.startswith("hf-hub:"):
        return hf_snapshot(spec_s[len("hf-hub:"):], progress)
    return download(https_url(spec_s), progress=progress, flag=flag)


def download(url: str, dest: Path | None = None, progress: bool = True, flag: str = "--checkpoint PATH") -> Path:
    """Fetch url into the cache (or dest) with a progress bar; return the local path.

    When the network is unreachable the error names the URL and where to put the file by hand.
    """
    dest = Path(dest) if dest else cache_path(url)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The processes of one multi-process run download the same file: the second waits for the first.
    with exclusive(dest, folder=False, what="download", wait_s=DOWNLOAD_WAIT_S, remove=True):
        if dest.exists():
            return dest
        return _download(url, dest, progress, flag)


DOWNLOAD_WAIT_S = 3600.0


def _download(url: str, dest: Path, progress: bool, flag: str = "--checkpoint PATH") -> Path:
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            md5 = _goog_md5(resp.headers.get("x-goog-hash", ""))  # what Google Cloud Storage says it sent
            from tqdm import tqdm

            got, digest = 0, hashlib.md5()
            with open(tmp, "wb") as f, tqdm(total=total or None, unit="B", unit_scale=True,
                                            desc=dest.name[:40], disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total and got != total:
            raise OSError(f"the transfer ended after {got} of {total} bytes")
        if md5 and digest.digest() != md5:
            raise OSError("the file's MD5 differs from the one the server sent (x-goog-hash): damaged in transfer")
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise FastViTError(f"could not download {url} ({reason}); download it elsewhere and place it "
                           f"at {dest} (or pass {flag})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _goog_md5(header: str) -> bytes | None:
    """The md5 in a `x-goog-hash: crc32c=..., md5=...` header, decoded; None without one."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "md5":
            try:
                return base64.b64decode(value)
            except ValueError:
                return None
    return None


def hf_folder(repo: str) -> Path:
    return cache_dir() / "hf-hub" / repo.replace("@", "/")


def _complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and any((folder / f).exists() for f in WEIGHT_FILES)


def hf_hub_cache() -> Path:
    """Hugging Face's shared cache, where timm, transformers and open_clip keep what they downloaded:
    $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (as huggingface_hub decides)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def shared_snapshot(name: str, revision: str | None) -> Path | None:
    """The snapshot folder of repo `name` at `revision` (a branch, tag or commit; default main) in the
    shared cache, when one with a config and weights is there: read with no request and no package."""
    repo = hf_hub_cache() / f"models--{name.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = repo / "snapshots" / commit if commit else None
    return folder if folder is not None and _complete(folder) else None


def hf_snapshot(repo: str, progress: bool = True) -> Path:
    """A Hugging Face repo's config and weights files (ORG/NAME, or ORG/NAME@REVISION): a folder copied
    by hand into $FASTVIT_CACHE/hf-hub/ORG/NAME[/REVISION], else Hugging Face's shared cache (what
    timm or transformers already fetched: no request), else downloaded into that shared cache
    (huggingface_hub; HF_HOME, HF_HUB_OFFLINE and revisions as it takes them)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?", repo):
        raise FastViTError(f"hf-hub:{repo}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    folder = hf_folder(repo)
    if _complete(folder):
        return folder
    name, _, revision = repo.partition("@")
    shared = shared_snapshot(name, revision or None)
    if shared is not None:
        return shared
    try:
        import huggingface_hub
    except ImportError:
        raise FastViTError(f"hf-hub:{repo} needs huggingface_hub (pip install 'fastvit-jax[hub]'), or download "
                           f"the repo's config.json and model.safetensors into {folder}") from None
    try:
        snapshot = Path(huggingface_hub.snapshot_download(name, revision=revision or None,
                                                          allow_patterns=list(HF_FILES)))
    except Exception as e:  # offline, unknown repo, gated repo: huggingface_hub raises many types
        offline = " (HF_HUB_OFFLINE is set and it is not in the cache)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise FastViTError(f"could not download hf-hub:{repo} from https://huggingface.co/{name} "
                           f"({type(e).__name__}){offline}; download the repo's config.json (and "
                           f"preprocessor_config.json) and model.safetensors elsewhere and place them in {folder}") from None
    if not _complete(snapshot):
        raise FastViTError(f"hf-hub:{repo} has no config.json with model.safetensors, pytorch_model.bin or "
                           f"flax_model.msgpack (looked in {snapshot})")
    return snapshot
