"""Independent plain-numpy ViT with token merging, for tests.

Written from the paper and ToMe's description with Python loops over tokens and windows; it shares
no code with fastvit_jax. Parameters are read from the flat Google checkpoint keys.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def layer_norm(x, scale, bias, eps=1e-6):
    return _layer_norm(x, scale, bias, eps)


def _layer_norm(x, scale, bias, eps):
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
def bipartite_groups(metric, r, protect_first=True, valid=None, protect_second=False):
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
        cands = [(cosine(metric[a], metric[b]), -k, b) for k, b in enumerate(b_idx)
                 if valid[b] and not (protect_second and b == 1)]  # a distillation token receives nothing
        if cands:
            s, _, b = max(cands)  # highest similarity; among equals the first B
            best[a] = (s, b)
    ranked = sorted(best, key=lambda a: (-best[a][0], a))[:r]
    merged_into = {b: [b] for b in b_idx}
    for a in sorted(ranked):
        merged_into[best[a][1]].append(a)
    out = [[a] for a in a_idx if a not in ranked] + [merged_into[b] for b in b_idx]
    if protect_second:  # ToMe keeps [cls, distill] in front: [cls, distill, other unmerged A, other B]
        out.remove([1])
        out.insert(1, [1])
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


def elu(z):
    return z if z > 0 else math.exp(z) - 1.0


def pitome_groups(metric, r, margin, pre_n, scale=100.0):
    """PiToMe as released, loop version (float32 like the release). s(i, j) = ELU((cos(i, j) -
    margin) * 100); energy of patch token i = mean over patch tokens j of s(i, j); the 2r most
    energetic (ties: lower index) alternate A, B, A, B...; every A joins the B of highest s (ties,
    as s saturates at -1: the B earlier in that order). Output groups (receiver first): prefix tokens,
    the protected tokens in energy order, then the B groups."""
    patches = list(range(pre_n, len(metric)))
    f = np.asarray(metric[pre_n:], np.float32)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = (f @ f.T).astype(np.float32)
    s = {(i, j): np.float32(elu(np.float32((cos[i - pre_n, j - pre_n] - np.float32(margin)) * np.float32(scale))))
         for i in patches for j in patches}
    energy = {i: np.mean(np.array([s[i, j] for j in patches], np.float32)) for i in patches}
    order = sorted(patches, key=lambda i: (-energy[i], i))
    a_list, b_list, protected = order[:2 * r:2], order[1:2 * r:2], order[2 * r:]
    groups = {b: [b] for b in b_list}
    for a in a_list:
        _, _, b = max((s[a, b], -k, b) for k, b in enumerate(b_list))
        groups[b].append(a)
    return [[p] for p in range(pre_n)] + [[i] for i in protected] + [groups[b] for b in b_list]


def mctf_groups(metric, received, size, r, pre_n, taus=(1.0, 20.0, 40.0)):
    """MCTF without training, loop version. Edge weight between A (even) and B (odd) tokens:
    ((cos + 1) / 2)^(1/t_sim) (info_a info_b)^(1/t_info) (small_a small_b)^(1/t_size), with
    info = 1/received and small = 1/size, each divided by its largest value. The class token (A 0)
    never merges. r // 2 A tokens (highest best edge) join their best B; then the r - r // 2 B tokens
    whose best edge to a remaining A is highest join that A with their group. Output: remaining A
    groups in index order, then remaining B groups in descending order of their best edge (as the
    release's sort leaves them; ties: lower index), receiver first."""
    n = len(metric)
    info = [1.0 / received[i] for i in range(n)]
    small = [1.0 / size[i] for i in range(n)]
    info = [v / max(info) for v in info]
    small = [v / max(small) for v in small]
    t_sim, t_info, t_size = taus

    def w(a, b):
        return (((cosine(metric[a], metric[b]) + 1) / 2) ** (1 / t_sim) * (info[a] * info[b]) ** (1 / t_info)
                * (small[a] * small[b]) ** (1 / t_size))

    a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
    free = [a for a in a_idx if not (pre_n and a == 0)]
    best = {a: max((w(a, b), -b, b) for b in b_idx) for a in free}
    gone_a = sorted(free, key=lambda a: (-best[a][0], a))[:r // 2]
    groups = {t: [t] for t in range(n)}
    for a in sorted(gone_a):
        groups[best[a][2]].append(a)
    left_a = [a for a in free if a not in gone_a]
    back = {b: max((w(a, b), -a, a) for a in left_a) for b in b_idx}
    gone_b = sorted(b_idx, key=lambda b: (-back[b][0], b))[:r - r // 2]
    for b in sorted(gone_b):
        groups[back[b][2]] += groups[b]
    keep_a = [a for a in a_idx if a not in gone_a]
    keep_b = sorted([b for b in b_idx if b not in gone_b], key=lambda b: (-back[b][0], b))
    return [groups[a] for a in keep_a] + [groups[b] for b in keep_b]


def atm_groups(metric, size, r, pre_n):
    """ATM's size-distinctive matching, loop version: the patch tokens in ascending size (ties: lower
    index); the first half (rounded down) is A, the rest B. Each A's partner is the B of lowest
    error n_a n_b / (n_a + n_b) (1 - cos) (ties: lower index); the r A tokens of lowest error (ties:
    lower index) join their partner. Groups (receiver first): prefix, unmerged A in index order, B in
    index order."""
    patches = list(range(pre_n, len(metric)))
    order = sorted(patches, key=lambda i: (size[i], i))
    a_list, b_list = sorted(order[:len(patches) // 2]), sorted(order[len(patches) // 2:])

    def error(a, b):
        return size[a] * size[b] / (size[a] + size[b]) * (1 - cosine(metric[a], metric[b]))

    best = {a: min((error(a, b), b) for b in b_list) for a in a_list}
    merged = sorted(a_list, key=lambda a: (best[a][0], a))[:r]
    groups = {b: [b] for b in b_list}
    for a in sorted(merged):
        groups[best[a][1]].append(a)
    return ([[p] for p in range(pre_n)] + [[a] for a in a_list if a not in merged]
            + [groups[b] for b in b_list])


def reduce_combine(groups, x, size, pos, how, received=None):
    """A group (receiver first) becomes one token: mean (size-weighted), attn (weighted by size x
    attention received), prune (the receiver as it was), mlerp (the mean, rescaled to the largest
    member norm). Positions are size-weighted means, as in `combine`."""
    nx, ns, npos = [], [], []
    for g in groups:
        if how == "prune":
            g = g[:1]
        s = size[g]
        wgt = s * received[g] if how == "attn" else np.ones(len(g)) if how == "plain" else s
        mean = (x[g] * wgt[:, None]).sum(0) / wgt.sum()
        if how == "mlerp" and len(g) > 1:
            mean = mean / np.linalg.norm(mean) * max(np.linalg.norm(x[i]) for i in g)
        nx.append(mean)
        ns.append(s.sum())
        npos.append((pos[g] * s[:, None]).sum(0) / s.sum())
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


# ------------------------------------------------------------------ ResNet stem (hybrids)
def same_pad(img, k, stride, fill):
    """TensorFlow SAME padding of (H, W, C) for a k x k window: output ceil(H / stride)."""
    pads = []
    for n in img.shape[:2]:
        out = -(-n // stride)
        total = max((out - 1) * stride + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(img, pads + [(0, 0)], constant_values=fill), [-(-n // stride) for n in img.shape[:2]]


def std_conv(img, kernel, stride):
    """Weight-standardised convolution, SAME padding, by summing over kernel offsets."""
    kernel = kernel - kernel.mean(axis=(0, 1, 2))
    kernel = kernel / (kernel.std(axis=(0, 1, 2)) + 1e-5)
    k = kernel.shape[0]
    padded, (oh, ow) = same_pad(img, k, stride, 0.0)
    out = np.zeros((oh, ow, kernel.shape[-1]))
    for dy in range(k):
        for dx in range(k):
            window = padded[dy:dy + stride * oh:stride, dx:dx + stride * ow:stride]
            out += window @ kernel[dy, dx]
    return out


def group_norm(img, scale, bias, groups=32, eps=1e-6):
    h, w, c = img.shape
    g = img.reshape(h, w, groups, c // groups)
    mu = g.mean(axis=(0, 1, 3), keepdims=True)
    var = ((g - mu) ** 2).mean(axis=(0, 1, 3), keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(h, w, c) * scale + bias


def max_pool_3x3_s2(img):
    padded, (oh, ow) = same_pad(img, 3, 2, -np.inf)
    out = np.full((oh, ow, img.shape[-1]), -np.inf)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
    return out


def resnet_stem(f, img):
    relu = lambda a: np.maximum(a, 0)
    gn = lambda a, name: group_norm(a, f[name + "/scale"], f[name + "/bias"])
    x = max_pool_3x3_s2(relu(gn(std_conv(img, f["conv_root/kernel"], 2), "gn_root")))
    stage = 1
    while f"block{stage}/unit1/conv1/kernel" in f:
        unit = 1
        while f"block{stage}/unit{unit}/conv1/kernel" in f:
            u = f"block{stage}/unit{unit}/"
            stride = 2 if stage > 1 and unit == 1 else 1
            residual = x
            if u + "conv_proj/kernel" in f:
                residual = gn(std_conv(x, f[u + "conv_proj/kernel"], stride), u + "gn_proj")
            y = relu(gn(std_conv(x, f[u + "conv1/kernel"], 1), u + "gn1"))
            y = relu(gn(std_conv(y, f[u + "conv2/kernel"], stride), u + "gn2"))
            y = gn(std_conv(y, f[u + "conv3/kernel"], 1), u + "gn3")
            x = relu(residual + y)
            unit += 1
        stage += 1
    return x


def sincos_2d(gh, gw, width):
    """big_vision / MoCo v3 fixed embedding, one patch at a time: [sin x, cos x, sin y, cos y]."""
    q = width // 4
    freqs = [1.0 / 10000 ** (i / (q - 1)) for i in range(q)]
    rows = []
    for i in range(gh):
        for j in range(gw):
            rows.append([math.sin(j * w) for w in freqs] + [math.cos(j * w) for w in freqs]
                        + [math.sin(i * w) for w in freqs] + [math.cos(i * w) for w in freqs])
    return np.array(rows)


def attention(q_in, kv_in, f, pre, heads, size_log=None):
    q = np.einsum("nd,dhk->nhk", q_in, f[pre + "query/kernel"]) + f[pre + "query/bias"]
    k = np.einsum("nd,dhk->nhk", kv_in, f[pre + "key/kernel"]) + f[pre + "key/bias"]
    v = np.einsum("nd,dhk->nhk", kv_in, f[pre + "value/kernel"]) + f[pre + "value/bias"]
    out = np.zeros_like(q)
    for h in range(heads):
        logits = q[:, h] @ k[:, h].T / math.sqrt(q.shape[-1])
        if size_log is not None:
            logits = logits + size_log[None, :]
        out[:, h] = softmax(logits) @ v[:, h]
    return np.einsum("nhk,hkd->nd", out, f[pre + "out/kernel"]) + f[pre + "out/bias"], (q, k, v, out)


# ------------------------------------------------------------------ forward
def forward(flat, images, *, heads, gelu_exact=False, plan=None, metric_name="k", prop_attn=True,
            pool="tok", features=False, eps=1e-6):
    """Logits for images (B, H, W, 3). plan: list per block of None | ("global", r) |
    ("reduce", r, rule, combine, margin) |
    ("local", r_window, window, grid) | ("drop", r) | ("truncate", tokens_out).
    pool: "tok" (class token), "gap" (size-weighted mean), "map" (MAPHead_0 probe). A file without
    position embeddings gets big_vision's sin-cos ones. features: the pooled feature, no head."""
    return np.stack([_forward_one(flat, img, heads, gelu_exact, plan, metric_name, prop_attn, pool, features)
                     for img in np.asarray(images, np.float64)])


def _forward_one(flat, img, heads, gelu_exact, plan, metric_name, prop_attn, pool, features):
    f = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    if "conv_root/kernel" in f:
        img = resnet_stem(f, img)
    kernel = f["embedding/kernel"]  # (p, p, C, D)
    p = kernel.shape[0]
    gh, gw = img.shape[0] // p, img.shape[1] // p
    patches = []
    for i in range(gh):
        for j in range(gw):
            patch = img[i * p:(i + 1) * p, j * p:(j + 1) * p]
            patches.append(np.einsum("hwc,hwcd->d", patch, kernel) + f["embedding/bias"])
    x = np.array(patches)
    if "Transformer/posembed_input/pos_embedding" not in f:
        x = x + sincos_2d(gh, gw, x.shape[1])
    prefix = [f[k][0] for k in ("cls", "dist") if k in f]
    pre_n = len(prefix)
    if pre_n:
        x = np.concatenate(prefix + [x])
    if "Transformer/posembed_input/pos_embedding" in f:
        x = x + f["Transformer/posembed_input/pos_embedding"][0]
    size = np.ones(len(x))
    pos = np.array([[-1.0, -1.0]] * pre_n + [[i, j] for i in range(gh) for j in range(gw)])
    depth = len({k.split("/")[1] for k in f if k.startswith("Transformer/encoderblock_")})
    plan = plan or [None] * depth
    merged = False
    for b in range(depth):
        pre = f"Transformer/encoderblock_{b}/"
        y = layer_norm(x, f[pre + "LayerNorm_0/scale"], f[pre + "LayerNorm_0/bias"])
        att = pre + "MultiHeadDotProductAttention_1/"
        if plan[b] is not None and plan[b][0] == "mctf_ahead":  # MCTF one step ahead, the whole block
            x, size, pos = _mctf_ahead_attention(f, att, pre, x, y, size, pos, heads, plan[b][1], pre_n,
                                                 prop_attn and merged, metric_name)
            merged = True
            y = layer_norm(x, f[pre + "LayerNorm_2/scale"], f[pre + "LayerNorm_2/bias"])
            y = gelu(y @ f[pre + "MlpBlock_3/Dense_0/kernel"] + f[pre + "MlpBlock_3/Dense_0/bias"], gelu_exact)
            x = x + y @ f[pre + "MlpBlock_3/Dense_1/kernel"] + f[pre + "MlpBlock_3/Dense_1/bias"]
            continue
        q = np.einsum("nd,dhk->nhk", y, f[att + "query/kernel"]) + f[att + "query/bias"]
        k = np.einsum("nd,dhk->nhk", y, f[att + "key/kernel"]) + f[att + "key/bias"]
        v = np.einsum("nd,dhk->nhk", y, f[att + "value/kernel"]) + f[att + "value/bias"]
        dh = q.shape[-1]
        out = np.zeros_like(q)
        received = np.zeros(len(x))
        cls_attention = np.zeros(len(x))
        for h in range(heads):
            logits = q[:, h] @ k[:, h].T / math.sqrt(dh)
            if prop_attn and merged:
                logits = logits + np.log(size)[None, :]
            out[:, h] = softmax(logits) @ v[:, h]
            received += softmax(logits).mean(0) / heads
            cls_attention += softmax(logits)[0]
        x = x + np.einsum("nhk,hkd->nd", out, f[att + "out/kernel"]) + f[att + "out/bias"]
        feats = {"k": k.mean(1), "q": q.mean(1), "v": v.mean(1), "x_pre": y, "x_attn": out.reshape(len(x), -1)}
        op = plan[b]
        if op is not None:
            metric = feats[metric_name]
            if op[0] == "global":
                groups, _ = bipartite_groups(metric, op[1], protect_first=pre_n > 0, protect_second=pre_n == 2)
                x, size, pos = combine(groups, x, size, pos)
                merged = True
            elif op[0] == "local":
                groups = local_groups(metric[pre_n:], pos[pre_n:], op[1], op[2], op[3])
                groups = [[p] for p in range(pre_n)] + [[t + pre_n for t in g] for g in groups]
                x, size, pos = combine(groups, x, size, pos)
                merged = True
            elif op[0] == "reduce":  # ("reduce", r, rule, combine, margin)
                _, r, rule, how, margin = op
                if rule == "tome":
                    groups, _ = bipartite_groups(metric, r, protect_first=pre_n > 0)
                    groups = [sorted(g, key=lambda i: (i % 2 == 0, i)) for g in groups]  # the B receiver first
                elif rule == "pitome":
                    groups = pitome_groups(metric, r, margin, pre_n)
                elif rule == "atm":
                    groups = atm_groups(metric, size, r, pre_n)
                else:
                    groups = mctf_groups(metric, received, size, r, pre_n)
                x, size, pos = reduce_combine(groups, x, size, pos, how, received)
                merged = True
            elif op[0] == "ppt":  # ("ppt", r, threshold): pool (ToMe) or prune, per image
                _, r, threshold = op
                scores = cls_attention * np.linalg.norm(v.reshape(len(x), -1), axis=1)
                scores = scores[1:] / scores[1:].sum()
                if np.var(scores, ddof=1) < threshold:
                    groups, _ = bipartite_groups(metric, r, protect_first=pre_n > 0)
                    x, size, pos = combine(groups, x, size, pos)
                else:
                    order = [0] + [1 + i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i))]
                    keep = order[:len(x) - r]
                    x, size, pos = x[keep], size[keep], pos[keep]
                merged = True
            elif op[0] == "truncate":  # free merging: the first tokens survive, nothing else changes
                x, size, pos = x[:op[1]], size[:op[1]], pos[:op[1]]
            elif op[0] == "drop":
                norms = np.linalg.norm(metric, axis=-1)
                order = sorted(range(pre_n, len(x)), key=lambda i: (norms[i], -i))
                drop = set(order[:op[1]])
                keep = [i for i in range(len(x)) if i not in drop]
                x, size, pos = x[keep], size[keep], pos[keep]
        y = layer_norm(x, f[pre + "LayerNorm_2/scale"], f[pre + "LayerNorm_2/bias"])
        y = gelu(y @ f[pre + "MlpBlock_3/Dense_0/kernel"] + f[pre + "MlpBlock_3/Dense_0/bias"], gelu_exact)
        x = x + y @ f[pre + "MlpBlock_3/Dense_1/kernel"] + f[pre + "MlpBlock_3/Dense_1/bias"]
    x = layer_norm(x, f["Transformer/encoder_norm/scale"], f["Transformer/encoder_norm/bias"])
    if pool == "tok" and pre_n == 2:
        if features or "head/kernel" not in f:
            return (x[0] + x[1]) / 2
        return (x[0] @ f["head/kernel"] + f["head/bias"] + x[1] @ f["head_dist/kernel"] + f["head_dist/bias"]) / 2
    if pool == "tok":
        x = x[0]
    elif pool == "gap":
        x = (x * size[:, None]).sum(0) / size.sum()
    else:
        m = "MAPHead_0/"
        y, _ = attention(f[m + "probe"][0], x, f, m + "MultiHeadDotProductAttention_0/", heads,
                         np.log(size) if prop_attn and merged else None)
        z = layer_norm(y, f[m + "LayerNorm_0/scale"], f[m + "LayerNorm_0/bias"])
        z = gelu(z @ f[m + "MlpBlock_0/Dense_0/kernel"] + f[m + "MlpBlock_0/Dense_0/bias"], gelu_exact)
        x = (y + z @ f[m + "MlpBlock_0/Dense_1/kernel"] + f[m + "MlpBlock_0/Dense_1/bias"])[0]
    if "pre_logits/kernel" in f:
        x = np.tanh(x @ f["pre_logits/kernel"] + f["pre_logits/bias"])
    if features or "head/kernel" not in f:
        return x
    return x @ f["head/kernel"] + f["head/bias"]


def _mctf_ahead_attention(f, att, pre, x, y, size, pos, heads, r, pre_n, with_sizes, metric_name):
    """MCTF's released block up to the attention output: attention map on the input, merge of the
    input tokens (metric x itself) and of the map (keys summed per group, queries averaged with the
    pooling weights size x attention received), values from the merged tokens."""
    q = np.einsum("nd,dhk->nhk", y, f[att + "query/kernel"]) + f[att + "query/bias"]
    k = np.einsum("nd,dhk->nhk", y, f[att + "key/kernel"]) + f[att + "key/bias"]
    dh = q.shape[-1]
    maps = []
    for h in range(heads):
        logits = q[:, h] @ k[:, h].T / math.sqrt(dh)
        if with_sizes:
            logits = logits + np.log(size)[None, :]
        maps.append(softmax(logits))
    received = np.mean(maps, axis=(0, 1))
    metric = {"x": x, "x_pre": y, "k": k.mean(1), "q": q.mean(1)}[metric_name]
    groups = mctf_groups(metric, received, size, r, pre_n)
    weight = size * received
    new_x, new_size, new_pos = reduce_combine(groups, x, size, pos, "attn", received)
    y2 = layer_norm(new_x, f[pre + "LayerNorm_0/scale"], f[pre + "LayerNorm_0/bias"])
    v = np.einsum("nd,dhk->nhk", y2, f[att + "value/kernel"]) + f[att + "value/bias"]
    out = np.zeros((len(groups), heads, dh))
    for h in range(heads):
        keys = np.stack([maps[h][:, g].sum(1) for g in groups], axis=1)  # (n, T): attention paid to each group
        rows = np.stack([(weight[g, None] * keys[g]).sum(0) / weight[g].sum() for g in groups])  # (T, T)
        out[:, h] = rows @ v[:, h]
    new_x = new_x + np.einsum("nhk,hkd->nd", out, f[att + "out/kernel"]) + f[att + "out/bias"]
    return new_x, new_size, new_pos


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
        elif op.kind == "global" and op.ahead:
            ops.append(("mctf_ahead", op.r))
        elif op.kind == "global" and op.rule == "ppt":
            ops.append(("ppt", op.r, op.threshold))
        elif op.kind == "global" and (op.rule, op.combine) != ("tome", "mean"):
            ops.append(("reduce", op.r, op.rule, op.combine, op.margin))
        else:
            ops.append((op.kind, op.r))
    return ops


# ------------------------------------------------------------------ big_vision's text tower
def text_forward(flat, tokens, *, heads, pool="last", eps=1e-6, eos_mask=None):
    """Text embeddings (B, E) of token ids (B, L), one text at a time, from the flat keys of a
    two-tower file's txt/ group (big_vision's names): embedding rows + position embedding, blocks
    (LayerNorm_0, attention, LayerNorm_1, MlpBlock_0; tanh GELU; no mask), encoder_norm, pool, head.
    eos_mask: an EOS id; the positions after a text's first EOS are then masked as keys (the
    attention_mask transformers 5's SiglipTokenizer returns)."""
    f = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    depth = len({k.split("/")[1] for k in f if k.startswith("Encoder_0/encoderblock_")})
    out = []
    for ids in np.asarray(tokens):
        x = f["Embed_0/embedding"][ids] + f["pos_embedding"][0]
        mask = None
        if eos_mask is not None and eos_mask in ids.tolist():
            mask = np.where(np.arange(len(ids)) <= ids.tolist().index(eos_mask), 0.0, -np.inf)
        for i in range(depth):
            pre = f"Encoder_0/encoderblock_{i}/"
            y = layer_norm(x, f[pre + "LayerNorm_0/scale"], f[pre + "LayerNorm_0/bias"], eps)
            y, _ = attention(y, y, f, pre + "MultiHeadDotProductAttention_0/", heads, size_log=mask)
            x = x + y
            y = layer_norm(x, f[pre + "LayerNorm_1/scale"], f[pre + "LayerNorm_1/bias"], eps)
            y = gelu(y @ f[pre + "MlpBlock_0/Dense_0/kernel"] + f[pre + "MlpBlock_0/Dense_0/bias"], False)
            x = x + y @ f[pre + "MlpBlock_0/Dense_1/kernel"] + f[pre + "MlpBlock_0/Dense_1/bias"]
        x = layer_norm(x, f["Encoder_0/encoder_norm/scale"], f["Encoder_0/encoder_norm/bias"], eps)
        if pool == "last":
            z = x[-1]
        elif pool == "first":
            z = x[0]
        elif pool == "gap":
            z = x.mean(0)
        else:  # map
            m = "MAPHead_0/"
            y, _ = attention(f[m + "probe"][0], x, f, m + "MultiHeadDotProductAttention_0/", heads)
            w = layer_norm(y, f[m + "LayerNorm_0/scale"], f[m + "LayerNorm_0/bias"], eps)
            w = gelu(w @ f[m + "MlpBlock_0/Dense_0/kernel"] + f[m + "MlpBlock_0/Dense_0/bias"], False)
            z = (y + w @ f[m + "MlpBlock_0/Dense_1/kernel"] + f[m + "MlpBlock_0/Dense_1/bias"])[0]
        if "head/kernel" in f:
            z = z @ f["head/kernel"] + f["head/bias"]
        out.append(z)
    return np.stack(out)


def zero_shot_logits(img_features, class_text_embeddings, t, b):
    """SigLIP/CLIP scores: cos(image, class) x exp(t) + b, class embeddings as given (normalised here
    again, which changes nothing for normalised ones)."""
    zi = img_features / (np.linalg.norm(img_features, axis=-1, keepdims=True) + 1e-8)
    zt = class_text_embeddings / (np.linalg.norm(class_text_embeddings, axis=-1, keepdims=True) + 1e-8)
    return zi @ zt.T * math.exp(t) + b


def timm_forward(sd, images, *, heads, gelu_kind="exact", eps=1e-6, r=0, pool_features=False):
    """A timm ViT state dict (PyTorch layouts, fused qkv) run as timm's VisionTransformer runs it, in
    timm's token order [cls, registers, patches], with LayerScale (ls1/ls2 gamma), register tokens
    (reg_token), a pre-blocks LayerNorm (norm_pre), no patch bias, position embeddings on every token
    or (no_embed_class: as many as patches) on the patches only. r > 0: ToMe (k metric, proportional
    attention) on the class and patch tokens of every block; registers are never merged.
    Returns the head's logits, or (pool_features) the class token after the final norm."""
    f = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    act = {"exact": lambda z: gelu(z, True), "tanh": lambda z: gelu(z, False),
           "quick": lambda z: z / (1 + np.exp(-1.702 * z))}[gelu_kind]
    ln = lambda z, name: _layer_norm(z, f[name + ".weight"], f[name + ".bias"], eps)
    w = f["patch_embed.proj.weight"]  # (D, C, p, p)
    p, width = w.shape[-1], w.shape[0]
    regs = f["reg_token"][0] if "reg_token" in f else np.zeros((0, width))
    out = []
    for img in np.asarray(images, np.float64):
        gh, gw = img.shape[0] // p, img.shape[1] // p
        patches = np.array([np.einsum("hwc,dchw->d", img[i * p:(i + 1) * p, j * p:(j + 1) * p], w)
                            for i in range(gh) for j in range(gw)])
        patches = patches + f.get("patch_embed.proj.bias", 0.0)
        pe = f["pos_embed"][0]
        if len(pe) == gh * gw:  # no_embed_class: the patches only
            x = np.concatenate([f["cls_token"][0], regs, patches + pe])
        elif len(pe) == 1 + gh * gw:  # the class token and patches, registers after (transformers' DINOv2)
            x = np.concatenate([f["cls_token"][0] + pe[:1], regs, patches + pe[1:]])
        else:  # every token
            x = np.concatenate([f["cls_token"][0], regs, patches]) + pe
        if "norm_pre.weight" in f:
            x = ln(x, "norm_pre")
        size = np.ones(len(x))
        pos = np.zeros((len(x), 2))
        nreg = len(regs)
        depth = len({k.split(".")[1] for k in f if k.startswith("blocks.")})
        for b in range(depth):
            pre = f"blocks.{b}."
            y = ln(x, pre + "norm1")
            qkv = y @ f[pre + "attn.qkv.weight"].T + f[pre + "attn.qkv.bias"]
            q, k, v = (qkv[:, i * width:(i + 1) * width].reshape(len(x), heads, -1) for i in range(3))
            attn = np.zeros_like(q)
            for h in range(heads):
                logits = q[:, h] @ k[:, h].T / math.sqrt(q.shape[-1]) + (np.log(size)[None] if r else 0)
                attn[:, h] = softmax(logits) @ v[:, h]
            a = attn.reshape(len(x), width) @ f[pre + "attn.proj.weight"].T + f[pre + "attn.proj.bias"]
            x = x + a * f.get(pre + "ls1.gamma", 1.0)
            if r:  # merge the class token and patches; the registers stay where they are
                keep = [0] + list(range(1 + nreg, len(x)))
                groups, _ = bipartite_groups(k.mean(1)[keep], r, protect_first=True)
                mx, ms, mp = combine(groups, x[keep], size[keep], pos[keep])
                x = np.concatenate([mx[:1], x[1:1 + nreg], mx[1:]])
                size = np.concatenate([ms[:1], size[1:1 + nreg], ms[1:]])
                pos = np.concatenate([mp[:1], pos[1:1 + nreg], mp[1:]])
            y = ln(x, pre + "norm2")
            m = act(y @ f[pre + "mlp.fc1.weight"].T + f[pre + "mlp.fc1.bias"]) @ f[pre + "mlp.fc2.weight"].T
            x = x + (m + f[pre + "mlp.fc2.bias"]) * f.get(pre + "ls2.gamma", 1.0)
        feat = ln(x, "norm")[0]
        if pool_features or "head.weight" not in f:
            out.append(feat)
        else:
            out.append(feat @ f["head.weight"].T + f.get("head.bias", 0.0))
    return np.array(out)
