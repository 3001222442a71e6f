"""MergeOptions: what the user asks of token merging, as one frozen value.

Parsed once from the command line (`fastvit_jax.arguments`), stored whole in every result row and
JSON output (`to_dict` / `from_dict`), and turned into a static per-block schedule by
`make_plan(config, options)`. Options say what was asked; the plan says what each block does
(`skip=None` and `transition=None` are resolved there).

Methods (paper, Algorithm 1):
  none  dense model
  tome  ToMe: global merging of r tokens in every block from `skip` (default 0)
  dfe   Dense Feature Extractor: ToMe, but the first `skip` blocks (default depth // 6) do not merge
  lgtm  DFE + Local-Global Token Merging: after the skip, `transition` blocks merge inside windows
        (the window grows by one each block), then global merging
  drop  remove the r tokens with the lowest feature norm, per block from `skip` (default 0)

Reducers published since (training-free; `fastvit_jax.merge.reducers`), global like tome:
  pitome  PiToMe: the 2r tokens of highest energy are the candidates, the rest are protected
  tofu    ToFu: ToMe's matching; the first `prune_blocks` blocks prune (the receiver is unchanged),
          later ones merge by MLERP (the size-weighted mean rescaled to the largest member norm)
  mctf    MCTF: edges weighted by similarity, informativeness and size; bidirectional;
          attention-weighted pooling
`reducer` composes one of them with a schedule: `--method lgtm --reducer pitome` merges in windows
first, then with PiToMe in the global blocks; `--method dfe --reducer mctf` skips depth // 6 blocks.
"""

from __future__ import annotations

import dataclasses
import operator

from fastvit_jax.errors import FastViTError

REDUCERS = ("tome", "pitome", "tofu", "mctf")  # how a global block pairs and combines tokens
METHODS = ("none", "tome", "dfe", "lgtm", "drop") + REDUCERS[1:]
METRICS = ("k", "q", "v", "x_pre", "x_attn", "random")
DEFAULT_WINDOW = 7  # the paper's initial LGTM window: 2 x 2 windows on a 14 x 14 grid
SKIPPING_METHODS = ("dfe", "lgtm")  # methods whose default skip is depth // 6


def _whole(name: str, value, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise FastViTError(f"{name} must be an integer, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class MergeOptions:
    method: str = "none"
    r: int = 0  # tokens merged per block (for local blocks: spread over the windows)
    skip: int | None = None  # blocks without merging at the start; None: depth // 6 for dfe/lgtm, else 0
    window: int = DEFAULT_WINDOW  # initial LGTM window
    transition: int | None = None  # number of local LGTM blocks; None: computed as in Algorithm 1
    metric: str = "k"  # similarity feature
    prop_attn: bool = True  # proportional attention (+ log(size) on the attention logits)
    reducer: str | None = None  # REDUCERS, for the global blocks of tome/dfe/lgtm; None: the method's own
    prune_blocks: int | None = None  # tofu: blocks [0, prune_blocks) prune; None: depth // 4
    align: int = 0  # token counts after global blocks rounded to the nearest multiple of this (0: exact r)

    def __post_init__(self):
        if self.method not in METHODS:
            raise FastViTError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.metric not in METRICS:
            raise FastViTError(f"unknown metric {self.metric!r}; allowed: {', '.join(METRICS)}")
        for name in ("r", "window", "skip", "transition", "prune_blocks", "align"):
            object.__setattr__(self, name, _whole(name, getattr(self, name),
                                                  allow_none=name in ("skip", "transition", "prune_blocks")))
        if self.r < 0:
            raise FastViTError(f"r must be a non-negative integer, got {self.r}")
        if self.method == "none":  # the dense model merges nothing, whatever r says
            object.__setattr__(self, "r", 0)
        if self.window < 2:
            raise FastViTError(f"window must be >= 2, got {self.window}")
        if self.skip is not None and self.skip < 0:
            raise FastViTError(f"skip must be >= 0, got {self.skip}")
        if self.transition is not None and self.transition < 0:
            raise FastViTError(f"transition must be >= 0, got {self.transition}")
        if self.align < 0:
            raise FastViTError(f"align must be >= 0 (0: no alignment), got {self.align}")
        if self.prune_blocks is not None and self.prune_blocks < 0:
            raise FastViTError(f"prune_blocks must be >= 0, got {self.prune_blocks}")
        if self.reducer is not None:
            if self.reducer not in REDUCERS:
                raise FastViTError(f"unknown reducer {self.reducer!r}; allowed: {', '.join(REDUCERS)}")
            if self.method in ("none", "drop"):
                raise FastViTError(f"a reducer applies to tome, dfe and lgtm, not to method {self.method!r}")
            if self.method in REDUCERS[1:] and self.reducer != self.method:
                raise FastViTError(f"method {self.method!r} is itself a reducer; reducer {self.reducer!r} contradicts it")
        object.__setattr__(self, "prop_attn", bool(self.prop_attn))

    def replace(self, **changes) -> "MergeOptions":
        return dataclasses.replace(self, **changes)

    @property
    def resolved_reducer(self) -> str:
        """What the global blocks do: the method itself for pitome/tofu/mctf, else `reducer` or tome."""
        return self.method if self.method in REDUCERS[1:] else (self.reducer or "tome")

    def resolved_prune_blocks(self, depth: int) -> int:
        return self.prune_blocks if self.prune_blocks is not None else depth // 4

    def resolved_skip(self, depth: int) -> int:
        skip = self.skip if self.skip is not None else (depth // 6 if self.method in SKIPPING_METHODS else 0)
        if skip > depth:
            raise FastViTError(f"skip must be in [0, {depth}], got {skip}")
        return skip

    @property
    def label(self) -> str:
        reducer = f"+{self.reducer}" if self.reducer not in (None, "tome", self.method) else ""
        return f"{self.method}{reducer} r={self.r}" + (f" align={self.align}" if self.align > 1 else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MergeOptions":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FastViTError(f"unknown merge option(s) {', '.join(unknown)}; "
                               f"allowed: {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)


def parse_r(spec: str) -> list[int]:
    """'0:24:2' -> 0, 2, ..., 24 (end inclusive); '8,13,16' -> [8, 13, 16]."""
    try:
        if ":" in spec:
            parts = [int(x) for x in spec.split(":")]
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            if step <= 0 or len(parts) > 3:
                raise ValueError
            values = list(range(start, stop + 1, step))
        else:
            values = [int(x) for x in spec.split(",")]
    except ValueError:
        raise FastViTError(f"bad --r {spec!r}: use START:STOP[:STEP] (inclusive) or a comma list") from None
    if not values or min(values) < 0:
        raise FastViTError(f"bad --r {spec!r}: " + ("an empty range (START > STOP)" if not values else
                                                     "r must be >= 0"))
    return list(dict.fromkeys(values))  # each r once


def parse_methods(spec: str) -> list[str]:
    """'tome,dfe' -> ['tome', 'dfe'], each checked against METHODS."""
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise FastViTError(f"bad --methods {spec!r}: allowed: {', '.join(METHODS)} (comma-separated)")
    return methods


def parse_points(spec: str) -> list[MergeOptions]:
    """'none:0,tome:8' -> [MergeOptions('none', 0), MergeOptions('tome', 8)]."""
    try:
        pairs = [item.split(":") for item in spec.split(",")]
        return [MergeOptions(method, int(r)) for method, r in pairs]
    except ValueError:
        raise FastViTError(f"bad configurations {spec!r}: use METHOD:R,... (e.g. none:0,tome:8)") from None
