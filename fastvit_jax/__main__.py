"""`python -m fastvit_jax ...` is `fastvit ...`."""

from fastvit_jax.cli import entry

entry()
