"""Relative paths in configs and flags: made absolute once, at each entry point, against the directory the
command started in, so no later stage depends on the working directory (Orbax, for one, rejects
relative paths). URLs (gs://, s3://, ...) stay as they are.
"""

from __future__ import annotations

import os
import re

import ml_collections

# Config fields that hold a filesystem path, by dotted name. "path": the whole value is a path (a file,
# directory or glob); "paths": comma-separated paths; "source": a path only behind a format prefix like
# `jsonl:GLOB` (or each part of a `mix:SPEC=RATE,...`), otherwise a name (a corpus or mixture). Fields a
# config lacks are skipped, so one table serves every config schema.
PATH_FIELDS: dict[str, str] = {
    "workdir": "path",
    "init.target": "path", "init.reference": "path",
    "data.vocab": "path", "data.score_cache": "path", "data.prepared": "path",
    "data.source": "source",
    "eval.prepared": "paths",
    "base.checkpoint": "path",  # configs/demo.py
}
SOURCE_PREFIXES = ("jsonl:", "parquet:")
KINDS = ("path", "paths", "source")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def register_path_field(name: str, kind: str = "path") -> None:
    """Declares that config field `name` (dotted, e.g. 'data.prepared') holds a path ('path') or a
    prefixed source ('source') or comma-separated paths ('paths'), so `resolve_paths` makes it absolute."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
    PATH_FIELDS[name] = kind


def resolve_path(path: str, base: str | None = None) -> str:
    """`path` made absolute against `base` (default: the current directory, where the command started).

    '' stays '' (the field's "none/default"); URLs (gs://, s3://, https://...) stay as they are; `~` is
    expanded; globs keep their wildcards.
    """
    if not path or _URL.match(path):
        return path
    path = os.path.expanduser(path)
    return os.path.normpath(os.path.join(base or os.getcwd(), path))


def resolve_source(source: str, base: str | None = None) -> str:
    """A data source: `jsonl:GLOB` / `parquet:GLOB` get an absolute glob, and so does each part of a
    `mix:SPEC=RATE,...`; a corpus or mixture name stays as it is."""
    if source.startswith("mix:"):
        parts = []
        for part in source[4:].split(","):
            spec, sep, rate = part.rpartition("=")
            parts.append(resolve_source(spec, base) + sep + rate if sep else part)
        return "mix:" + ",".join(parts)
    for prefix in SOURCE_PREFIXES:
        if source.startswith(prefix):
            return prefix + resolve_path(source[len(prefix):], base)
    return source


def resolve_paths(c: ml_collections.ConfigDict, base: str | None = None,
                  fields: dict[str, str] | None = None) -> ml_collections.ConfigDict:
    """A copy of `c` with every path field (see PATH_FIELDS) absolute; idempotent.

    Called once at each entry point (the CLI, `loop.run`, `demo.run`, the score job) before any work,
    so no later stage depends on the working directory (Orbax, for one, rejects relative paths).
    """
    out = c.copy_and_resolve_references()
    for name, kind in (fields or PATH_FIELDS).items():
        *groups, leaf = name.split(".")
        node = out
        for g in groups:
            node = node.get(g) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node or not isinstance(node[leaf], str):
            continue
        if kind == "source":
            node[leaf] = resolve_source(node[leaf], base)
        elif kind == "paths":
            node[leaf] = ",".join(resolve_path(p.strip(), base) for p in node[leaf].split(","))
        else:
            node[leaf] = resolve_path(node[leaf], base)
    return out
