"""ToMe (Bolya et al., ICLR 2023): bipartite soft matching after every block's attention. Tokens
alternate A, B; each A's most similar B is its edge; the r best edges merge (size-weighted mean).
The gather and dense implementations are merge/bipartite.py and merge/onehot.py; its slots serve
the other rules' combines (merge/reducers.py)."""

import math
from fastvit_jax.merge import reducers


def match_macs(n: int, num_prefix: int, dim: int) -> int:
    """The A x B similarity matrix."""
    return math.ceil(n / 2) * (n // 2) * dim


def slots(metric, op, *, size, attention, num_prefix, distill_token):

    return reducers.tome_slots(metric, op.r, num_prefix=num_prefix, distill_token=distill_token)


METHOD = {"name": "tome", "summary": "ToMe: merge r tokens by bipartite matching in every block from --skip",
          # skip > 0 is the paper's DFE; inflect -0.5: ToMe's decreasing schedule; align 8: GEMM-friendly counts
          "search": {"skip": [0, 1, 2, 3], "align": [0, 8], "inflect": [0.0, -0.5]}}
RULE = {"name": "tome", "slots": slots, "match_macs": match_macs}
