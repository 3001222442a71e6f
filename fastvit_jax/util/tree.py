"""Flat '/'-joined keys <-> nested dicts, the two shapes a parameter tree takes in files."""

from __future__ import annotations

PREFIXES = ("params/", "opt/target/")  # what Google's trainers put before the model's own tree


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def strip_prefix(key: str) -> str:
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = strip_prefix(key).split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
