"""fastvit_jax: training-free ViT compression by token merging, in JAX/Flax."""

from fastvit_jax.config import ViTConfig, variant_config
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.models.vit import VisionTransformer

__all__ = ["ViTConfig", "variant_config", "MergeOptions", "MergePlan", "make_plan", "VisionTransformer"]
__version__ = "0.1.0"
