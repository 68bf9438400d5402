"""The demo's stages in order: each is run, or reused when finished with the same config (training
resumes from its checkpoints), with progress bars and the wall time of each stage recorded."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
from tqdm import tqdm

from rho_jax import config as config_lib
from rho_jax import loop, paths, score_job
from rho_jax.data import rows
from rho_jax.data.inputs import input_for_training
from rho_jax.data.vocab import demo_vocab_path
from rho_jax.demo.evaluation import evaluate_runs, evaluated
from rho_jax.demo.report import write_report
from rho_jax.demo.leakage import check_leakage
from rho_jax.demo.stages import (ARMS, arms, clean_rows, common_config, cpt_runs, prepare_jobs, prepare_source,
                                 run_name, seeds, stage_config, stage_done)
from rho_jax.demo.table import table_text


class _Progress:
    """The loop's input iterator, advancing a tqdm bar by one step per batch read."""

    def __init__(self, pipe, bar):
        self.pipe, self.bar = pipe, bar

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.pipe)
        self.bar.update(1)
        return batch

    def __getattr__(self, name):  # get_state, vocab_size, ...
        return getattr(self.pipe, name)


def show_losses(bars: list, row: dict) -> None:
    """The loop's `on_log`: the logged row's losses on the latest bar (the one the running loop advances)."""
    if bars:
        bars[-1].set_postfix({k.split("/")[-1]: f"{row[k]:.3f}" for k in ("loss", "eval_loss") if k in row})


def train_stage(cfg, desc: str) -> None:
    """Trains (or resumes) one stage with `rho_jax.loop`, a progress bar per input pipeline it opens."""
    bars = []

    def make_input(config, input_state):
        pipe = input_for_training(config, input_state)
        bar = tqdm(total=config.train.steps, initial=pipe.step, desc=desc, unit="step", dynamic_ncols=True)
        bars.append(bar)
        return _Progress(pipe, bar)

    try:
        loop.run(cfg, make_input=make_input, on_log=lambda row: show_losses(bars, row))
    finally:
        for bar in bars:
            bar.close()


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _check_stages(dc) -> None:
    """Every stage's config, validated before any compute (one error line naming the stage)."""
    try:
        stages = ([] if dc.base.checkpoint else ["base"]) + ["reference"] + arms(dc)
        if not seeds(dc):
            raise config_lib.ConfigError(f"config.cpt.seeds={dc.cpt.seeds!r}: name at least one seed, e.g. '0,1,2'")
    except ValueError as e:  # ConfigError, or a seed that is not an integer
        raise config_lib.ConfigError(f"demo config.cpt: {e}") from None
    for stage in stages:
        try:
            config_lib.validate(stage_config(dc, stage, reference_rows=dc.reference.batch_size), jax.device_count())
        except config_lib.ConfigError as e:
            group = "cpt" if stage in ARMS else stage
            raise config_lib.ConfigError(f"demo stage {stage} (from config.{group}, config.model, config.data): "
                                         f"{e}") from None


def _timer(workdir: str):
    """(timings, timed): timed(name, fn, keep=False) runs fn() and records its wall time in
    <workdir>/timings.json, unless `keep` and a time is already recorded (a reused stage)."""
    path = Path(workdir) / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}

    def timed(name, fn, keep=False):
        t0 = time.perf_counter()
        out = fn()
        if not (keep and name in timings):
            timings[name] = round(time.perf_counter() - t0, 1)
            path.write_text(json.dumps(timings, indent=1))
        return out

    return timings, timed


def _prepare_stage(dc, timed) -> None:
    """Stages 1-2: the demo vocabulary, every source prepared, then the leakage check."""
    _say("stage 1/8 tokenizer")
    if not dc.data.vocab:
        path = timed("tokenizer", demo_vocab_path, keep=True)  # shared by all workdirs, trained once
        _say(f"  demo SentencePiece vocabulary: {path}")

    jobs = prepare_jobs(dc)
    todo = [j for j in jobs if not (Path(j[2]) / rows.MANIFEST).exists() and not (Path(j[2]) / rows.MIXTURE).exists()]
    _say(f"stage 2/8 prepare: {len(jobs) - len(todo)} of {len(jobs)} sources already prepared")

    def prepare_all():
        pc = common_config(dc, "prepare")
        pc.prepare.update(shard_mb=dc.prepare.shard_mb, workers=dc.prepare.workers)
        # The reference's source first: the rows of the FLOPs-matched arm depend on its size (prepare_jobs).
        for source, split, out, n in jobs[:1] + prepare_jobs(dc)[1:]:  # a finished one is reused (O(shards))
            got = prepare_source(pc, source, split, out, n)
            _say(f"  {source} ({split}): {got} rows of {dc.data.seq_len} in {out}")

    timed("prepare", prepare_all, keep=not todo)
    leak = check_leakage(dc)
    _say(f"  leakage check: {leak['shared_problems']} CHAMP problems shared; problems per role "
         f"{leak['problems']}")


def _model_stages(dc, timed) -> None:
    """Stages 3-5: the base, the reference, and the scoring of the rows the runs read."""
    if dc.base.checkpoint:
        _say(f"stage 3/8 base: using {dc.base.checkpoint}")
    else:
        cfg = stage_config(dc, "base")
        if stage_done(cfg):
            _say(f"stage 3/8 base: reusing {cfg.workdir}/final")
        else:
            _say(f"stage 3/8 base: CLM on {cfg.data.source}, {cfg.train.steps} steps")
            timed("base", lambda: train_stage(cfg, "base"))

    n_ref = clean_rows(dc)
    cfg = stage_config(dc, "reference", reference_rows=n_ref)
    if stage_done(cfg):
        _say(f"stage 4/8 reference: reusing {cfg.workdir}/final")
    else:
        _say(f"stage 4/8 reference: {dc.reference.epochs} epochs of {n_ref} rows of {cfg.data.source}, "
             f"{cfg.train.steps} steps")
        timed("reference", lambda: train_stage(cfg, "reference"))

    cfg = stage_config(dc, "slm")
    done = Path(cfg.data.score_cache).exists()
    _say(f"stage 5/8 score: the rows of {cfg.data.source} that CLM/SLM read, with the reference -> "
         f"{cfg.data.score_cache}{' (resuming or reusing: shards checked)' if done else ''}")
    manifests = timed("score", lambda: score_job.run(cfg), keep=done)
    _say("  scores: " + ", ".join(f"{m['rows']} rows in {len(m['shards'])} shards of {m['prepared']}"
                                  for m in manifests))


def _cpt_stage(dc, timed) -> None:
    """Stage 6: every arm x seed run (a finished one is reused)."""
    todo = cpt_runs(dc)
    for i, (arm, seed) in enumerate(todo):
        cfg, name = stage_config(dc, arm, seed=seed), run_name(arm, seed)
        if stage_done(cfg):
            _say(f"stage 6/8 {name} ({i + 1}/{len(todo)}): reusing {cfg.workdir}/final")
            continue
        o = config_lib.run_spec_of(cfg).objective
        _say(f"stage 6/8 {name} ({i + 1}/{len(todo)}): continual pretraining on {cfg.data.source}, "
             f"{cfg.train.steps} steps, shuffle_seed {cfg.data.shuffle_seed}"
             + (f", ratio {o.ratio}, score {o.score}, scope {o.scope}" if o.slm else ""))
        timed(name, lambda: train_stage(cfg, name))


def run(dc) -> dict:
    """Runs (or reuses) every stage into dc.workdir; returns the summary (also <workdir>/report/summary.json)."""
    t_start = time.perf_counter()
    dc = paths.resolve_paths(dc)  # relative paths: against the directory the demo was started in
    _check_stages(dc)  # every stage's config, before any compute
    os.makedirs(dc.workdir, exist_ok=True)
    timings, timed = _timer(dc.workdir)
    _prepare_stage(dc, timed)
    _model_stages(dc, timed)
    _cpt_stage(dc, timed)
    _say("stage 7/8 eval")
    evals = timed("eval", lambda: evaluate_runs(dc, say=_say), keep=all(evaluated(dc)))
    _say("stage 8/8 report")
    summary = timed("report", lambda: write_report(dc, evals, timings))
    print(table_text(summary), flush=True)
    _say(f"report: {os.path.join(dc.workdir, 'report', 'report.md')}; this run took "
         f"{time.perf_counter() - t_start:.0f} s")
    return summary
