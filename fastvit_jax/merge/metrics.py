"""Similarity features for merging and the drop-by-norm alternative (paper, Table 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fastvit_jax.merge.state import TokenState, take_tokens


def random_metric(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Random features: random pairs merge, random tokens drop. Reproducible from `key`."""
    return jax.random.normal(key, shape, jnp.float32)


def drop_lowest_norm(state: TokenState, feature: jax.Array, *, r: int, num_prefix: int) -> TokenState:
    """One example: remove the r tokens whose feature has the lowest L2 norm (prefix tokens kept).

    Survivors keep their order and their sizes.
    """
    norms = jnp.linalg.norm(feature.astype(jnp.float32), axis=-1)
    norms = norms.at[:num_prefix].set(jnp.inf)
    _, keep = jax.lax.top_k(norms, feature.shape[0] - r)
    return take_tokens(state, jnp.sort(keep))
