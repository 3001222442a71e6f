"""Independent plain-numpy ViT with token merging, for tests.

Written from the paper and ToMe's description with Python loops over tokens and windows; it shares
no code with fastvit_jax. Parameters are read from the flat Google checkpoint keys.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def gelu(x, exact):
    if exact:
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def cosine(u, v):
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


# ------------------------------------------------------------------ merging, one example
def bipartite_groups(metric, r, protect_first=True, valid=None):
    """Loop version of ToMe matching. Returns (output token list, each a list of input indices).

    A = even positions, B = odd positions. Each A token (not protected, real) picks its most similar
    real B token; the r A tokens with the highest similarity (ties: lower index first) merge.
    Output: unmerged A tokens in index order, then every B token (with what merged into it).
    """
    n = len(metric)
    valid = [True] * n if valid is None else list(valid)
    a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
    best = {}
    for a in a_idx:
        if (protect_first and a == 0) or not valid[a]:
            continue
        cands = [(cosine(metric[a], metric[b]), -k, b) for k, b in enumerate(b_idx) if valid[b]]
        if cands:
            s, _, b = max(cands)  # highest similarity; among equals the first B
            best[a] = (s, b)
    ranked = sorted(best, key=lambda a: (-best[a][0], a))[:r]
    merged_into = {b: [b] for b in b_idx}
    for a in sorted(ranked):
        merged_into[best[a][1]].append(a)
    out = [[a] for a in a_idx if a not in ranked] + [merged_into[b] for b in b_idx]
    return [g for g in out if all(valid[i] for i in g)], [best[a][0] for a in ranked]


def combine(groups, x, size, pos):
    """Size-weighted merge of token groups."""
    nx, ns, npos = [], [], []
    for g in groups:
        w = size[g]
        ns.append(w.sum())
        nx.append((x[g] * w[:, None]).sum(0) / w.sum())
        npos.append((pos[g] * w[:, None]).sum(0) / w.sum())
    return np.array(nx), np.array(ns), np.array(npos)


def local_groups(metric, pos, r_window, window, grid):
    """LGTM for patch tokens (no cls): sort onto `grid` by position, pad, merge per window.

    Returns output groups (lists of input token indices) in window order."""
    m = len(metric)
    rows, cols = grid
    by_row = sorted(range(m), key=lambda i: (pos[i][0], i))
    grid_tokens = []
    for start in range(0, m, cols):
        row = by_row[start:start + cols]
        grid_tokens += sorted(row, key=lambda i: (pos[i][1], row.index(i)))
    hp, wp = math.ceil(rows / window) * window, math.ceil(cols / window) * window
    out = []
    for wr in range(hp // window):
        for wc in range(wp // window):
            slots = []
            for k in range(window * window):
                i, j = wr * window + k // window, wc * window + k % window
                s = i * cols + j
                slots.append(grid_tokens[s] if i < rows and j < cols and s < m else None)
            slots = [t for t in slots if t is not None] + [t for t in slots if t is None]  # real first
            feats = np.array([metric[t] if t is not None else np.zeros(metric.shape[1]) for t in slots])
            groups, _ = bipartite_groups(feats, r_window, protect_first=False,
                                         valid=[t is not None for t in slots])
            out += [[slots[i] for i in g] for g in groups]
    return out


# ------------------------------------------------------------------ forward
def forward(flat, images, *, heads, gelu_exact=False, plan=None, metric_name="k", prop_attn=True):
    """Logits for images (B, H, W, 3). plan: list per block of None | ("global", r) |
    ("local", r_window, window, grid) | ("drop", r) | ("truncate", tokens_out)."""
    return np.stack([_forward_one(flat, img, heads, gelu_exact, plan, metric_name, prop_attn)
                     for img in np.asarray(images, np.float64)])


def _forward_one(flat, img, heads, gelu_exact, plan, metric_name, prop_attn):
    f = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    kernel = f["embedding/kernel"]  # (p, p, 3, D)
    p = kernel.shape[0]
    gh, gw = img.shape[0] // p, img.shape[1] // p
    patches = []
    for i in range(gh):
        for j in range(gw):
            patch = img[i * p:(i + 1) * p, j * p:(j + 1) * p]
            patches.append(np.einsum("hwc,hwcd->d", patch, kernel) + f["embedding/bias"])
    x = np.concatenate([f["cls"][0], np.array(patches)]) + f["Transformer/posembed_input/pos_embedding"][0]
    size = np.ones(len(x))
    pos = np.array([[-1.0, -1.0]] + [[i, j] for i in range(gh) for j in range(gw)])
    depth = len({k.split("/")[1] for k in f if k.startswith("Transformer/encoderblock_")})
    plan = plan or [None] * depth
    merged = False
    for b in range(depth):
        pre = f"Transformer/encoderblock_{b}/"
        y = layer_norm(x, f[pre + "LayerNorm_0/scale"], f[pre + "LayerNorm_0/bias"])
        att = pre + "MultiHeadDotProductAttention_1/"
        q = np.einsum("nd,dhk->nhk", y, f[att + "query/kernel"]) + f[att + "query/bias"]
        k = np.einsum("nd,dhk->nhk", y, f[att + "key/kernel"]) + f[att + "key/bias"]
        v = np.einsum("nd,dhk->nhk", y, f[att + "value/kernel"]) + f[att + "value/bias"]
        dh = q.shape[-1]
        out = np.zeros_like(q)
        for h in range(heads):
            logits = q[:, h] @ k[:, h].T / math.sqrt(dh)
            if prop_attn and merged:
                logits = logits + np.log(size)[None, :]
            out[:, h] = softmax(logits) @ v[:, h]
        x = x + np.einsum("nhk,hkd->nd", out, f[att + "out/kernel"]) + f[att + "out/bias"]
        feats = {"k": k.mean(1), "q": q.mean(1), "v": v.mean(1), "x_pre": y, "x_attn": out.reshape(len(x), -1)}
        op = plan[b]
        if op is not None:
            metric = feats[metric_name]
            if op[0] == "global":
                groups, _ = bipartite_groups(metric, op[1])
                x, size, pos = combine(groups, x, size, pos)
                merged = True
            elif op[0] == "local":
                groups = local_groups(metric[1:], pos[1:], op[1], op[2], op[3])
                groups = [[0]] + [[t + 1 for t in g] for g in groups]
                x, size, pos = combine(groups, x, size, pos)
                merged = True
            elif op[0] == "truncate":  # free merging: the first tokens survive, nothing else changes
                x, size, pos = x[:op[1]], size[:op[1]], pos[:op[1]]
            elif op[0] == "drop":
                norms = np.linalg.norm(metric, axis=-1)
                order = sorted(range(1, len(x)), key=lambda i: (norms[i], -i))
                drop = set(order[:op[1]])
                keep = [i for i in range(len(x)) if i not in drop]
                x, size, pos = x[keep], size[keep], pos[keep]
        y = layer_norm(x, f[pre + "LayerNorm_2/scale"], f[pre + "LayerNorm_2/bias"])
        y = gelu(y @ f[pre + "MlpBlock_3/Dense_0/kernel"] + f[pre + "MlpBlock_3/Dense_0/bias"], gelu_exact)
        x = x + y @ f[pre + "MlpBlock_3/Dense_1/kernel"] + f[pre + "MlpBlock_3/Dense_1/bias"]
    x = layer_norm(x, f["Transformer/encoder_norm/scale"], f["Transformer/encoder_norm/bias"])[0]
    if "pre_logits/kernel" in f:
        x = np.tanh(x @ f["pre_logits/kernel"] + f["pre_logits/bias"])
    return x @ f["head/kernel"] + f["head/bias"]


def plan_ops(plan):
    """fastvit MergePlan -> the op list this reference understands."""
    ops = []
    for op in plan.ops:
        if op.kind == "none" or op.r == 0:
            ops.append(None)
        elif op.kind == "local":
            ops.append(("local", op.r, op.window, op.grid))
        elif op.kind == "truncate":
            ops.append(("truncate", op.tokens_out))
        else:
            ops.append((op.kind, op.r))
    return ops
