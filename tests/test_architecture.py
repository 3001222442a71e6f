"""The house rules of the package, checked on its import graph (README "Architecture"): layers
import only downward, no circles, few function-level imports, few top-level modules, a model that
knows no method, and no state on the argparse namespace."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastvit_jax"
# Lowest first: a module may import its own layer and those below, never above.
LAYERS = (
    ("errors", "config", "runtime", "util"),  # small utilities
    ("merge", "data"),  # merging algorithms and plans; images in
    ("models",),  # the Flax modules and the jitted forward
    ("checkpoints",),  # files: layouts, sources, registry, plan files
    ("zero_shot",),  # text towers, tokenizers, prompts
    ("studies",),  # evaluate, bench, sweep, sharpness, analysis, visualize, train, embed
    ("search",),  # budgets, calibration, tune
    ("api",),  # the library: load -> Model
    ("cli", "__main__"),  # the command line
)
# Imports left inside functions on purpose: optional heavy packages are not counted (they are not
# the package's own); these are own modules imported late to keep the command line's start fast or
# because the importer is a registry the imported module's own registration reads.
MAX_FUNCTION_LEVEL = 10


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def own_imports(path: Path, names: set[str]) -> list[tuple[str, bool]]:
    """(imported own module, inside a function) for each import of the package's own modules."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastvit_jax") and not node.level:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("fastvit_jax")]
        for target in dict.fromkeys(targets):
            if target in names and target != "fastvit_jax":
                found.append((target, node.col_offset > 0))
    return found


def layer(module: str) -> int:
    head = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if head in names)


def graph():
    mods = modules()
    names = set(mods)
    return {m: own_imports(p, names) for m, p in mods.items() if m != "fastvit_jax"}


def test_layers_import_downward_only():
    upward = [f"{m} -> {t}" for m, imports in graph().items() for t, _ in imports if layer(t) > layer(m)]
    assert not upward, upward


def test_no_import_circles():
    edges = {m: {t for t, _ in imports if t != m} for m, imports in graph().items()}
    # a package's __init__ imported by its own modules is no circle of code (Python runs __init__ first)
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles[:3]


def test_few_function_level_imports_and_top_level_modules():
    late = [f"{m} -> {t}" for m, imports in graph().items() for t, inner in imports if inner]
    assert len(late) <= MAX_FUNCTION_LEVEL, late
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 10, top


def test_the_model_knows_no_method():
    text = (PACKAGE / "models" / "vit.py").read_text()
    assert not re.search(r"methods|ahead", text)


def test_no_state_on_the_argparse_namespace_and_short_commands():
    for path in PACKAGE.rglob("*.py"):
        assert not re.search(r"args\._", path.read_text()), path
    tree = ast.parse((PACKAGE / "cli" / "__init__.py").read_text())
    long = [f"{f.name}: {f.end_lineno - f.lineno + 1} lines" for f in tree.body
            if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_") and f.end_lineno - f.lineno + 1 > 20]
    assert not long, long


def test_every_knob_flag_is_documented():
    from fastvit_jax.merge import methods

    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [k.flag for k in methods.knobs().values() if k.flag not in readme]
    assert not missing, missing
