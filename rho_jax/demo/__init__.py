"""`rho-jax demo [--config=configs/demo.py] [--config.x=v]`: the end-to-end Rho-1 demo on real text.

  1 tokenizer   the demo SentencePiece vocabulary (general + math corpora)
  2 prepare     every source a stage reads -> ArrayRecord rows (Beam)  <workdir>/prepared/<source>.<split>
                (general text, clean math, the noisy mixture, the held-out eval sets)
  3 base        a small Llama, CLM on general English text           <workdir>/base
  4 reference   the base continued on clean math (CHAMP train)        <workdir>/reference
  5 score       the noisy mixture scored by the reference             <workdir>/scores
  6 clm, slm    the base continued on the noisy mixture, twice:       <workdir>/clm, <workdir>/slm
                same rows, same order, same processed tokens (read by Grain)
  7 eval        held-out clean-math loss along training (from the loop), GSM8K solution loss at every
                kept checkpoint, few-shot greedy accuracy                 <workdir>/eval/*.json
  8 report      plots, token categories, selected-token HTML, summary table   <workdir>/report/

Rerunning reuses every finished stage whose recorded config matches (a changed config is an error
that names the differing keys) and resumes unfinished training from its checkpoints.

The package, one idea a module:
  stages      the stage ConfigDicts, the sources they read, reuse of a finished stage
  pipeline    `run`: the stages in order, with progress and wall times
  evaluation  stage 7 (through rho_jax.evaluate)
  summary     the reported numbers and the CLM vs SLM table
  report      stage 8: plots, categories and the selected-token page (rho_jax.analysis) and report.md
"""

from rho_jax.demo.evaluation import evaluate_runs, evaluated
from rho_jax.demo.pipeline import run, train_stage
from rho_jax.demo.report import write_report
from rho_jax.demo.stages import (STAGES, StageMismatch, base_path, prepare_jobs, prepare_source, prepared_path,
                                 stage_config, stage_done)
from rho_jax.demo.summary import summarize, table_rows, table_text, tokens_to_reach

__all__ = ["STAGES", "StageMismatch", "base_path", "evaluate_runs", "evaluated", "prepare_jobs", "prepare_source",
           "prepared_path", "run", "stage_config", "stage_done", "summarize", "table_rows", "table_text",
           "tokens_to_reach", "train_stage", "write_report"]
