"""DFE + Local-Global Token Merging (the paper, Algorithm 1): after the skip, `transition` blocks
merge inside w x w windows (w grows by one per block; windows are fused into the batch axis),
then global merging. The plan's local blocks: merge/plan.py local_block; kernels: merge/local.py."""

METHOD = {"name": "lgtm", "summary": "DFE + Local-Global Token Merging: windows first, then global merging",
          "default_skip": lambda depth: depth // 6, "local_windows": True,
          "search": {"skip": [1, 2], "window": [5, 7]}}
