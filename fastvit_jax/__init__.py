"""fastvit_jax: training-free ViT compression by token merging, in JAX/Flax.

    import fastvit_jax as fv
    model = fv.load()                                   # the bundled DeiT-Tiny; any name, file, folder, URL
    merged = model.merge("tome", r=13)                  # a Model with a merge plan
    print(merged.predict(fv.bundled_images()[:1])[0][0], merged.gflops)

The names below are imported on first use, so `import fastvit_jax` (and the `fastvit` command's
start, which must answer Ctrl-C at once) does not wait for JAX.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "fastvit_jax.api", "Model": "fastvit_jax.api", "bundled_images": "fastvit_jax.api",
    "FastViTError": "fastvit_jax.errors", "MergeOptions": "fastvit_jax.merge.options",
    "MergePlan": "fastvit_jax.merge.plan", "make_plan": "fastvit_jax.merge.plan", "Runtime": "fastvit_jax.runtime",
    "ViTConfig": "fastvit_jax.config", "variant_config": "fastvit_jax.config",
    "VisionTransformer": "fastvit_jax.models.vit",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastvit_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
