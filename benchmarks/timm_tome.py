"""The peer: timm's ViT, dense or with ToMe patched in the way facebookresearch/ToMe patches it.

Only used by benchmarks and by tests that are skipped unless torch and timm are installed (they are
not in CI). Block forward becomes: attention (with log(size) added to the logits when proportional
attention is on) -> bipartite soft matching on the keys averaged over heads -> size-weighted merge
-> MLP. Everything runs in float32 under torch.inference_mode(); timing uses CUDA when present.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F


def _bipartite(metric: torch.Tensor, r: int):
    """ToMe matching with the class token protected; returns merge(x) summing A tokens into B."""
    n = metric.shape[1]
    r = min(r, (n - 1) // 2)
    if r <= 0:
        return None
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)
    scores[:, 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True, stable=True)
    src, unm = order[:, :r], order[:, r:].sort(dim=1).values
    dst = node_idx.gather(1, src)

    def merge(x):
        a, b = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        kept = a.gather(1, unm[..., None].expand(-1, -1, c))
        moved = a.gather(1, src[..., None].expand(-1, -1, c))
        b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, c), moved, reduce="sum")
        return torch.cat([kept, b], dim=1)

    return merge


def _block_forward(block, x, state):
    attn = block.attn
    b, n, c = x.shape
    y = block.norm1(x)
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = None
    if state["prop_attn"] and state["size"] is not None:
        bias = state["size"].log()[:, None, None, :, 0]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    o = attn.proj(o.transpose(1, 2).reshape(b, n, c))
    x = x + block.ls1(o)
    r = state["r"][state["block"]]
    state["block"] += 1
    merge = _bipartite(k.mean(1), r)
    if merge is not None:
        size = state["size"] if state["size"] is not None else torch.ones_like(x[..., :1])
        x = merge(x * size)
        size = merge(size)
        x = x / size
        state["size"] = size
    return x + block.ls2(block.mlp(block.norm2(x)))


def make_model(name: str, r: int = 0, *, skip: int = 0, gelu: str = "tanh", prop_attn: bool = True,
               num_classes: int = 1000):
    """timm model (random init) with ToMe r per block after the first `skip` blocks (skip > 0 is DFE);
    gelu 'tanh' matches Google checkpoints."""
    import timm

    act = partial(torch.nn.GELU, approximate="tanh") if gelu == "tanh" else torch.nn.GELU
    model = timm.create_model(name, pretrained=False, act_layer=act, num_classes=num_classes).eval()
    if r:
        state = {"r": [0] * skip + [r] * (len(model.blocks) - skip), "prop_attn": prop_attn, "size": None, "block": 0}
        for blk in model.blocks:
            blk.forward = partial(_block_forward, blk, state=state)
        inner = model.forward

        def forward(x):
            state["size"], state["block"] = None, 0
            return inner(x)

        model.forward = forward
    return model


def load_google_params(model, params: dict) -> None:
    """Copy fastvit/Google-layout params into the timm model (via the project's converter)."""
    from checkpoints_convert.timm_vit import to_state_dict

    sd = {k: torch.from_numpy(v) for k, v in to_state_dict(params).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if not m.startswith("fc_norm")]:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")


def logits(model, images_nhwc):
    import numpy as np

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        return model(x).numpy()


def model_runner(model, batch_size: int, image_size: int):
    """run(): one blocking forward of a random batch -- on CUDA when torch sees a GPU (TF32 matmuls, as
    XLA uses for float32 on GPUs, so both sides do the same arithmetic), else on all CPU cores."""
    import os

    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        model = model.cuda()
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    x = torch.randn(batch_size, 3, image_size, image_size, device="cuda" if cuda else "cpu")

    def run():
        with torch.inference_mode():
            model(x)
        if cuda:
            torch.cuda.synchronize()

    return run
