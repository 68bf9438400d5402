"""The config's typed view (rho_jax.run_spec), the one decision of the reference mode (rho_jax.reference),
their one-line errors, and the moved `rho-jax prepare` keys. Pure: no model, no compile."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from rho_jax import cli, objective, train
from rho_jax import config as config_lib
from rho_jax.reference import CONFIG_KINDS, ReferenceKind, ReferenceMode, resolve_reference
from rho_jax.run_spec import Mode, Score, Scope, Weighting, values

PKG = Path(__file__).resolve().parents[1] / "rho_jax"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(**objective_fields):
    c = config_lib.base_config()
    c.objective.update(**objective_fields)
    return c


def error(c, purpose="check") -> str:
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c, purpose=purpose)
    return str(e.value)


def test_the_spec_is_frozen_and_typed():
    spec = config_lib.validate(config())
    for obj, field in ((spec, "steps"), (spec.objective, "ratio"), (spec.reference, "kind")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    assert spec.objective.mode is Mode.SLM and spec.objective.score is Score.EXCESS
    assert spec.objective.scope is Scope.BATCH and spec.objective.weighting is Weighting.HARD
    assert spec.reference.kind is ReferenceKind.ONLINE
    hash(spec)  # a static argument / cache key


def test_enum_values_are_the_vocabularies_objective_and_reference_own():
    assert values(Mode) == config_lib.OBJECTIVE_MODES == ("clm", "slm")
    assert values(Score) == tuple(objective.SCORE_FUNCTIONS)  # a new score is added in objective.py only
    assert values(Scope) == tuple(objective.CONFIG_SCOPES)
    assert values(Weighting) == tuple(objective.WEIGHTINGS)
    assert config_lib.REFERENCE_MODES == CONFIG_KINDS == ("online", "cached", "ema")
    assert Score("excess") == "excess" and f"{Score.EXCESS}" == "excess"  # reads as the plain string


@pytest.mark.parametrize("ratio_end, expected", [(-1.0, None), (-0.5, None), (0.3, 0.3), (1.0, 1.0)])
def test_ratio_end_below_zero_is_decoded_once_to_none(ratio_end, expected):
    spec = config_lib.validate(config(ratio_end=ratio_end))
    assert spec.objective.ratio_end == expected
    step = train.StepSpec.from_config(config(ratio_end=ratio_end), config_lib.model_config(config()), None)
    assert step.ratio_end == expected


def test_ratio_end_zero_is_a_ratio_and_is_checked():
    assert error(config(ratio_end=0.0)) == "config.objective.ratio_end=0.0 is outside (0, 1]"


MEMBERSHIP = {
    "mode": ("xyz", "config.objective.mode='xyz'; expected one of ('clm', 'slm')"),
    "score": ("perplexity", f"config.objective.score='perplexity' is not a score function; "
                            f"expected one of {objective.SCORE_FUNCTIONS}"),
    "scope": ("row", f"config.objective.scope='row'; expected one of {objective.CONFIG_SCOPES}"),
    "weighting": ("linear", f"config.objective.weighting='linear'; expected one of {objective.WEIGHTINGS}"),
    "reference": ("none", "config.objective.reference='none'; expected one of ('online', 'cached', 'ema')"),
}


@pytest.mark.parametrize("field", list(MEMBERSHIP))
def test_each_unknown_value_gets_todays_message(field):
    value, message = MEMBERSHIP[field]
    assert error(config(**{field: value})) == message


def test_other_value_messages():
    c = config_lib.base_config()
    c.train.nan_policy = "ignore"
    assert error(c) == "config.train.nan_policy='ignore'; expected one of ('stop', 'skip')"
    assert error(config(weighting="soft", temperature=0.0)) == \
        "config.objective.temperature=0.0 must be > 0 for soft weighting"


# (mode, score, config.objective.reference) -> the resolved kind
KINDS = [
    ("clm", "excess", "online", ReferenceKind.NONE),
    ("clm", "excess", "cached", ReferenceKind.NONE),
    ("clm", "random", "ema", ReferenceKind.NONE),  # CLM reads no reference, whatever its settings
    ("slm", "excess", "online", ReferenceKind.ONLINE),
    ("slm", "excess", "cached", ReferenceKind.CACHED),
    ("slm", "reverse_excess", "ema", ReferenceKind.EMA),
    ("slm", "random", "online", ReferenceKind.NONE),
    ("slm", "target_loss", "online", ReferenceKind.NONE),
    ("slm", "random", "cached", ReferenceKind.CACHED),  # the rows still carry ref_ce: the statistics use it
]


@pytest.mark.parametrize("mode, score, kind, expected", KINDS)
def test_every_mode_resolves_to_its_reference(mode, score, kind, expected, tmp_path):
    c = config(mode=mode, score=score, reference=kind, ema_decay=0.99)
    c.init.reference, c.data.score_cache = "ref_dir", "cache_dir"
    ref = config_lib.validate(c, purpose="train").reference
    assert ref.kind is expected
    assert ref.loads_checkpoint == (expected is ReferenceKind.ONLINE)
    assert ref.in_step == (expected in (ReferenceKind.ONLINE, ReferenceKind.EMA))
    assert ref.random_ties == ref.target_shaped == (expected is ReferenceKind.EMA)
    assert ref.checkpoint == ("ref_dir" if expected in (ReferenceKind.ONLINE, ReferenceKind.CACHED) else "")
    assert ref.score_cache == ("cache_dir" if expected is ReferenceKind.CACHED else "")
    assert ref.ema_decay == (0.99 if expected is ReferenceKind.EMA else 0.0)
    assert ref.scored == (mode == "slm" and objective.needs_ref(score))
    # the step takes the same decision: which model the reference forward runs, and the tie-break
    m = config_lib.model_config(c)
    ref_cfg = m.replace(d_ff=m.d_ff * 2)
    step = train.StepSpec.from_config(c, m, ref_cfg)
    assert step.ref_model == {ReferenceKind.ONLINE: ref_cfg, ReferenceKind.EMA: m}.get(expected)
    assert (step.online, step.ema, step.cached) == (expected is ReferenceKind.ONLINE, expected is ReferenceKind.EMA,
                                                    expected is ReferenceKind.CACHED)
    assert step.ref == ref  # the step reads the one resolved reference, nothing decoded again
    assert step.random_ties == (expected is ReferenceKind.EMA)


def test_entropy_scores_ask_the_cache_for_entropy():
    c = config(score="ref_entropy", reference="cached")
    assert config_lib.validate(c).reference.with_entropy
    assert not config_lib.validate(config(score="ref_loss", reference="cached")).reference.with_entropy


ONLINE_WHY = "the reference model the step scores with"
CACHED_WHY = "the reference the scores were made with, so the score cache can be checked against it"
ERRORS = [  # (objective fields, init.reference, data.score_cache, purpose, the whole message)
    (dict(reference="ema", score="random"), "", "", "check",
     "config.objective.reference='ema' with score='random', which reads no reference; use a reference score "
     "(e.g. reverse_excess) or another reference mode"),
    (dict(reference="ema", score="target_loss"), "", "", "check",
     "config.objective.reference='ema' with score='target_loss', which reads no reference; use a reference score "
     "(e.g. reverse_excess) or another reference mode"),
    (dict(ema_decay=1.0), "", "", "check", "config.objective.ema_decay=1.0 is outside [0, 1)"),
    (dict(mode="clm", ema_decay=-0.1), "", "", "check", "config.objective.ema_decay=-0.1 is outside [0, 1)"),
    (dict(reference="online"), "", "", "train", f"config.objective.reference='online' with score='excess' needs "
     f"config.init.reference: {ONLINE_WHY} (an Orbax dir, HF dir or .gguf)"),
    (dict(reference="cached", score="ref_loss"), "", "c", "train", f"config.objective.reference='cached' with "
     f"score='ref_loss' needs config.init.reference: {CACHED_WHY} (an Orbax dir, HF dir or .gguf)"),
    (dict(reference="cached"), "r", "", "train",
     "config.objective.reference='cached' needs config.data.score_cache (run `rho-jax score`)"),
]


@pytest.mark.parametrize("fields, ref, cache, purpose, message", ERRORS)
def test_each_reference_problem_gets_todays_message(fields, ref, cache, purpose, message):
    c = config(**fields)
    c.init.reference, c.data.score_cache = ref, cache
    assert error(c, purpose) == message
    if purpose == "train":  # what a run reads is required by training only
        config_lib.validate(c, purpose="check")


def test_inputs_are_not_required_where_the_score_reads_no_reference():
    for fields in (dict(reference="online", score="random"), dict(reference="cached", score="target_loss"),
                   dict(mode="clm", reference="cached")):
        config_lib.validate(config(**fields), purpose="train")


def test_resolve_reference_directly():
    spec = config_lib.validate(config()).objective
    assert resolve_reference(spec, "online", checkpoint="r") == ReferenceMode(ReferenceKind.ONLINE, checkpoint="r",
                                                                            scored=True)
    with pytest.raises(config_lib.ConfigError, match=r"^config\.objective\.reference='x'; expected one of"):
        resolve_reference(spec, "x")


# The string fields of config.objective that only config.py, run_spec.py and reference.py may read.
RAW_FIELDS = {"mode", "score", "scope", "weighting", "reference", "ratio_end"}
DECODERS = {"config.py", "run_spec.py", "reference.py"}


def _config_objective(node) -> bool:
    """`<x>.objective` of a config; not of a call's result (`config_lib.run_spec_of(c).objective` is typed)."""
    return isinstance(node, ast.Attribute) and node.attr == "objective" and not isinstance(node.value, ast.Call)


def raw_objective_reads(tree: ast.AST) -> list[int]:
    """Line numbers of loads of `<x>.objective.<raw field>`, or `<name>.<raw field>` where `<name>` was
    assigned `<x>.objective` in the module."""
    aliases = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _config_objective(node.value)
               for t in node.targets if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in RAW_FIELDS and isinstance(node.ctx, ast.Load):
            v = node.value
            if _config_objective(v) or (isinstance(v, ast.Name) and v.id in aliases):
                lines.append(node.lineno)
    return sorted(lines)


def test_nothing_outside_the_decoders_reads_raw_objective_strings():
    found = {f"{p.relative_to(PKG)}:{n}": p.read_text().splitlines()[n - 1].strip()
             for p in sorted(PKG.rglob("*.py")) if p.name not in DECODERS or p.parent != PKG
             for n in raw_objective_reads(ast.parse(p.read_text()))}
    assert not found, f"read the typed view (config.validate / config.run_spec_of) instead: {found}"


def test_the_static_check_sees_a_raw_read():
    assert raw_objective_reads(ast.parse("o = c.objective\nif o.mode == 'slm': pass\nx = c.objective.score")) == [2, 3]
    assert raw_objective_reads(ast.parse("c.objective.mode = 'clm'\nc.objective.ratio")) == []  # writes, numbers
    assert raw_objective_reads(ast.parse("o = config_lib.run_spec_of(c).objective\no.mode")) == []  # the typed view


@pytest.mark.parametrize("old, new", list(config_lib.MOVED_KEYS.items()))
def test_old_prepare_keys_name_their_new_key(old, new):
    c = config_lib.base_config()
    group, key = old.split(".")
    c[group][key] = 1
    assert error(c) == f"config.{old} moved to config.{new}; rename it in the config or the --config.* override"
    new_group, new_key = new.split(".")
    assert new_key in config_lib.base_config()[new_group]


def test_an_old_prepare_key_on_the_command_line_names_its_new_key():
    with pytest.raises(config_lib.ConfigError) as e:
        cli._parse("prepare", [f"--config={CONFIGS / 'tiny.py'}", "--config.data.prepare_workers=1"])
    assert str(e.value) == ("config.data.prepare_workers moved to config.prepare.workers; "
                            "rename it in the config or the --config.* override")


def test_prepare_settings_are_checked_under_their_new_names():
    for field, value, message in (("workers", 0, "config.prepare.workers=0 must be >= 1"),
                                  ("max_shards", -1, "config.prepare.max_shards=-1 must be >= 0 (0 = every shard)"),
                                  ("shard_mb", 0.0, "config.prepare.shard_mb=0.0 must be > 0")):
        c = config_lib.base_config()
        c.prepare[field] = value
        assert error(c, "prepare") == message


def test_a_demo_stage_recorded_before_the_move_is_still_reused(tmp_path):
    from rho_jax.demo import stages
    c = config_lib.base_config()
    c.workdir = str(tmp_path)
    old = json.loads(c.to_json())
    del old["prepare"]
    old["data"].update(prepare_workers=2, prepare_shard_mb=256.0, prepare_max_shards=0, beam_args="", split="train")
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert not stages.stage_done(c)  # no StageMismatch: the Beam job's settings change no training
    old["train"]["steps"] += 1
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(stages.StageMismatch, match=r"train\.steps: 101 \(recorded\) vs 100"):
        stages.stage_done(c)
