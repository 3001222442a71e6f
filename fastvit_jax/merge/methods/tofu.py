"""ToFu (Kim et al., WACV 2024): ToMe's matching; the first `prune_blocks` blocks (default
depth // 4) prune (the receiving token stays as it is), later ones merge by MLERP (the size-weighted
mean rescaled to the largest member norm)."""

from fastvit_jax.merge.knobs import Knob


def block(options, block: int, depth: int) -> dict:
    prune = options.prune_blocks if options.prune_blocks is not None else depth // 4
    return {"combine": "prune" if block < prune else "mlerp"}


METHOD = {"knobs": (Knob("prune_blocks", int, "blocks that prune before MLERP merging starts (default depth//4)", low=0),),
          "name": "tofu", "summary": "ToFu: prune in early blocks, MLERP merging later", "reducer": True,
          "block": block, "search": {"skip": [0, 1], "prune_blocks": [0, 1, 3]}}
