"""How a forward runs, never what it computes (beyond float rounding): one value, built once where a
command starts (`Runtime.from_args`) and handed whole to `make_forward`, the benchmarks, sweeps
and tune. A MergePlan says what each block does; a Runtime says how the program does it.

  dtype              the branches' matmuls: "float32" | "bfloat16" (the residual stream, attention
                     logits, merge feature, matching scores and sizes stay float32)
  examples_per_step  "auto" (a cache-sized slice on CPU, the whole batch elsewhere) | None | N
  merge_impl         "auto" | "gather" (top_k, gathers, scatter-add) | "dense" (comparisons and
                     one-hot matmuls: no sort, scatter or gather); auto = dense on TPU, else gather
  attention          "auto" | "einsum" (matmuls + softmax as written) | "fused"
                     (jax.nn.dot_product_attention: cuDNN's fused kernel on GPUs for bf16/fp16)
  token_buckets      None (every block at its exact token count) | N: blocks whose rule has a
                     padded form run in at most N shared token counts per stretch, padded slots
                     masked, runs of one program scanned (merge/buckets.py): fewer distinct block
                     programs to compile, some FLOPs spent on padding
  tiered             False | True: a merged plan answers with one bucket (blocks scanned: compiles
                     about as fast as the dense model) while its exact program compiles in a
                     background thread, then with the exact one (models/tiered.py)

`resolved(config)` turns every "auto" into what it means on this backend; rows and settings
record the resolved value.
"""

from __future__ import annotations

import dataclasses

import jax

from fastvit_jax.errors import FastViTError

DTYPES = ("float32", "bfloat16")
MERGE_IMPLS = ("auto", "gather", "dense")
ATTENTIONS = ("auto", "einsum", "fused")
# Size of one step's MLP hidden activation (tokens x mlp_dim) on CPU: a third of a 32 MiB L3,
# where the measured optimum lay for ViT-S/16 and ViT-B/16 (BENCHMARKS.md section 2).
CPU_STEP_BYTES = 10 * 2**20


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a forward runs, never what it computes (beyond rounding and the dtype): dtype of the
    attention and MLP matmuls ("float32", "bfloat16"), examples_per_step (a batch run a slice at a
    time: "auto", None or N), merge_impl ("auto", "gather", "dense") and attention ("auto",
    "einsum", "fused"). "auto" resolves per backend (`resolved`)."""

    dtype: str = "float32"
    examples_per_step: int | str | None = "auto"
    merge_impl: str = "auto"
    attention: str = "auto"
    token_buckets: int | None = None
    tiered: bool = False

    def __post_init__(self):
        for name, allowed in (("dtype", DTYPES), ("merge_impl", MERGE_IMPLS), ("attention", ATTENTIONS)):
            if getattr(self, name) not in allowed:
                raise FastViTError(f"unknown {name} {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        object.__setattr__(self, "examples_per_step", _check_steps(self.examples_per_step))
        object.__setattr__(self, "token_buckets", _check_buckets(self.token_buckets))

    @classmethod
    def from_args(cls, args) -> "Runtime":
        return cls(dtype=getattr(args, "dtype", "float32"),
                   examples_per_step=getattr(args, "examples_per_step", "auto"),
                   merge_impl=getattr(args, "merge_impl", "auto"), attention=getattr(args, "attention", "auto"),
                   token_buckets=getattr(args, "token_buckets", None), tiered=getattr(args, "tiered", False))

    def replace(self, **kw) -> "Runtime":
        return dataclasses.replace(self, **kw)

    def resolved(self, config, backend: str | None = None) -> "Runtime":
        """Every "auto" replaced by what it is on `backend` (default: JAX's) for `config`."""
        backend = backend or jax.default_backend()
        steps = auto_examples_per_step(config, backend) if self.examples_per_step == "auto" else self.examples_per_step
        return Runtime(self.dtype, steps, resolve_merge_impl(self.merge_impl, backend),
                       resolve_attention(self.attention, self.dtype, backend), self.token_buckets, self.tiered)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["token_buckets"] is None:  # records written before buckets existed stay equal
            del out["token_buckets"]
        if not out["tiered"]:
            del out["tiered"]
        return out


def _check_steps(value):
    return value if value == "auto" else _positive_or_none(value, "examples per step must be 'auto', 'none'")


def _check_buckets(value):
    return _positive_or_none(value, "token buckets must be 'none'")


def _positive_or_none(value, must: str):
    """None for None/"none"/0, else a positive int; anything else refused as `must` or a positive integer."""
    if value in (None, "none", 0, "0"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 1:
        raise FastViTError(f"{must} or a positive integer, got {value!r}")
    return n


def auto_examples_per_step(config, backend: str | None = None) -> int | None:
    """None (whole batch) off CPU; on CPU the examples whose MLP activation fits CPU_STEP_BYTES.
    Sized in float32 whatever the dtype: XLA:CPU computes bfloat16 in float32 (BENCHMARKS.md section 2)."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    hidden_bytes = config.num_embedded * config.mlp_dim * 4
    return max(1, CPU_STEP_BYTES // hidden_bytes)


def resolve_examples_per_step(value, config) -> int | None:
    """"auto" | None/"none"/0 (whole batch) | a positive int -> int or None."""
    value = _check_steps(value)
    return auto_examples_per_step(config) if value == "auto" else value


def resolve_merge_impl(impl: str = "auto", backend: str | None = None) -> str:
    """"auto" -> "dense" on TPU (its sorts and scatters are slow), else "gather" (measured fastest on
    CPU and as fast on an H200: BENCHMARKS.md section 10); the others as they are."""
    if impl not in MERGE_IMPLS:
        raise FastViTError(f"unknown merge implementation {impl!r}; allowed: {', '.join(MERGE_IMPLS)}")
    if impl != "auto":
        return impl
    return "dense" if (backend or jax.default_backend()) == "tpu" else "gather"


def resolve_attention(attention: str = "auto", dtype: str = "float32", backend: str | None = None) -> str:
    """"auto" -> "fused" on GPUs for bfloat16 (cuDNN's flash kernel), else "einsum" (as fast on CPU
    and bit-for-bit the attention the reference tests pin)."""
    if attention not in ATTENTIONS:
        raise FastViTError(f"unknown attention {attention!r}; allowed: {', '.join(ATTENTIONS)}")
    if attention != "auto":
        return attention
    return "fused" if (backend or jax.default_backend()) == "gpu" and dtype == "bfloat16" else "einsum"
