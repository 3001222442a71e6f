"""DFE + Local-Global Token Merging (the paper, Algorithm 1): after the skip, `transition` blocks
merge inside w x w windows (w grows by one per block; windows are fused into the batch axis),
then global merging. The plan's local blocks: merge/plan.py local_block; kernels: merge/local.py."""

from fastvit_jax.merge.knobs import Knob

METHOD = {"knobs": (Knob("window", int, "initial LGTM window size", default=7, low=2),
                    Knob("transition", int, "number of local LGTM blocks (default: computed as in Algorithm 1)", low=0)),
          "name": "lgtm", "summary": "DFE + Local-Global Token Merging: windows first, then global merging",
          "default_skip": lambda depth: depth // 6, "local_windows": True,
          "search": {"skip": [1, 2], "window": [5, 7]}}
