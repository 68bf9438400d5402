"""The demo's stages as `rho_jax.config` ConfigDicts (one per stage, from the demo ConfigDict), the sources
they read, and the reuse of a finished stage (its recorded config must match)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_collections

from rho_jax import checkpoint, config as config_lib, flops
from rho_jax.data import prepare, rows as rows_lib

# The continual-pretraining arms: objective fields over the CLM baseline (slm: config.cpt.score, ratio).
ARMS = {
    "clm": dict(mode="clm"),
    "slm": dict(mode="slm"),
    "random": dict(mode="slm", score="random"),  # the control: as many tokens, chosen at random
    "document": dict(mode="slm", scope="document"),  # whole documents by their tokens' mean score
    "reference_only": dict(mode="clm"),  # CLM on the reference's clean set alone, SLM's total FLOPs
    "clm_matched_flops": dict(mode="clm"),  # CLM on the noisy mixture, SLM's total FLOPs
}
# The arms given SLM's FLOPs with the reference training and the scoring included (`matched_steps`).
MATCHED = ("reference_only", "clm_matched_flops")
STAGES = ("base", "reference", *ARMS)


class StageMismatch(config_lib.ConfigError):
    pass


def common_config(dc, stage: str) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.workdir = os.path.join(dc.workdir, stage)
    c.seed = dc.seed
    c.model.update(dc.model.to_dict())
    c.mesh.update(dc.mesh.to_dict())
    c.data.update(seq_len=dc.data.seq_len, vocab=dc.data.vocab, shuffle_seed=dc.data.shuffle_seed,
                  general_rate=dc.data.general_rate)
    c.objective.mode = "clm"
    c.checkpoint.update(every=100, keep=1)
    return c


def seeds(dc) -> list[int]:
    """config.cpt.seeds ("0,1,2"): the continual-pretraining seeds, each run by every arm."""
    return [int(x) for x in str(dc.cpt.seeds).split(",") if x.strip()]


def arms(dc) -> list[str]:
    """config.cpt.arms ("clm,slm,random"), in ARMS order; CLM (the baseline) and SLM are always two."""
    named = [x.strip() for x in dc.cpt.arms.split(",") if x.strip()]
    if set(named) - set(ARMS) or not {"clm", "slm"} <= set(named):
        raise config_lib.ConfigError(f"config.cpt.arms={dc.cpt.arms!r}: names from {list(ARMS)}, clm and slm "
                                     f"among them")
    return [a for a in ARMS if a in named]


def cpt_runs(dc) -> list[tuple[str, int]]:
    """(arm, seed) of every continual-pretraining run, seed-major (a finished seed has all its arms)."""
    return [(arm, s) for s in seeds(dc) for arm in arms(dc)]


def run_name(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


def base_path(dc) -> str:
    return dc.base.checkpoint or os.path.join(dc.workdir, "base", "final")


def prepared_path(dc, source: str, split: str = "train") -> str:
    return os.path.join(dc.workdir, "prepared", f"{source}.{split}")


def clean_rows(dc) -> int | None:
    """Packed rows of the reference's clean set (its prepared manifest); None before it is prepared."""
    d = prepared_path(dc, dc.reference.source)
    if not (Path(d) / rows_lib.MANIFEST).exists() and not (Path(d) / rows_lib.MIXTURE).exists():
        return None
    return sum(s["rows"] for _, c, _ in rows_lib.components(d) for s in rows_lib.read_manifest(c)["shards"])


def reference_steps(dc, n_rows: int | None) -> int:
    """The reference's steps: config.reference.epochs over its `n_rows` rows (one batch when unknown)."""
    r = dc.reference
    return max(1, math.ceil(r.epochs * (n_rows or r.batch_size) / r.batch_size))


def matched_steps(dc, n_rows: int | None) -> int:
    """Steps of a CPT-shaped run with SLM's total FLOPs: the reference's training, the scoring of the rows
    SLM reads (one reference forward per token) and SLM's own steps (same model and seq_len throughout, so
    FLOPs are tokens times a per-token cost). Rounded to whole steps; the report gives the mismatch."""
    m = config_lib.model_config(common_config(dc, "clm"))
    p, seq = dc.cpt, dc.data.seq_len
    fwd_per_train = flops.reference_flops_per_token(m, seq) / flops.train_flops_per_token(m, seq)
    rows = reference_steps(dc, n_rows) * dc.reference.batch_size + p.steps * p.batch_size * (1.0 + fwd_per_train)
    return max(1, round(rows / p.batch_size))


def prepare_jobs(dc) -> list[tuple[str, str, str, int]]:
    """(source, split, prepared dir, rows read or 0 = all) of every source a stage reads: the training
    sources (base and CPT read one pass of steps x batch rows, the FLOPs-matched CLM arm more; the reference
    and the reference-only arm read all, for epochs) and the held-out sets. The reference's source comes
    first: the FLOPs-matched arm's rows depend on its size (until it is prepared, CPT's rows stand in)."""
    needs: dict = {}
    reads = [(dc.reference.source, 0)]
    reads += ([] if dc.base.checkpoint else [(dc.base.source, dc.base.steps * dc.base.batch_size)])
    cpt_steps = dc.cpt.steps
    if "clm_matched_flops" in arms(dc):
        cpt_steps = max(cpt_steps, matched_steps(dc, clean_rows(dc)))
    reads += [(dc.cpt.source, cpt_steps * dc.cpt.batch_size)]
    for source, n in reads:
        old = needs.get(source)
        needs[source] = n if old is None else (0 if 0 in (n, old) else max(n, old))
    jobs = [(s, "train", n) for s, n in needs.items()]
    jobs += [(s, "validation", 0) for s in dict.fromkeys(x.strip() for x in dc.eval.sources.split(",") if x.strip())]
    return [(s, sp, prepared_path(dc, s, sp), n) for s, sp, n in jobs]


def prepare_source(pc, source: str, split: str, out: str, rows: int) -> int:
    """Prepares `source` into `out`: every input shard (rows = 0), or the first shards of each component,
    doubling their number until they hold the `rows` rows a run reads (shared by the rates, as the reader
    does). Returns the rows prepared. Finished shards are never redone; a preparation is never asked
    for fewer shards than it holds (`prepare` refuses that), so a rerun starts from what is there."""
    held = [len(rows_lib.read_manifest(d)["shards"]) for _, d, _ in rows_lib.components(out)
            if (d / rows_lib.MANIFEST).exists()]
    shards = max([2, *held]) if rows else 0
    while True:
        pc.prepare.max_shards = shards
        res = prepare.run(pc, source=source, split=split, out=out)
        comps = [m for _, m in res["components"]]
        total_rate = sum(r for _, _, r in rows_lib.components(out))
        short = [m for (_, _, r), m in zip(rows_lib.components(out), comps)
                 if sum(s["rows"] for s in m["shards"]) < math.ceil(rows * r / total_rate)
                 and len(m["shards"]) < m.get("planned_shards", len(m["shards"]))]
        if not rows or not short:
            return sum(sum(s["rows"] for s in m["shards"]) for m in comps)
        shards *= 2


def _heldout(dc, names: list[str]) -> dict:
    return dict(sources=",".join(names), prepared=",".join(prepared_path(dc, n, "validation") for n in names),
                batch_size=dc.eval.batch_size, max_rows=dc.eval.max_rows)


def stage_config(dc, stage: str, reference_rows: int | None = None, seed: int | None = None
                 ) -> ml_collections.ConfigDict:
    """The `rho_jax.config` ConfigDict of one stage (base | reference | an arm of ARMS; slm also drives
    scoring), in <workdir>/<stage> or, for an arm, <workdir>/<arm>/seed<seed>.

    reference_rows: packed rows of the clean-math train split (sets the reference's steps from epochs).
    seed: an arm's seed (default: the first of config.cpt.seeds); it offsets the run's seed (model rng:
    the random arm's selection) and data.shuffle_seed (the order of the same rows), so every arm of a
    seed sees the same rows in the same order.
    """
    c = common_config(dc, stage if stage not in ARMS else run_name(stage, seeds(dc)[0] if seed is None else seed))
    if reference_rows is None and stage in ("reference", *MATCHED):
        reference_rows = clean_rows(dc)
    if stage == "base":
        b = dc.base
        c.train.update(steps=b.steps, batch_size=b.batch_size, lr=b.lr, warmup_steps=b.warmup_steps)
        c.data.update(source=b.source, prepared=prepared_path(dc, b.source),
                      max_rows=b.steps * b.batch_size)  # one pass, no repeats
    elif stage == "reference":
        r = dc.reference
        steps = reference_steps(dc, reference_rows)
        c.init.target = base_path(dc)
        c.train.update(steps=steps, batch_size=r.batch_size, lr=r.lr, warmup_steps=r.warmup_steps)
        c.data.update(source=r.source, prepared=prepared_path(dc, r.source))
        c.eval.update(every=steps, **_heldout(dc, dc.eval.sources.split(",")[:1]))  # its held-out loss, at the end
    elif stage in ARMS:
        p = dc.cpt
        offset = seeds(dc)[0] if seed is None else seed
        c.seed, c.data.shuffle_seed = dc.seed + offset, dc.data.shuffle_seed + offset
        c.init.update(target=base_path(dc), reference=os.path.join(dc.workdir, "reference", "final"))
        steps = matched_steps(dc, reference_rows) if stage in MATCHED else p.steps
        c.train.update(steps=steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                       log_every=min(10, p.eval_every))
        c.data.update(source=p.source, prepared=prepared_path(dc, p.source), max_rows=steps * p.batch_size,
                      score_cache=os.path.join(dc.workdir, "scores"))
        if stage == "reference_only":  # the clean set, epochs over all of it (as the reference reads it)
            c.data.update(source=dc.reference.source, prepared=prepared_path(dc, dc.reference.source), max_rows=0)
        if stage in MATCHED:
            c.data.score_cache = ""  # CLM: no scores
        # Identical but for the objective: same rows, order, steps and evaluation.
        c.objective.update(ratio=p.ratio, score=p.score, reference="cached")
        c.objective.update(ARMS[stage])
        c.eval.update(every=p.eval_every, **_heldout(dc, [x.strip() for x in dc.eval.sources.split(",")
                                                            if x.strip()]))
        c.checkpoint.update(every=p.checkpoint_every, keep=10_000)  # all kept: categories, solution loss
    else:
        raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
    return c


def _diff(a, b, prefix="") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} (recorded) vs {y!r} (now)")
    return out


def stage_done(cfg) -> bool:
    """True when the stage's final model exists; raises StageMismatch when its recorded config differs."""
    wd = Path(cfg.workdir)
    recorded = wd / checkpoint.RUN_CONFIG_FILE
    if recorded.exists():
        diff = _diff(json.loads(recorded.read_text()), json.loads(cfg.to_json()))
        # the Beam job's settings change no stage's training; they moved from data.* to prepare.*
        diff = [d for d in diff
                if (key := d.split(":")[0]) not in config_lib.MOVED_KEYS and key.split(".")[0] != "prepare"]
        if diff:
            raise StageMismatch(f"{wd} was trained with another config ({'; '.join(diff[:5])}); delete {wd} "
                                f"(and the stages after it) or choose another --config.workdir")
    return (wd / "final").exists()

