"""python -m checkpoints_convert SRC DST  (same as `fastvit convert`)."""

import sys

from fastvit_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
