"""`python -m fastvit_jax.cli ...` is `fastvit ...` too."""

from fastvit_jax.__main__ import entry

entry()
