"""Sharpness-Aware Minimization (Foret et al. 2021) as an optax gradient transformation.

    opt = sam(optax.adamw(1e-3), rho=0.05)
    updates, state = opt.update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch))

update() ascends to w + e, e = rho * g / ||g|| (adaptive SAM, Kwon et al. 2021:
e = rho * w^2 g / ||w g||), takes the gradient there with grad_fn, and gives it to the base optimizer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def sam(base: optax.GradientTransformation, rho: float = 0.05, adaptive: bool = False,
        eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
    def init(params):
        return base.init(params)

    def update(grads, state, params=None, *, grad_fn=None, **extra):
        if params is None or grad_fn is None:
            raise ValueError("sam.update needs params and grad_fn=lambda params: gradients")
        if adaptive:
            scaled = jax.tree_util.tree_map(lambda w, g: jnp.abs(w) * g, params, grads)
            norm = _global_norm(scaled)
            e = jax.tree_util.tree_map(lambda w, g: rho * jnp.square(w) * g / (norm + eps), params, grads)
        else:
            norm = _global_norm(grads)
            e = jax.tree_util.tree_map(lambda g: rho * g / (norm + eps), grads)
        sharp_grads = grad_fn(jax.tree_util.tree_map(jnp.add, params, e))
        return base.update(sharp_grads, state, params)

    return optax.GradientTransformationExtraArgs(init, update)
