"""A method's own settings, declared once (`Knob`): fastvit's flags, MergeOptions' checks, plan
files and tune's search space are made from the declarations in the method registry."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

from fastvit_jax.errors import FastViTError


@dataclasses.dataclass(frozen=True)
class Knob:
    """One setting of a method: MergeOptions key `name`, flag --name-with-dashes."""

    name: str
    type: type  # int or float
    help: str
    default: Any = None  # None: the method decides (its help says how)
    low: float | None = None  # inclusive bounds, None: unbounded
    high: float | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value):
        """value as the knob's type, or one FastViTError naming the knob and what it takes."""
        if value is None:
            return None
        try:
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            checked = operator.index(value) if self.type is int else float(value)
        except (TypeError, ValueError):
            raise FastViTError(f"{self.name} must be {'an integer' if self.type is int else 'a number'}, "
                               f"got {value!r}") from None
        if self.type is float and not math.isfinite(checked):
            raise FastViTError(f"{self.name} must be finite, got {value!r}")
        if self.low is not None and checked < self.low:
            raise FastViTError(f"{self.name} must be >= {self.low:g}, got {checked}")
        if self.high is not None and checked > self.high:
            raise FastViTError(f"{self.name} must be <= {self.high:g}, got {checked}")
        return checked
