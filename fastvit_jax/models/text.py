"""big_vision's text tower (models/proj/image_text/text_transformer.py) in Flax linen, its parameter
tree the checkpoint's `txt/` tree:

  Embed_0/embedding (vocab, width), pos_embedding (1, max_len, width),
  Encoder_0/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                              LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}},
  Encoder_0/encoder_norm, [MAPHead_0], [head].

No attention mask: padding tokens attend and are attended to, as in big_vision; the "last" pool
reads the final position, which sticky-EOS tokenisation makes the EOS or a pad.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastvit_jax.errors import FastViTError
from fastvit_jax.models.vit import MAPHead, MlpBlock, MultiHeadDotProductAttention
from fastvit_jax.util.tree import flatten

POOLS = ("last", "first", "gap", "max", "map")  # big_vision's pool_type values ("mean" = "gap", "gmp" = "max")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    max_len: int  # tokens per text: the position embedding's length
    embed_dim: int = 0  # output of the `head` projection; 0: no head, the pooled feature is the embedding
    pool: str = "last"
    gelu: str = "tanh"  # flax nn.gelu, as big_vision trains
    ln_eps: float = 1e-6
    # An EOS id: positions after a text's first EOS are padding, masked as keys, as transformers 5's
    # SiglipTokenizer returns an attention_mask and SiglipModel applies it. None: no mask (big_vision).
    mask_after_eos: int | None = None

    def __post_init__(self):
        if self.pool not in POOLS:
            raise FastViTError(f"text pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.width % self.heads:
            raise FastViTError(f"text width {self.width} is not divisible by heads {self.heads}")

    @property
    def out_dim(self) -> int:
        return self.embed_dim or self.width


class TextBlock(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, x, key_bias=None):
        cfg = self.config
        y = nn.LayerNorm(epsilon=cfg.ln_eps, name="LayerNorm_0")(x)
        y, _ = MultiHeadDotProductAttention(cfg.heads, name="MultiHeadDotProductAttention_0")(y, key_bias)
        x = x + y
        y = nn.LayerNorm(epsilon=cfg.ln_eps, name="LayerNorm_1")(x)
        return x + MlpBlock(cfg.mlp_dim, cfg.gelu, name="MlpBlock_0")(y)


class TextEncoder(nn.Module):
    config: TextConfig

    @nn.compact
    def __call__(self, x, key_bias=None):
        for i in range(self.config.depth):
            x = TextBlock(self.config, name=f"encoderblock_{i}")(x, key_bias)
        return nn.LayerNorm(epsilon=self.config.ln_eps, name="encoder_norm")(x)


class TextTransformer(nn.Module):
    """Token ids (B, max_len) int32 -> text embeddings (B, out_dim), not normalised."""

    config: TextConfig

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        if tokens.shape[-1] != cfg.max_len:
            raise FastViTError(f"texts have {tokens.shape[-1]} tokens, the text tower takes {cfg.max_len}")
        x = nn.Embed(cfg.vocab_size, cfg.width, name="Embed_0")(tokens)
        x = x + self.param("pos_embedding", nn.initializers.normal(stddev=cfg.width ** -0.5),
                           (1, cfg.max_len, cfg.width))
        x = TextEncoder(cfg, name="Encoder_0")(x, padding_mask(tokens, cfg.mask_after_eos))
        if cfg.pool == "last":  # sticky EOS: the last token is the EOS or a pad after it
            x = x[:, -1]
        elif cfg.pool == "first":
            x = x[:, 0]
        elif cfg.pool == "gap":
            x = x.mean(axis=1)
        elif cfg.pool == "max":
            x = x.max(axis=1)
        else:
            x = MAPHead(cfg, name="MAPHead_0")(x)
        if cfg.embed_dim:
            x = nn.Dense(cfg.embed_dim, name="head")(x)
        return x


def padding_mask(tokens, eos: int | None):
    """(B, L) additive key bias: -inf after each text's first EOS, or None (no EOS id: no mask)."""
    if eos is None:
        return None
    is_eos = tokens == eos
    first = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1), tokens.shape[-1] - 1)
    return jnp.where(jnp.arange(tokens.shape[-1])[None, :] <= first[:, None], 0.0, -jnp.inf)


def init_text_params(config: TextConfig, key=None) -> dict:
    key = jax.random.PRNGKey(0) if key is None else key
    return TextTransformer(config).init(key, jnp.zeros((1, config.max_len), jnp.int32))["params"]


def expected_text_shapes(config: TextConfig) -> dict[str, tuple[int, ...]]:

    tokens = jax.ShapeDtypeStruct((1, config.max_len), jnp.int32)
    tree = jax.eval_shape(lambda t: TextTransformer(config).init(jax.random.PRNGKey(0), t), tokens)
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}


def infer_text_config(params: dict, pool: str | None = None) -> TextConfig:
    """The text tower's architecture from its shapes (MAPHead_0 -> pool "map", else big_vision's
    default "last" unless `pool` says otherwise)."""
    try:
        vocab, width = np.shape(params["Embed_0"]["embedding"])
        max_len = np.shape(params["pos_embedding"])[1]
        encoder = params["Encoder_0"]
        depth = sum(1 for k in encoder if re.fullmatch(r"encoderblock_\d+", k))
        block = encoder["encoderblock_0"]
        heads = np.shape(block["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1]
        mlp = np.shape(block["MlpBlock_0"]["Dense_0"]["kernel"])[1]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise FastViTError(f"not a big_vision text tower: missing or misshapen {e}") from None
    head = params.get("head", {}).get("kernel")
    return TextConfig(vocab_size=int(vocab), width=int(width), depth=depth, heads=int(heads), mlp_dim=int(mlp),
                      max_len=int(max_len), embed_dim=0 if head is None else int(np.shape(head)[-1]),
                      pool="map" if "MAPHead_0" in params else (pool or "last"))
