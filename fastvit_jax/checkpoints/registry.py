"""Named models (timm-style names) -> architecture, preprocessing and the official checkpoint URL."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from fastvit_jax.config import ViTConfig, variant_config
from fastvit_jax.errors import FastViTError

GCS = "https://storage.googleapis.com/vit_models"
BIG_VISION = "https://storage.googleapis.com/big_vision"

# AugReg recipes that timm picked as the default ImageNet-1k fine-tunes (Steiner et al. 2021).
_AUGREG_I21K = {
    "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0",
    "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "B/32": "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0",
    "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "L/16": "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
}
_AUGREG_FT = {
    ("Ti/16", 224): "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    ("Ti/16", 384): "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    ("S/32", 224): "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    ("S/32", 384): "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    ("S/16", 224): "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    ("S/16", 384): "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    ("B/32", 224): "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    ("B/32", 384): "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    ("B/16", 224): "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    ("B/16", 384): "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    ("L/16", 224): "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    ("L/16", 384): "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
}
_TIMM_SIZE = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}
_AUGREG_MORE = {  # (timm name, config, file stem): ViT-B/8 and the AugReg hybrids
    ("vit_base_patch8_224", variant_config("B/8", 224)):
        "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    ("vit_tiny_r_s16_p8_224", variant_config("Ti/8", 224, resnet=())):
        "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    ("vit_tiny_r_s16_p8_384", variant_config("Ti/8", 384, resnet=())):
        "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    ("vit_small_r26_s32_224", variant_config("S/1", 224, resnet=(2, 2, 2, 2))):
        "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.03-res_224",
    ("vit_small_r26_s32_384", variant_config("S/1", 384, resnet=(2, 2, 2, 2))):
        "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    ("vit_large_r50_s32_224", variant_config("L/1", 224, resnet=(3, 4, 6, 3))):
        "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    ("vit_large_r50_s32_384", variant_config("L/1", 384, resnet=(3, 4, 6, 3))):
        "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
}
# The original ViT paper's files (Dosovitskiy et al. 2021): Google name -> (config, timm-style name).
_R50_B16 = dict(resnet=(3, 4, 9))
_ORIGINAL_FT = {  # gs://vit_models/imagenet21k+imagenet2012/ (fine-tuned on ImageNet-1k)
    "ViT-B_16": (variant_config("B/16", 384), "vit_base_patch16_384_orig"),
    "ViT-B_16-224": (variant_config("B/16", 224), "vit_base_patch16_224_orig"),
    "ViT-B_32": (variant_config("B/32", 384), "vit_base_patch32_384_orig"),
    "ViT-L_16": (variant_config("L/16", 384), "vit_large_patch16_384_orig"),
    "ViT-L_16-224": (variant_config("L/16", 224), "vit_large_patch16_224_orig"),
    "ViT-L_32": (variant_config("L/32", 384), "vit_large_patch32_384_orig"),
    "R50+ViT-B_16": (variant_config("B/1", 384, **_R50_B16), "vit_base_r50_s16_384_orig"),
}
_ORIGINAL_I21K = {  # gs://vit_models/imagenet21k/ (21843 classes, tanh representation layer)
    "ViT-B_16": (variant_config("B/16", 224, pre_logits=768), "vit_base_patch16_224_in21k_orig"),
    "ViT-B_32": (variant_config("B/32", 224, pre_logits=768), "vit_base_patch32_224_in21k_orig"),
    "ViT-L_16": (variant_config("L/16", 224, pre_logits=1024), "vit_large_patch16_224_in21k_orig"),
    "ViT-L_32": (variant_config("L/32", 224, pre_logits=1024), "vit_large_patch32_224_in21k_orig"),
    "ViT-H_14": (variant_config("H/14", 224, pre_logits=1280), "vit_huge_patch14_224_in21k_orig"),
    "R50+ViT-B_16": (variant_config("B/1", 224, pre_logits=768, **_R50_B16), "vit_base_r50_s16_224_in21k_orig"),
}
# Google's own names for the AugReg fine-tunes, as models_vit's configs call them.
_GOOGLE_NAMES = {"R+ViT-Ti_16": "vit_tiny_r_s16_p8_224", "R26+ViT-S_32": "vit_small_r26_s32_224",
                 "R50+ViT-L_32": "vit_large_r50_s32_224", "ViT-B_8": "vit_base_patch8_224"}

# big_vision's tokenizers (pp/ops_text.py KNOWN_TOKENIZERS, the SigLIP 2 configs' "gemma").
TOKENIZERS = {
    "c4_en": "https://storage.googleapis.com/t5-data/vocabs/cc_en.32000/sentencepiece.model",
    "mc4": "https://storage.googleapis.com/t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
    "gemma": f"{BIG_VISION}/gemma_tokenizer.model",
}
_SIGLIP1 = {  # (variant, res) -> file stem in gs://big_vision/siglip (the SigLIP colab's table)
    ("B/16", 224): "webli_en_b16_224_63724782", ("B/16", 256): "webli_en_b16_256_60500360",
    ("B/16", 384): "webli_en_b16_384_68578854", ("B/16", 512): "webli_en_b16_512_68580893",
    ("L/16", 256): "webli_en_l16_256_60552751", ("L/16", 384): "webli_en_l16_384_63634585",
    ("So400m/14", 224): "webli_en_so400m_224_57633886", ("So400m/14", 384): "webli_en_so400m_384_58765454",
}
_SIGLIP1_I18N = {("B/16", 256): "webli_i18n_b16_256_66117334", ("So400m/16", 256): "webli_i18n_so400m_16_256_78061115"}
_SIGLIP2 = (("B/32", 256), ("B/16", 224), ("B/16", 256), ("B/16", 384), ("B/16", 512), ("L/16", 256), ("L/16", 384),
            ("L/16", 512), ("So400m/14", 224), ("So400m/14", 384), ("So400m/16", 256), ("So400m/16", 384),
            ("So400m/16", 512), ("g-opt/16", 256), ("g-opt/16", 384))
_SIGLIP_SIZE = {"B": "base", "L": "large", "So400m": "so400m", "g-opt": "giant_opt"}


def _siglip_rows():
    """(name, variant, res, url, tokenizer) of every SigLIP and SigLIP 2 (non-NaFlex) two-tower file."""
    for (variant, res), stem in _SIGLIP1.items():
        size, patch = variant.split("/")
        yield f"siglip_{_SIGLIP_SIZE[size]}_patch{patch}_{res}", variant, res, f"{BIG_VISION}/siglip/{stem}.npz", "c4_en"
    for (variant, res), stem in _SIGLIP1_I18N.items():
        size, patch = variant.split("/")
        yield (f"siglip_{_SIGLIP_SIZE[size]}_patch{patch}_{res}_i18n", variant, res,
               f"{BIG_VISION}/siglip/{stem}.npz", "mc4")
    for variant, res in _SIGLIP2:
        size, patch = variant.split("/")
        stem = f"siglip2_{size.lower()}{patch}_{res}"
        yield f"siglip2_{_SIGLIP_SIZE[size]}_patch{patch}_{res}", variant, res, f"{BIG_VISION}/siglip2/{stem}.npz", "gemma"


_SIGLIP = tuple(_siglip_rows())


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ViTConfig
    preprocessing: str  # a family of data.FAMILIES
    url: str | None  # official file; None when weights come only through checkpoints_convert
    label_set: str = "imagenet1k"  # "imagenet1k" | "imagenet21k"
    crop_pct: float = 0.9  # deit and crop preprocessing only
    note: str = ""
    bundled: str | None = None  # weights shipped in fastvit_jax/assets (used when no --checkpoint)
    tokenizer: str | None = None  # two-tower files: the text tower's SentencePiece model (URL)
    text_pad: int | None = None  # the id texts were padded with in training; None: the tokenizer's own pad

    @property
    def filename(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def family(self) -> str:
        return self.config.family


def _build() -> dict[str, ModelEntry]:
    reg: dict[str, ModelEntry] = {}
    for (variant, res), stem in _AUGREG_FT.items():
        size, patch = variant.split("/")
        name = f"vit_{_TIMM_SIZE[size]}_patch{patch}_{res}"
        reg[name] = ModelEntry(name, variant_config(variant, res), "inception", f"{GCS}/augreg/{stem}.npz",
                               note="AugReg: ImageNet-21k pretrain, ImageNet-1k fine-tune")
    for variant, stem in _AUGREG_I21K.items():
        size, patch = variant.split("/")
        name = f"vit_{_TIMM_SIZE[size]}_patch{patch}_224_in21k"
        reg[name] = ModelEntry(name, variant_config(variant, 224, num_classes=21843), "inception",
                               f"{GCS}/augreg/{stem}.npz", label_set="imagenet21k",
                               note="AugReg: ImageNet-21k (21843 classes)")
    for (name, config), stem in _AUGREG_MORE.items():
        reg[name] = ModelEntry(name, config, "inception", f"{GCS}/augreg/{stem}.npz",
                               note="AugReg: ImageNet-21k pretrain, ImageNet-1k fine-tune")
    for google, (config, name) in _ORIGINAL_FT.items():
        reg[name] = ModelEntry(name, config, "inception", f"{GCS}/imagenet21k+imagenet2012/{google}.npz",
                               note="original ViT: ImageNet-21k pretrain, ImageNet-1k fine-tune")
    for google, (config, name) in _ORIGINAL_I21K.items():
        reg[name] = ModelEntry(name, config.replace(num_classes=21843), "inception",
                               f"{GCS}/imagenet21k/{google}.npz", label_set="imagenet21k",
                               note="original ViT: ImageNet-21k (21843 classes)")
    for variant in ("B/16", "B/32", "S/16", "S/32"):
        size, patch = variant.split("/")
        for opt, paper in (("sam", "SAM (Chen et al. 2022)"), ("gsam", "GSAM (Zhuang et al. 2022)")):
            name = f"vit_{_TIMM_SIZE[size]}_patch{patch}_224_{opt}"
            reg[name] = ModelEntry(name, variant_config(variant, 224), "inception",
                                   f"{GCS}/{opt}/ViT-{size}_{patch}.npz", note=f"{paper}, ImageNet-1k from scratch")
    # big_vision's plain ViT-S/16 baselines (Beyer et al. 2022): GAP head, sincos2d, tanh representation.
    for epochs in (90, 150, 300):
        name = f"vit_s16_i1k_{epochs}ep"
        reg[name] = ModelEntry(name, variant_config("S/16", 224, pool="gap", posemb="sincos2d", pre_logits=384), "crop",
                               f"{BIG_VISION}/{name}.npz", crop_pct=0.875,
                               note=f"big_vision plain ViT baseline, ImageNet-1k {epochs} epochs")
    # SigLIP and SigLIP 2 two-tower files (Zhai et al. 2023, Tschannen et al. 2025): the image tower (MAP
    # head, no classifier) is the model; with --zero-shot the text tower builds its classifier.
    for name, variant, res, url, tokenizer in _SIGLIP:
        reg[name] = ModelEntry(name, variant_config(variant, res, pool="map", num_classes=0), "inception", url,
                               label_set="zero-shot", tokenizer=TOKENIZERS[tokenizer],
                               text_pad=None if tokenizer == "gemma" else 1,
                               note=f"{'SigLIP 2' if 'siglip2' in url else 'SigLIP'} two-tower ({tokenizer} tokenizer): "
                                    f"zero-shot with --zero-shot, features with `fastvit embed`")
    for size, variant in (("tiny", "Ti/16"), ("small", "S/16"), ("base", "B/16")):
        for distilled in (False, True):  # timm's Hugging Face copies of facebookresearch/deit's weights
            name = f"deit_{size}{'_distilled' if distilled else ''}_patch16_224"
            reg[name] = ModelEntry(name, variant_config(variant, 224, gelu="exact", distilled=distilled), "deit",
                                   f"hf-hub:timm/{name}.fb_in1k",
                                   note="DeiT (Touvron et al. 2021)" + (", distilled: mean of both heads"
                                                                        if distilled else ""),
                                   bundled=f"{name}.npz" if name == "deit_tiny_patch16_224" else None)
    # Small ViT for CIFAR-10 (32 px, patch 4 -> 8 x 8 grid): trained here with `fastvit train`.
    reg["vit_cifar_patch4_32"] = ModelEntry(
        "vit_cifar_patch4_32", ViTConfig(width=128, depth=6, heads=2, mlp_dim=256, patch=4, image_size=32,
                                         num_classes=10), "inception", None, label_set="cifar10",
        note="CIFAR-10 ViT (train with `fastvit train`); no pretrained file")
    # Patch 2 on 28 x 28 crops of the 32 x 32 images: a 14 x 14 grid, as ImageNet-224 with patch 16,
    # so LGTM's w = 7 windows tile it exactly. Evaluation center-crops 28 of 32 (crop_pct 0.875).
    reg["vit_cifar_patch2_28"] = ModelEntry(
        "vit_cifar_patch2_28", ViTConfig(width=192, depth=6, heads=3, mlp_dim=768, patch=2, image_size=28,
                                         num_classes=10), "crop", None, label_set="cifar10", crop_pct=0.875,
        note="CIFAR-10 ViT with ImageNet's 14 x 14 token grid (train with `fastvit train`)")
    # Trained here from scratch with the project's own code (fastvit train); model card in assets/.
    for opt in ("adamw", "sam"):
        reg[f"vit_cifar_{opt}"] = dataclasses.replace(
            reg["vit_cifar_patch2_28"], name=f"vit_cifar_{opt}", bundled=f"vit_cifar_{opt}.npz",
            note=f"CIFAR-10 ViT trained here with {opt.upper() if opt == 'sam' else 'AdamW'} "
                 f"(CIFAR_MODEL_CARD.md)")
    return reg


def _aliases(reg: dict[str, ModelEntry]) -> dict[str, str]:
    """Google's names -> ours: 'ViT-B_16' (the ImageNet-1k fine-tune), 'imagenet21k/ViT-B_16',
    'R26+ViT-S_32', and every file stem ('R26_S_32-i21k-...-res_224')."""
    out = dict(_GOOGLE_NAMES)
    for google, (_, name) in _ORIGINAL_FT.items():
        out[google] = out[f"imagenet21k+imagenet2012/{google}"] = name
    for google, (_, name) in _ORIGINAL_I21K.items():
        out[f"imagenet21k/{google}"] = name
    for entry in reg.values():
        if entry.url and "/augreg/" in entry.url:
            out[entry.filename.removesuffix(".npz")] = entry.name
    for epochs in (90, 150, 300):  # big_vision's VANITY_NAMES
        out[f"i1k-s16-{epochs}ep"] = f"vit_s16_i1k_{epochs}ep"
    for name, variant, res, url, _ in _SIGLIP:  # big_vision's VANITY_NAMES: "SigLIP B/16 224", "SigLIP2 L/16 384"
        i18n = "-i18n" if "_i18n_" in url else ""
        out[f"{'SigLIP2' if 'siglip2' in url else 'SigLIP'} {variant}{i18n} {res}"] = name
    return out


REGISTRY: dict[str, ModelEntry] = _build()
ALIASES: dict[str, str] = _aliases(REGISTRY)
DEFAULT_MODEL = "deit_tiny_patch16_224"  # bundled, real ImageNet-1k weights: works offline


def asset_path(name: str) -> Path:
    return Path(str(resources.files("fastvit_jax").joinpath("assets", name)))


def get_entry(name: str) -> ModelEntry:
    """A registered model by our name, or by one of Google's (ALIASES)."""
    try:
        return REGISTRY[ALIASES.get(name, name)]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY) + list(ALIASES), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else \
            f"e.g. {', '.join(sorted(REGISTRY)[:6])}"
        raise FastViTError(f"unknown model {name!r}; {hint} (`fastvit models` lists all)") from None


def entry_for_file(path) -> ModelEntry | None:
    """The registered model whose official file has this file's name (a downloaded SigLIP file), if any."""
    name = Path(path).name
    found = [e for e in REGISTRY.values() if e.filename == name]
    return found[0] if len(found) == 1 else None


def _short(url: str | None) -> str:
    """The file as its bucket names it: 'sam/ViT-B_16.npz', 'big_vision/vit_s16_i1k_300ep.npz'."""
    if url is None:
        return "(convert)"
    if url.startswith("hf-hub:"):
        return url
    return url.removeprefix(GCS + "/").removeprefix("https://storage.googleapis.com/")


def model_rows() -> list[dict]:
    """One row per registered model, as `fastvit models` lists them."""
    return [{"name": e.name, "family": e.family, "variant": e.config.variant, "res": e.config.image_size,
             "classes": e.config.num_classes, "preprocessing": e.preprocessing,
             "file": "bundled" if e.bundled else _short(e.url), "url": e.url, "tokenizer": e.tokenizer}
            for e in REGISTRY.values()]
