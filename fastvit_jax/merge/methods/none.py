"""The dense model: every block keeps every token."""

METHOD = {"name": "none", "summary": "the dense model", "kind": "none"}
