"""Jit-compiled forward functions, one per (config, plan, runtime).

On CPU a batch runs a few examples at a time (`lax.map` over slices of the batch, inside the one
jitted function): a whole batch's MLP hidden activation spills from the last-level cache, and the
MLP matmuls run much slower than on slices whose activation stays in cache (measurements:
BENCHMARKS.md section 2). Accelerators keep the whole batch in one step: they want the
parallelism, not the cache.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp

from fastvit_jax.config import ViTConfig
from fastvit_jax.merge.buckets import Layout
from fastvit_jax.merge.plan import MergePlan
from fastvit_jax.models.tiered import TieredForward
from fastvit_jax.models.vit import VisionTransformer
from fastvit_jax.runtime import Runtime



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
def make_forward(config: ViTConfig, plan: MergePlan | None = None, runtime: Runtime = Runtime(),
                 layout: Layout | None = None):
    """jit(params, images[, merge_key[, schedule]]) -> logits for this config and plan, run as
    `runtime` says (dtype, examples per step, merge and attention implementations; see
    fastvit_jax.runtime). Logits depend on the runtime only through float rounding (and the dtype).
    runtime.tiered (a merged plan at exact counts): a TieredForward (models/tiered.py).
    layout: a shared one (merge/buckets.shared_layout): one program for every plan of `plan`'s
    program_key, called with a plan's schedule (buckets.schedule) to compute that plan."""
    if runtime.tiered and layout is None:
        exact = make_forward(config, plan, runtime.replace(tiered=False))
        if plan is None or plan.is_dense or runtime.token_buckets:
            return exact
        return TieredForward(make_forward(config, plan, runtime.replace(tiered=False, token_buckets=1)), exact)
    runtime = runtime.resolved(config)
    model = VisionTransformer(config, plan, runtime, layout)

    @jax.jit
    def forward(params, images, merge_key=None, schedule=None):
        key = jax.random.PRNGKey(0) if merge_key is None else merge_key
        return in_steps(lambda x, k: model.apply({"params": params}, x, merge_key=k, schedule=schedule), images,
                        key, runtime.examples_per_step)

    return forward
