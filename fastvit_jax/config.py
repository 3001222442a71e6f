"""ViT architecture description. Variants are strings ("S/16") as in big_vision."""

from __future__ import annotations

import dataclasses

from fastvit_jax.errors import FastViTError

# width, depth, heads, mlp_dim -- the table of the ViT / AugReg papers.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
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

    def __post_init__(self):
        if self.width % self.heads:
            raise FastViTError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch:
            raise FastViTError(f"image size {self.image_size} is not divisible by patch {self.patch}")
        if self.gelu not in ("tanh", "exact"):
            raise FastViTError(f"gelu must be 'tanh' or 'exact', got {self.gelu!r}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch
        return (side, side)

    @property
    def num_prefix(self) -> int:
        """Tokens before the patch tokens (the class token); merging never touches them."""
        return 1

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def variant(self) -> str:
        for name, dims in VARIANTS.items():
            if dims == (self.width, self.depth, self.heads, self.mlp_dim):
                return f"{name}/{self.patch}"
        return f"custom(w{self.width},d{self.depth},h{self.heads})/{self.patch}"

    def replace(self, **kw) -> "ViTConfig":
        return dataclasses.replace(self, **kw)


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
