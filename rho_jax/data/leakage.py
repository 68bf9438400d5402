"""The leakage check of a Rho-1 pipeline on CHAMP: the problems behind the reference's clean set, behind the
noisy corpus and behind the held-out set must be three disjoint sets.

Checked on the files a preparation read (the input files its manifests name), not on the split rule: every
CHAMP document, clean or model-written, opens with "Problem: <statement>" and a blank line, so a problem is
its statement. Documents without that opening (general prose, GSM8K) belong to no problem.
"""

from __future__ import annotations

import itertools
import json
import re

from rho_jax.data import rows as rows_lib
from rho_jax.data.rows import DataError

OPENING = "Problem: "
_RANGE = re.compile(r"#\d+-\d+$")  # an input shard's byte range after its file path


class LeakageError(DataError):
    pass


def statement(text: str) -> str | None:
    """The problem statement a CHAMP document opens with, or None."""
    return text[len(OPENING):].split("\n\n", 1)[0].strip() if text.startswith(OPENING) else None


def input_files(prepared: str) -> list[str]:
    """The input files (JSONL) of every component of a prepared directory, from its manifests."""
    files = []
    for _, d, _ in rows_lib.components(prepared):
        for shard in rows_lib.read_manifest(d)["shards"]:
            path = _RANGE.sub("", shard["input"])
            if path not in files:
                files.append(path)
    return files


def problems(files: list[str], text_field: str = "text") -> set[str]:
    """The problem statements of the documents in JSONL `files`."""
    out = set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                s = statement(json.loads(line)[text_field]) if line.strip() else None
                if s:
                    out.add(s)
    return out


def check(sets: dict[str, set[str]]) -> dict:
    """{"shared_problems": 0, "problems": {role: n}, "pairs": {"a & b": 0}} for disjoint `sets`
    ({role: problem statements}, e.g. reference / noisy / heldout); raises LeakageError naming the roles,
    the count and one shared problem otherwise."""
    pairs = {f"{a} & {b}": sets[a] & sets[b] for a, b in itertools.combinations(sets, 2)}
    for name, shared in pairs.items():
        if shared:
            example = min(shared)
            raise LeakageError(f"leakage: {len(shared)} CHAMP problem(s) shared by {name} (e.g. "
                               f"{example[:80]!r}); the split must keep them disjoint (rho_jax.data.corpora."
                               f"problem_part), re-export the corpora and re-prepare")
    return {"shared_problems": 0, "problems": {k: len(v) for k, v in sets.items()},
            "pairs": {k: len(v) for k, v in pairs.items()}}


def check_prepared(roles: dict[str, list[str]]) -> dict:
    """`check` over prepared directories ({role: [prepared dirs]}), with the files each role read."""
    files = {role: [f for d in dirs for f in input_files(d)] for role, dirs in roles.items()}
    out = check({role: problems(fs) for role, fs in files.items()})
    out["files"] = files
    return out
