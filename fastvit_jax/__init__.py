"""fastvit_jax: training-free ViT compression by token merging, in JAX/Flax.

    import fastvit_jax as fv
    model = fv.load()                                   # the bundled DeiT-Tiny; any name, file, folder, URL
    merged = model.merge("tome", r=13)                  # a Model with a merge plan
    print(merged.predict("cat.jpg")[0][0], merged.gflops)
"""

from fastvit_jax.api import Model, bundled_images, load
from fastvit_jax.config import ViTConfig, variant_config
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.options import MergeOptions
from fastvit_jax.merge.plan import MergePlan, make_plan
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime

__all__ = ["load", "Model", "bundled_images", "FastViTError", "MergeOptions", "MergePlan", "make_plan", "Runtime", "ViTConfig",
           "variant_config", "VisionTransformer"]
__version__ = "0.1.0"
