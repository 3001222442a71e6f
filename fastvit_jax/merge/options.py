"""MergeOptions: what the user asks of token merging, as one frozen value.

Parsed once from the command line (`fastvit_jax.cli.arguments`), stored whole in every result row and
JSON output (`to_dict` / `from_dict`), and turned into a static per-block schedule by
`make_plan(config, options)`. Options say what was asked; the plan says what each block does
(`skip=None`, `transition=None`, `prop_attn=None` are resolved here or there from the method's record).

The methods are records in `fastvit_jax.merge.methods` (one module each: none, tome, dfe, lgtm,
drop, pitome, tofu, mctf, ppt, atm). `reducer` composes one method's global blocks with another's schedule:
`--method lgtm --reducer pitome` merges in windows first, then with PiToMe in the global blocks.

Schedules (how many tokens each merging block removes), one of:
  r          a constant r per block (ToMe's int)
  r, inflect ToMe's (r, inflect): r per block rises (inflect > 0) or falls (< 0) linearly over the
             merging blocks around r, as tome/utils.py parse_r computes it
  r_list     an explicit r per block from block 0 (ToMe's list; missing blocks merge nothing)
  keep       a keep ratio: each merging block keeps ceil(T * keep) of its T non-prefix tokens,
             r = floor(T - T * keep) (PiToMe's `ratio`)
"""

from __future__ import annotations

import dataclasses
import math
import operator

from fastvit_jax.errors import FastViTError
from fastvit_jax.merge import methods
from fastvit_jax.merge.methods import METHODS, REDUCERS  # noqa: F401  (re-exported: the CLI's choices)

METRICS = ("k", "q", "v", "x", "x_pre", "x_attn", "random")  # x: the tokens themselves, as they merge
DEFAULT_WINDOW = 7  # the paper's initial LGTM window: 2 x 2 windows on a 14 x 14 grid


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
    """What was asked of merging, one frozen value: the method ("none", "tome", "dfe", "lgtm", ...), its
    schedule (r tokens per block, or keep, r_list, inflect) and knobs (skip, window, metric, ...).
    Every result row, plan file and JSON output stores it whole (to_dict / from_dict); make_plan
    turns it into a MergePlan for a model. Field comments below say what each one does."""

    method: str = "none"
    r: int | float = 0  # tokens merged per block (local blocks: spread over the windows); fractional only with align
    skip: int | None = None  # blocks without merging at the start; None: depth // 6 for dfe/lgtm, else 0
    window: int = DEFAULT_WINDOW  # initial LGTM window
    transition: int | None = None  # number of local LGTM blocks; None: computed as in Algorithm 1
    metric: str | None = None  # similarity feature; None: the method's default (k; MCTF: x)
    prop_attn: bool | None = None  # proportional attention (+ log(size) on the logits); None: the method's default
    reducer: str | None = None  # REDUCERS, for the global blocks of tome/dfe/lgtm; None: the method's own
    prune_blocks: int | None = None  # tofu: blocks [0, prune_blocks) prune; None: depth // 4
    align: int = 0  # token counts after global blocks rounded to the nearest multiple of this (0: exact r)
    inflect: float = 0.0  # ToMe's (r, inflect) schedule; 0: constant r
    r_list: tuple[int, ...] | None = None  # an explicit r per block (replaces r and inflect)
    keep: float | None = None  # keep ratio per merging block (replaces r and inflect)
    threshold: float | None = None  # ppt: token-score variance below which an image pools; None: 7e-5
    size_split: int | None = None  # atm: blocks from this one match by size (small with large); None: 3/4 depth
    # knobs of methods registered beyond the fields above, as sorted (name, value) pairs; to_dict,
    # from_dict, replace and attribute access (options.NAME) treat them like fields
    knobs: tuple = ()

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "knobs":
            raise AttributeError(name)
        declared = methods.knobs().get(name)
        if declared is None:
            raise AttributeError(f"MergeOptions has no option {name!r}")
        return dict(self.knobs).get(name, declared.default)

    def __post_init__(self):
        for name in ("method", "metric", "reducer"):  # names come from plan files too: any JSON value
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise FastViTError(f"{name} must be a name, got {value!r}")
        if self.method not in methods.REGISTRY:
            raise FastViTError(f"unknown method {self.method!r}; allowed: {', '.join(methods.REGISTRY)}")
        if self.method in methods.REGISTRY and self.metric is None:
            object.__setattr__(self, "metric", methods.get(self.method).defaults.get("metric", "k"))
        if self.metric not in METRICS:
            raise FastViTError(f"unknown metric {self.metric!r}; allowed: {', '.join(METRICS)}")
        for name in ("skip", "align"):
            object.__setattr__(self, name, _whole(name, getattr(self, name), allow_none=name == "skip"))
        self._check_knobs()
        object.__setattr__(self, "r", self._checked_r())
        self._check_schedule()
        if self.method == "none":  # the dense model merges nothing, whatever the schedule says
            for name, value in (("r", 0), ("inflect", 0.0), ("r_list", None), ("keep", None)):
                object.__setattr__(self, name, value)
        if self.skip is not None and self.skip < 0:
            raise FastViTError(f"skip must be >= 0, got {self.skip}")
        if self.align < 0:
            raise FastViTError(f"align must be >= 0 (0: no alignment), got {self.align}")
        if self.reducer is not None:
            if self.reducer not in methods.reducer_names():
                raise FastViTError(f"unknown reducer {self.reducer!r}; allowed: {', '.join(methods.reducer_names())}")
            if methods.get(self.method).kind != "global":
                takers = [n for n, m in methods.REGISTRY.items() if m.kind == "global" and not m.reducer]
                raise FastViTError(f"a reducer applies to {', '.join(takers)}, not to method {self.method!r}")
            if methods.get(self.method).reducer and self.reducer != self.method:
                raise FastViTError(f"method {self.method!r} is itself a reducer; reducer {self.reducer!r} contradicts it")
        default = methods.get(self.method).defaults.get("prop_attn", True)
        object.__setattr__(self, "prop_attn", default if self.prop_attn is None else bool(self.prop_attn))

    def _check_knobs(self) -> None:
        """Every method's knobs as their declarations say (merge/knobs.py): the fields, and the others."""
        declared = methods.knobs()
        for name in FIELDS & set(declared):
            object.__setattr__(self, name, declared[name].check(getattr(self, name)))
        extra = dict(self.knobs) if isinstance(self.knobs, (tuple, list, dict)) else None
        if extra is None or not all(isinstance(k, str) for k in extra):
            raise FastViTError(f"knobs must be (name, value) pairs, got {self.knobs!r}")
        unknown = sorted(set(extra) - set(declared) | set(extra) & FIELDS)
        if unknown:
            raise FastViTError(f"unknown merge option(s) {', '.join(unknown)}; allowed: "
                               f"{', '.join(sorted(FIELDS - {'knobs'} | set(declared)))}")
        checked = {k: declared[k].check(v) for k, v in extra.items()}
        object.__setattr__(self, "knobs", tuple(sorted((k, v) for k, v in checked.items() if v is not None)))

    def _checked_r(self) -> int | float:
        """r is a whole number, except with align > 1 on global blocks: there a fractional r is the
        line the aligned token counts follow, so a budget search can place aligned plans between
        two whole r (budget.smallest_r)."""
        r = self.r
        if isinstance(r, float) and r.is_integer():
            r = int(r)
        if isinstance(r, float) and math.isfinite(r):
            if self.align <= 1:
                raise FastViTError(f"r must be an integer (a fractional r needs --align K), got {r!r}")
            if not self.takes_fractional_r:
                raise FastViTError(f"r must be an integer for {self.method}'s local windows, got {r!r}")
        else:
            r = _whole("r", r)
        if r < 0:
            raise FastViTError(f"r must be non-negative, got {r}")
        return r

    @property
    def takes_fractional_r(self) -> bool:
        """Whether r may be fractional: aligned counts on global blocks (LGTM's windows take whole r)."""
        return self.align > 1 and not methods.get(self.method).local_windows

    def _check_schedule(self) -> None:
        try:
            inflect = float(self.inflect)
        except (TypeError, ValueError):
            raise FastViTError(f"inflect must be a number in [-1, 1], got {self.inflect!r}") from None
        if not -1.0 <= inflect <= 1.0:
            raise FastViTError(f"inflect must be in [-1, 1] (ToMe's schedule), got {inflect}")
        object.__setattr__(self, "inflect", inflect)
        if self.r_list is not None:
            if isinstance(self.r_list, (str, bytes)) or not hasattr(self.r_list, "__iter__"):
                raise FastViTError(f"r_list must be a list of integers, got {self.r_list!r}")
            values = tuple(_whole("r_list entry", v) for v in self.r_list)
            if any(v < 0 for v in values):
                raise FastViTError(f"r_list entries must be >= 0, got {list(values)}")
            object.__setattr__(self, "r_list", values)
        if self.keep is not None:
            if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0.0 < self.keep <= 1.0:
                raise FastViTError(f"keep must be a ratio in (0, 1], got {self.keep!r}")
            object.__setattr__(self, "keep", float(self.keep))
        given = [name for name, on in (("r_list", self.r_list is not None), ("keep", self.keep is not None),
                                       ("inflect", inflect != 0.0)) if on]
        if len(given) > 1:
            raise FastViTError(f"one schedule at a time: {' and '.join(given)} were both given")
        if given and given[0] != "inflect" and self.r:
            raise FastViTError(f"{given[0]} replaces r: give one of them (r={self.r})")

    @property
    def schedule(self) -> str:
        """The schedule in words, as plans and rows show it."""
        if self.r_list is not None:
            return "list " + ",".join(map(str, self.r_list))
        if self.keep is not None:
            return f"keep {self.keep:g}"
        return f"r {self.r:g}" + (f" inflect {self.inflect:g}" if self.inflect else "")

    @property
    def merges(self) -> bool:
        """Whether any block is asked to merge (the dense model and r = 0 are not)."""
        if self.method == "none":
            return False
        if self.r_list is not None:
            return any(self.r_list)
        return self.keep is not None and self.keep < 1.0 or self.r > 0

    def replace(self, **changes) -> "MergeOptions":
        fields = {k: v for k, v in changes.items() if k in FIELDS}
        extra = {k: v for k, v in changes.items() if k not in FIELDS}
        if extra:
            fields["knobs"] = tuple({**dict(self.knobs), **extra}.items())
        return dataclasses.replace(self, **fields)

    @property
    def resolved_reducer(self) -> str:
        """What the global blocks do: the method itself for pitome/tofu/mctf, else `reducer` or tome."""
        return self.method if methods.get(self.method).reducer else (self.reducer or "tome")

    def resolved_skip(self, depth: int) -> int:
        skip = self.skip if self.skip is not None else methods.get(self.method).default_skip(depth)
        if skip > depth:
            raise FastViTError(f"skip must be in [0, {depth}], got {skip}")
        return skip

    @property
    def label(self) -> str:
        reducer = f"+{self.reducer}" if self.reducer not in (None, "tome", self.method) else ""
        schedule = self.schedule.replace("r ", "r=", 1).replace("keep ", "keep=").replace("list ", "r=[") \
            .replace(" inflect ", " inflect=")
        schedule += "]" if self.r_list is not None else ""
        return (f"{self.method}{reducer} {schedule}" + (f" align={self.align}" if self.align > 1 else "")
                + "".join(f" {k}={v:g}" for k, v in self.knobs))

    def to_dict(self) -> dict:
        """Every field by name, registered methods' other knobs beside them (not nested)."""
        d = dataclasses.asdict(self)
        d["r_list"] = None if self.r_list is None else list(self.r_list)
        del d["knobs"]
        return {**d, **dict(self.knobs)}

    @classmethod
    def from_dict(cls, d: dict) -> "MergeOptions":
        """The inverse of to_dict; a key that is neither a field nor a registered knob is refused."""
        if not isinstance(d, dict):
            raise FastViTError(f"merge options must be a JSON object, got {type(d).__name__}")
        fields = {k: v for k, v in d.items() if k in FIELDS and k != "knobs"}
        return cls(**fields, knobs=tuple((k, v) for k, v in d.items() if k not in FIELDS))


FIELDS = frozenset(f.name for f in dataclasses.fields(MergeOptions))


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
    """'tome,dfe' -> ['tome', 'dfe'], each a registered method."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in methods.REGISTRY]
    if bad or not names:
        raise FastViTError(f"bad --methods {spec!r}: allowed: {', '.join(methods.REGISTRY)} (comma-separated)")
    return names


def parse_points(spec: str) -> list[MergeOptions]:
    """'none:0,tome:8' -> [MergeOptions('none', 0), MergeOptions('tome', 8)]."""
    try:
        pairs = [item.split(":") for item in spec.split(",")]
        return [MergeOptions(method, int(r)) for method, r in pairs]
    except ValueError:
        raise FastViTError(f"bad configurations {spec!r}: use METHOD:R,... (e.g. none:0,tome:8)") from None
