"""`python -m fastvit_jax ...` is `fastvit ...`."""

import sys

from fastvit_jax.cli import main

sys.exit(main())
