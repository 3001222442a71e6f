"""ViT architecture description. Variants are strings ("S/16") as in big_vision.

One dataclass describes every family we load: plain ViTs, ResNet hybrids (a ResNet root and stages
before the patch embedding), and the heads of vision_transformer and big_vision (class token,
global average pooling, attention pooling). Families differ only in these fields; the model reads
them, nothing branches on a family name.
"""

from __future__ import annotations

import dataclasses

from fastvit_jax.errors import FastViTError

GELUS = ("tanh", "exact", "quick")  # flax's tanh approximation | erf (timm, DeiT) | x sigmoid(1.702 x) (OpenAI CLIP)
POOLS = ("tok", "gap", "map")  # class token | mean over tokens | attention-pooling probe (MAPHead)
POSEMBS = ("learn", "sincos2d")  # learned parameter | big_vision's fixed 2D sin-cos

# width, depth, heads, mlp_dim -- the table of the ViT / AugReg papers.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "So400m": (1152, 27, 16, 4304),  # SigLIP's shape-optimised ViT (big_vision)
    "g-opt": (1536, 40, 16, 6144),  # SigLIP 2's largest image tower (big_vision)
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    image_size: int
    num_classes: int = 1000
    pre_logits: int | None = None  # size of the tanh representation layer (old i21k checkpoints)
    gelu: str = "tanh"  # "tanh": flax nn.gelu as Google trained; "exact": DeiT/timm
    ln_eps: float = 1e-6
    # ResNet stages of a hybrid's stem (models_resnet.py); () is the root alone, None no stem.
    # `patch` is then the embedding's kernel on the stem's feature map.
    resnet: tuple[int, ...] | None = None
    resnet_width: int = 64
    pool: str = "tok"
    posemb: str = "learn"
    # DeiT's distillation token after the class token, with its own head; the logits are the mean of
    # both heads (as timm evaluates distilled DeiT), and merging protects both tokens.
    distilled: bool = False
    # The head reads the L2-normalised feature: a two-tower zero-shot classifier (zero_shot.py), whose
    # head kernel is the class embeddings x exp(t) and whose bias is SigLIP's b.
    l2_normalize: bool = False
    # Families beyond Google's files (timm and transformers layouts), each a piece the model reads:
    # LayerScale, a learned per-channel scale on each branch's output (DeiT III, DINOv2);
    # register tokens after the class token (DINOv2 with registers): attend like any token, are never
    # merged and never pooled; a LayerNorm before the blocks (CLIP); no patch-embedding bias (CLIP);
    # position embeddings on the patch tokens only (timm's no_embed_class: DeiT III, DINOv2 + registers).
    layerscale: bool = False
    registers: int = 0
    pre_norm: bool = False
    patch_bias: bool = True
    posemb_prefix: bool = True

    def __post_init__(self):
        if self.width % self.heads:
            raise FastViTError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.gelu not in GELUS:
            raise FastViTError(f"gelu must be one of {', '.join(GELUS)}, got {self.gelu!r}")
        if self.registers < 0 or (self.registers and self.pool != "tok"):
            raise FastViTError(f"register tokens ({self.registers}) need a class token (pool 'tok') and a count >= 0")
        if self.pool not in POOLS:
            raise FastViTError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.posemb not in POSEMBS:
            raise FastViTError(f"posemb must be one of {', '.join(POSEMBS)}, got {self.posemb!r}")
        if self.posemb == "sincos2d" and self.width % 4:
            raise FastViTError(f"sincos2d position embeddings need a width divisible by 4, got {self.width}")
        if self.distilled and (self.pool != "tok" or self.pre_logits):
            raise FastViTError("a distillation token needs a class token (pool 'tok') and no pre_logits")
        if self.l2_normalize and (self.distilled or not self.num_classes):
            raise FastViTError("an L2-normalised (zero-shot) head needs num_classes > 0 and no distillation token")
        if self.resnet is not None:
            object.__setattr__(self, "resnet", tuple(int(n) for n in self.resnet))
        # A remainder is allowed only for plain ViTs, whose VALID patch convolution drops it as big_vision's
        # does (So400m/14 at 384 px: 27 x 27 patches of 14 px); a hybrid's stem pads, so it must divide.
        if self.image_size < self.stride or (self.resnet is not None and self.image_size % self.stride):
            what = f"stem stride {self.stem_stride} x patch {self.patch}" if self.resnet is not None \
                else f"patch {self.patch}"
            raise FastViTError(f"image size {self.image_size} is not divisible by {what}")

    @property
    def stem_stride(self) -> int:
        return stem_stride(self.resnet)

    @property
    def stem_channels(self) -> int:
        """Channels the patch embedding sees: 3, or the stem's output (4x the last stage's width)."""
        if self.resnet is None:
            return 3
        if not self.resnet:
            return self.resnet_width
        return self.resnet_width * 4 * 2 ** (len(self.resnet) - 1)

    @property
    def stride(self) -> int:
        """Pixels per token side."""
        return self.stem_stride * self.patch

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.stride
        return (side, side)

    @property
    def num_prefix(self) -> int:
        """Tokens before the patch tokens (class, distillation); merging never touches them."""
        return (1 + self.distilled) if self.pool == "tok" else 0

    @property
    def num_embedded(self) -> int:
        """Tokens entering the blocks: prefix, registers and patches."""
        return self.num_prefix + self.registers + self.num_patches

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def variant(self) -> str:
        """'S/16', or for hybrids Google's ResNet depth and the pixels per token: 'R50+B/16', 'R+Ti/32'."""
        name = f"custom(w{self.width},d{self.depth},h{self.heads})"
        for size, dims in VARIANTS.items():
            if dims == (self.width, self.depth, self.heads, self.mlp_dim):
                name = size
        if self.resnet is not None:
            name = f"R{3 * sum(self.resnet) + 2 if self.resnet else ''}+{name}"
        return f"{name}/{self.stride}"

    @property
    def family(self) -> str:
        """A short description: 'ViT', 'ResNet hybrid'; with the head when it is not the class token."""
        family = "ResNet hybrid" if self.resnet is not None else "ViT"
        head = {"tok": ", distilled" if self.distilled else "", "gap": ", GAP head", "map": ", MAP head"}[self.pool]
        extras = [f"{self.registers} registers" if self.registers else "", "LayerScale" if self.layerscale else "",
                  "pre-norm" if self.pre_norm else "", "QuickGELU" if self.gelu == "quick" else ""]
        return (family + head + (", sincos2d posemb" if self.posemb == "sincos2d" else "")
                + (", zero-shot head" if self.l2_normalize else "") + "".join(f", {e}" for e in extras if e))

    def replace(self, **kw) -> "ViTConfig":
        return dataclasses.replace(self, **kw)


def stem_stride(resnet: tuple[int, ...] | None) -> int:
    """Downsampling of a ResNet stem: root conv and max-pool 4, then 2 per stage after the first."""
    return 1 if resnet is None else 4 * 2 ** max(len(resnet) - 1, 0)


def variant_config(variant: str, image_size: int = 224, **kw) -> ViTConfig:
    """'S/16' -> ViTConfig of ViT-S with 16x16 patches."""
    try:
        name, patch = variant.split("/")
        width, depth, heads, mlp = VARIANTS[name]
        patch = int(patch)
    except (ValueError, KeyError):
        raise FastViTError(
            f"unknown variant {variant!r}; expected NAME/PATCH with NAME in {sorted(VARIANTS)}") from None
    return ViTConfig(width=width, depth=depth, heads=heads, mlp_dim=mlp, patch=patch,
                     image_size=image_size, **kw)
