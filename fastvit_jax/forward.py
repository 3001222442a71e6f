"""Jit-compiled forward functions, one per (config, plan, dtype, examples per step).

On CPU a batch runs a few examples at a time (`lax.map` over slices of the batch, inside the one
jitted function): a whole batch's MLP hidden activation spills from the last-level cache, and the
MLP matmuls run much slower than on slices whose activation stays in cache (measurements:
BENCHMARKS.md section 2). Accelerators keep the whole batch in one step: they want the
parallelism, not the cache.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import jax
import jax.numpy as jnp

from fastvit_jax.config import ViTConfig
from fastvit_jax.errors import FastViTError
from fastvit_jax.merge.plan import MergePlan, resolve_merge_impl
from fastvit_jax.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Size of one step's MLP hidden activation (tokens x mlp_dim) on CPU: a third of a 32 MiB L3,
# where the measured optimum lay for ViT-S/16 and ViT-B/16 (BENCHMARKS.md section 2).
CPU_STEP_BYTES = 10 * 2**20


def auto_examples_per_step(config: ViTConfig, backend: str | None = None) -> int | None:
    """Examples per step for `make_forward(..., examples_per_step="auto")`: None (whole batch) off CPU.
    Sized in float32 whatever the dtype: XLA:CPU computes bfloat16 in float32 (BENCHMARKS.md section 2)."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    hidden_bytes = config.num_tokens * config.mlp_dim * 4
    return max(1, CPU_STEP_BYTES // hidden_bytes)


def resolve_examples_per_step(value, config: ViTConfig) -> int | None:
    """"auto" | None/"none"/0 (whole batch) | a positive int -> int or None."""
    if value == "auto":
        return auto_examples_per_step(config)
    if value in (None, "none", 0, "0"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 1:
        raise FastViTError(f"examples per step must be 'auto', 'none' or a positive integer, got {value!r}")
    return n


def in_steps(fn, images, merge_key, per_step: int | None):
    """fn(images, key) over the batch at most `per_step` examples at a time; a remainder is one last step.

    Step i gets fold_in(key, i), so the `random` metric draws fresh features for every example."""
    batch = images.shape[0]
    if per_step is None or batch <= per_step:
        return fn(images, merge_key)
    # Equal steps where the batch allows (32 at most 17 -> 2 x 16): a remainder compiles the model twice.
    per_step = -(-batch // -(-batch // per_step))
    steps, rest = divmod(batch, per_step)
    head = images[: steps * per_step].reshape((steps, per_step) + images.shape[1:])
    keys = jax.vmap(lambda i: jax.random.fold_in(merge_key, i))(jnp.arange(steps))
    out = jax.lax.map(lambda a: fn(a[0], a[1]), (head, keys))
    out = out.reshape((steps * per_step,) + out.shape[2:])
    if rest:
        out = jnp.concatenate([out, fn(images[steps * per_step:], jax.random.fold_in(merge_key, steps))])
    return out


# Small on purpose: an evicted forward frees its compiled program, and each compiled ViT holds
# ~1700 memory maps on XLA:CPU (more for deeper models); 64 of them passed the kernel's 65530-map
# limit and compiling failed with "Cannot allocate memory" in long sweeps and tunes.
@lru_cache(maxsize=8)
def make_forward(config: ViTConfig, plan: MergePlan | None = None, dtype: str = "float32",
                 examples_per_step="auto", merge_impl: str | None = None):
    """jit(params, images[, merge_key]) -> logits for this config and plan.

    examples_per_step: "auto" (a cache-sized slice on CPU, the whole batch elsewhere), None for the
    whole batch, or a count. merge_impl: "auto" (dense on TPU, else gather), "gather" or
    "dense" (fastvit_jax.merge.apply); None keeps the plan's. Logits depend on neither beyond
    float rounding."""
    if plan is not None:
        plan = dataclasses.replace(plan, merge_impl=resolve_merge_impl(merge_impl or plan.merge_impl))
    model = VisionTransformer(config, plan, DTYPES[dtype])
    per_step = resolve_examples_per_step(examples_per_step, config)

    @jax.jit
    def forward(params, images, merge_key=None):
        key = jax.random.PRNGKey(0) if merge_key is None else merge_key
        return in_steps(lambda x, k: model.apply({"params": params}, x, merge_key=k), images, key, per_step)

    return forward
