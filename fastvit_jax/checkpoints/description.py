"""What a checkpoint says about itself, beside its arrays, and where each statement came from.

A layout module fills a Description from the file's own words (a folder's config.json, timm's
pretrained_cfg, transformers' preprocessor_config.json, the `fastvit_meta` key fastvit writes).
What no file says is filled with a stated assumption, recorded in `sources` as "assumed: ..." so
that `fastvit inspect` and the commands' notes can name it.
"""

from __future__ import annotations

import dataclasses

# The preprocessing fields data.Preprocess takes; a family sets the geometry (square resize or
# shorter-side resize + center crop) and defaults the rest.
PREPROCESS_FIELDS = ("family", "crop_pct", "mean", "std", "interpolation")


@dataclasses.dataclass
class Description:
    layout: str  # vision_transformer | big_vision | timm | transformers
    gelu: str | None = None  # "tanh" | "exact"
    ln_eps: float | None = None
    preprocess: dict = dataclasses.field(default_factory=dict)  # PREPROCESS_FIELDS that the file states
    image_size: int | None = None  # the resolution the file states (sincos2d files cannot show it)
    model_family: str | None = None  # what fastvit_meta calls the model ("deit", "google", ...)
    sources: dict = dataclasses.field(default_factory=dict)  # field -> where its value came from
    labels: tuple | None = None  # the outputs' class names, where the files state them (id2label)

    def state(self, field: str, value, source: str) -> None:
        """Record a value the file states (source: which file or key said it)."""
        if field in PREPROCESS_FIELDS:
            self.preprocess[field] = value
        else:
            setattr(self, field, value)
        self.sources[field] = source

    def assume(self, field: str, value, why: str) -> None:
        """Fill a field the file leaves unsaid, unless it was stated."""
        if field in self.sources:
            return
        self.state(field, value, f"assumed: {why}")

    def stated(self, field: str) -> bool:
        """Whether the file itself says `field` (not assumed, not left unsaid)."""
        return field in self.sources and not self.sources[field].startswith("assumed")

    @property
    def assumed(self) -> dict:
        return {k: v for k, v in self.sources.items() if v.startswith("assumed")}

    def summary(self) -> dict:
        return {"layout": self.layout, "gelu": self.gelu, "ln_eps": self.ln_eps, "preprocess": dict(self.preprocess),
                "image_size": self.image_size, "sources": dict(self.sources)}

    def to_meta(self) -> dict:
        """What `fastvit convert` writes into its output so that the file keeps describing itself."""
        meta = {"family": self.model_family or self.layout, "gelu": self.gelu, "ln_eps": self.ln_eps,
                "preprocessing": self.preprocess.get("family")}
        meta.update({k: v for k, v in self.preprocess.items() if k != "family" and v is not None})
        return {k: v for k, v in meta.items() if v is not None}

    def apply_meta(self, meta: dict, source: str) -> None:
        """Take the fields of a fastvit_meta record (written by `fastvit convert`)."""
        for key, value in meta.items():
            if key == "preprocessing":
                self.state("family", value, source)
            elif key == "family":
                self.model_family = value
            elif key in PREPROCESS_FIELDS or key in ("gelu", "ln_eps", "image_size"):
                self.state(key, tuple(value) if isinstance(value, list) else value, source)
