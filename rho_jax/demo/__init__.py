"""`rho-jax demo [--config=configs/demo.py] [--config.x=v]`: the end-to-end Rho-1 demo on real text.

  1 tokenizer   the demo SentencePiece vocabulary (general + math corpora)
  2 prepare     every source a stage reads -> ArrayRecord rows (Beam)  <workdir>/prepared/<source>.<split>
                (general text, clean math, the noisy mixture, the held-out eval sets), then the leakage
                check: no CHAMP problem shared by the clean set, the noisy corpus and the held-out sets
                                                                       <workdir>/leakage.json
  3 base        a small Llama, CLM on general English text           <workdir>/base
  4 reference   the base continued on clean math (CHAMP train)        <workdir>/reference
  5 score       the noisy mixture scored by the reference             <workdir>/scores
  6 arms        the base continued on the noisy mixture by each arm   <workdir>/<arm>/seed<s>
                (clm, slm, random, document, reference_only, clm_matched_flops: config.cpt.arms) for
                each seed (config.cpt.seeds); the arms of a seed read the same rows in the same order
                (Grain), the seed sets the order and the selection rng; the last two run for SLM's
                total FLOPs (reference training and scoring included)
  7 eval        held-out losses along training (from the loop), GSM8K solution loss at every kept
                checkpoint, answer log-likelihood (GSM8K, ASDiv), few-shot accuracy when asked
                                                                          <workdir>/eval/*.json
  8 report      plots with seed bands, token categories, selected-token HTML, tables (mean ± std, paired
                differences with 95% intervals, FLOPs per stage, X and Y)   <workdir>/report/

Rerunning reuses every finished stage whose recorded config matches (a changed config is an error
that names the differing keys) and resumes unfinished training from its checkpoints.

The package, one idea a module:
  stages      the stage ConfigDicts, the sources they read, reuse of a finished stage
  leakage     the stage-2 leakage check (rho_jax.data.leakage)
  pipeline    `run`: the stages in order, with progress and wall times
  evaluation  stage 7 (through rho_jax.evaluate)
  stats       mean ± std over seeds, paired differences with a t-interval
  compute     FLOPs per stage, the proportions and Y (an arm's FLOPs to reach CLM's final loss, one-off
              costs included)
  summary     every reported number, per run, per arm and paired against CLM
  table       the summary as tables and headline sentences
  report      stage 8: plots, categories and the selected-token page (rho_jax.analysis) and report.md
"""

from rho_jax.demo.evaluation import evaluate_runs, evaluated
from rho_jax.demo.pipeline import run, train_stage
from rho_jax.demo.report import write_report
from rho_jax.demo.stages import (ARMS, MATCHED, STAGES, StageMismatch, arms, base_path, cpt_runs, matched_steps,
                                 prepare_jobs, prepare_source, prepared_path, run_name, seeds, stage_config, stage_done)
from rho_jax.demo.stats import mean_std, paired_interval
from rho_jax.demo.summary import summarize, tokens_to_reach
from rho_jax.demo.table import table_rows, table_text

__all__ = ["ARMS", "MATCHED", "STAGES", "StageMismatch", "arms", "base_path", "cpt_runs", "evaluate_runs", "evaluated",
           "matched_steps", "mean_std", "paired_interval", "prepare_jobs", "prepare_source", "prepared_path", "run", "run_name",
           "seeds", "stage_config", "stage_done", "summarize", "table_rows", "table_text", "tokens_to_reach",
           "train_stage", "write_report"]
