"""Dense Feature Extractor (the paper, Section 3): ToMe, but the first depth // 6 blocks keep every
token, so the early features the later blocks build on are not merged away."""

METHOD = {"name": "dfe", "summary": "Dense Feature Extractor: ToMe after depth // 6 dense blocks",
          "default_skip": lambda depth: depth // 6}
