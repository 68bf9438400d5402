"""The demo's leakage check, after stage 2: the CHAMP problems behind the reference's clean set, the noisy
corpus the arms train on and the held-out sets, read from the files their preparations read, must be
disjoint (rho_jax.data.leakage). The result goes to <workdir>/leakage.json and the summary; a shared problem
stops the demo."""

from __future__ import annotations

import json
from pathlib import Path

from rho_jax.data import leakage
from rho_jax.demo.stages import prepared_path


def roles(dc) -> dict[str, list[str]]:
    """{role: prepared dirs}: reference (the clean set), noisy (the CPT source), heldout (the eval sources)."""
    evals = [s.strip() for s in dc.eval.sources.split(",") if s.strip()]
    return {"reference": [prepared_path(dc, dc.reference.source)], "noisy": [prepared_path(dc, dc.cpt.source)],
            "heldout": [prepared_path(dc, s, "validation") for s in evals]}


def check_leakage(dc) -> dict:
    """leakage.check_prepared over `roles`, written to <workdir>/leakage.json; raises LeakageError on a
    shared problem."""
    out = leakage.check_prepared(roles(dc))
    (Path(dc.workdir) / "leakage.json").write_text(json.dumps(out, indent=1))
    return out
