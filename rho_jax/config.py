"""The config schema (an `ml_collections.ConfigDict`) and its validation.

Every file in `configs/` starts from `base_config()` and overrides fields, so the schema lives
in one place and unknown keys are caught before any compute. Command-line overrides use
`--config.a.b=v` (absl + `ml_collections.config_flags`).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from rho_jax import reference, run_spec
from rho_jax.model import ModelConfig
from rho_jax.run_spec import ConfigError, Mode, NanPolicy, RunSpec, Score, Scope, Weighting  # noqa: F401 - re-exported
from rho_jax.sharding import DEFAULT_RULES, mesh_shape

OBJECTIVE_MODES = run_spec.values(Mode)
REFERENCE_MODES = reference.CONFIG_KINDS
NAN_POLICIES = run_spec.values(NanPolicy)
PURPOSES = ("check", "train", "score", "prepare")  # what validate() checks beyond the schema and values
# Model fields that change how a model runs, not its parameters: a loaded checkpoint takes them from the
# config (config.model), and a workdir may resume with other values.
RUNTIME_FIELDS = ("dtype", "remat", "attention", "attention_chunk", "scan_layers")
# Keys that moved, old path -> new path: a config or override naming the old one gets a one-line error.
MOVED_KEYS = {"data.prepare_workers": "prepare.workers", "data.prepare_shard_mb": "prepare.shard_mb",
              "data.prepare_max_shards": "prepare.max_shards", "data.beam_args": "prepare.beam_args",
              "data.split": "prepare.split"}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "/tmp/rho_jax_run"  # local path or gs://bucket/path
    c.seed = 0

    # Architecture (fields of rho_jax.model.ModelConfig). Ignored where init.target loads a checkpoint.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, head_dim=0,
        rope_theta=10000.0, rms_eps=1e-5, max_positions=256, tie_embeddings=False, sliding_window=0,
        arch="llama", dtype="float32", remat="none", attention="xla", attention_chunk=0,
        scan_layers=ml_collections.config_dict.placeholder(bool),  # None: `layers_scanned` decides per platform
        init_std=0.02))

    c.init = ml_collections.ConfigDict(dict(
        target="",  # '' = random init; else an HF dir, a .gguf file or an Orbax checkpoint dir
        reference="",  # the reference model's checkpoint (same forms); required for online SLM with a
        # score that reads a reference (not for `random` / `target_loss`, nor reference='ema')
    ))

    c.objective = ml_collections.ConfigDict(dict(
        mode="slm",  # clm | slm
        ratio=0.6,  # fraction of valid target tokens kept (paper: 0.6 for 1B, 0.7 for 7B)
        ratio_end=-1.0,  # < 0: constant ratio; else linear from ratio to ratio_end over train.steps
        score="excess",  # see rho_jax.objective.SCORE_FUNCTIONS; target_loss needs no reference (ESLM)
        scope="batch",  # batch (global top-k, the paper) | sequence (k per row) | document (whole segments)
        # | micro_batch (k per micro-batch under train.grad_accum > 1: approximate, no selection pass)
        weighting="hard",  # hard top-k mask | soft (softmax of the score / temperature, mean 1) | prob (DFT)
        temperature=1.0,  # soft weighting only
        reference="online",  # online (reference forward in the step) | cached (ref_ce from the score cache)
        # | ema (an EMA of the target, kept in the TrainState; with reverse_excess: ssToken)
        ema_decay=0.999,  # reference='ema': ema <- decay * ema + (1 - decay) * params after each update
        goldfish_k=0,  # > 0: Goldfish loss, drop ~1/k of target tokens by a hash of their context (k >= 2)
        goldfish_h=13,  # Goldfish context: the h tokens preceding the target
        ce_chunk=0,  # > 0: vocabulary-chunked CE that never holds f32 [B, L, V] logits
    ))

    c.mesh = ml_collections.ConfigDict(dict(
        data=-1, fsdp=1, tensor=1,  # -1 fills the remaining devices
        rules=DEFAULT_RULES,  # logical axis -> mesh axes
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=100,
        batch_size=8,  # global sequences per step
        grad_accum=1,  # micro-batches per step; the loss is normalised once over the global batch
        lr=3e-4, warmup_steps=10, min_lr_ratio=0.1,  # AdamW with linear warmup then cosine decay
        weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        log_every=10,
        nan_policy="stop",  # stop: error naming the step | skip: drop the update and go on
        peak_flops=0.0,  # per-device peak FLOP/s for MFU; 0 = look up the device kind
    ))

    c.data = data_config()

    c.prepare = ml_collections.ConfigDict(dict(  # the Beam job of `rho-jax prepare`
        workers=2,  # local DirectRunner worker processes
        shard_mb=256.0,  # input shard size: uncompressed JSONL byte ranges / parquet row-group runs
        max_shards=0,  # > 0: prepare only the first N input shards of each component (small runs)
        beam_args="",  # extra Beam pipeline options, e.g. "--runner=DataflowRunner --project=P ..."
        split="train",  # the split `rho-jax prepare` reads of a registered SeqIO source
    ))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every=50,  # steps between saves; 0 disables
        keep=3,  # keep the last N
        keep_best=False,  # also keep the best by eval loss
        async_save=True,
    ))

    c.eval = ml_collections.ConfigDict(dict(
        every=0,  # steps between held-out evaluations (and at the last step); 0 disables
        sources="champ_clean",  # comma-separated tasks, validation split; the first drives keep_best
        batch_size=8,
        max_rows=0,  # > 0: evaluate on the first N packed rows only
        prepared="",  # comma-separated prepared dirs (validation split), aligned with `sources`
    ))
    return c


def data_config() -> ml_collections.ConfigDict:
    """`config.data`: the corpus, its tokenizer and packing."""
    return ml_collections.ConfigDict(dict(
        seq_len=128,
        source="math_noisy",  # registered SeqIO task/mixture, jsonl:GLOB, parquet:GLOB or mix:SPEC=RATE,...
        vocab="",  # tokenizer path ('' = the demo SentencePiece vocabulary)
        packing=True,  # pack documents with segment ids; False pads one document per row
        shuffle_seed=0,
        score_cache="",  # directory of the offline score cache (reference=cached)
        general_rate=0.3,  # math_noisy mixture: share of the general corpus
        max_rows=0,  # > 0: use only the first N packed rows of the source (small runs)
        text_field="text",  # jsonl:/parquet: sources: the field/column holding each document's text
        prepared="",  # directory (local or gs://) of the prepared ArrayRecord rows (`rho-jax prepare`)
    ))


def layers_scanned(scan_layers: bool | None, platform: str | None = None) -> bool:
    """config.model.scan_layers resolved for the platform the program runs on (default: this process's backend).

    None (the default) unrolls the layer loop on CPU, where the scan's per-layer slices and zero-filled residual
    stacks cost more than the loop saves (BENCHMARKS.md, issue 21), and scans it on GPU/TPU, where one compiled
    body keeps compile time flat in the depth. True / False force it."""
    if scan_layers is not None:
        return bool(scan_layers)
    return (platform or jax.default_backend()) != "cpu"


def model_config(c: ml_collections.ConfigDict, platform: str | None = None) -> ModelConfig:
    """config.model as a ModelConfig for `platform` (`layers_scanned`; `rho-jax compile` passes 'tpu')."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kw = {k: v for k, v in c.model.to_dict().items() if k in fields}
    return ModelConfig(**{**kw, "scan_layers": layers_scanned(kw.get("scan_layers"), platform)})


def runtime_overrides(c: ml_collections.ConfigDict) -> dict:
    """config.model's RUNTIME_FIELDS, to apply to a loaded model (`checkpoint.load_weights(..., overrides=)`)."""
    return {k: layers_scanned(c.model[k]) if k == "scan_layers" else c.model[k] for k in RUNTIME_FIELDS}


def mesh_rules(c: ml_collections.ConfigDict) -> tuple:
    """config.mesh.rules as the hashable tuple of (logical axis, mesh axes) pairs that jit and flax take."""
    return tuple(tuple(r) for r in c.mesh.rules)


def moved_key_message(key: str) -> str:
    """The one-line error for a key of MOVED_KEYS ("data.prepare_workers")."""
    return f"config.{key} moved to config.{MOVED_KEYS[key]}; rename it in the config or the --config.* override"


def check_moved_overrides(args: list[str]) -> None:
    """ConfigError for a --config.<old key>=v command-line override of a key that moved (MOVED_KEYS)."""
    for a in args:
        key = a.removeprefix("--config.").split("=")[0]
        if a.startswith("--config.") and key in MOVED_KEYS:
            raise ConfigError(moved_key_message(key))


def _check_keys(c, schema, path="config"):
    for key in c.keys():
        if f"{path}.{key}".removeprefix("config.") in MOVED_KEYS:
            raise ConfigError(moved_key_message(f"{path}.{key}".removeprefix("config.")))
        if key not in schema:
            raise ConfigError(f"unknown config key {path}.{key}; valid keys here: {sorted(schema.keys())} "
                              f"(the training config schema is rho_jax/config.py:base_config)")
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(c[key], ml_collections.ConfigDict):
                raise ConfigError(f"{path}.{key} must be a group of fields like {sorted(schema[key].keys())}")
            _check_keys(c[key], schema[key], f"{path}.{key}")


def _choice(path: str, value, kind, what: str = ""):
    """config.`path`=value as a member of the StrEnum `kind`; else the one-line error listing its values."""
    if isinstance(value, str) and value in run_spec.values(kind):
        return kind(value)
    raise ConfigError(f"config.{path}={value!r}{what}; expected one of {run_spec.values(kind)}")


def _objective(o) -> run_spec.ObjectiveSpec:
    """config.objective's values checked and decoded (the ratio_end < 0 sentinel becomes None here only)."""
    mode = _choice("objective.mode", o.mode, Mode)
    ratio_end = float(o.ratio_end) if o.ratio_end is not None and o.ratio_end >= 0 else None
    for name in ("ratio",) + (("ratio_end",) if ratio_end is not None else ()):
        r = o[name]
        if not 0.0 < r <= 1.0:
            raise ConfigError(f"config.objective.{name}={r} is outside (0, 1]")
    score = _choice("objective.score", o.score, Score, " is not a score function")
    scope = _choice("objective.scope", o.scope, Scope)
    weighting = _choice("objective.weighting", o.weighting, Weighting)
    if weighting is Weighting.SOFT and o.temperature <= 0:
        raise ConfigError(f"config.objective.temperature={o.temperature} must be > 0 for soft weighting")
    if o.goldfish_k < 0 or o.goldfish_k == 1 or (o.goldfish_k and o.goldfish_h < 1):
        raise ConfigError(f"config.objective.goldfish_k={o.goldfish_k}, goldfish_h={o.goldfish_h}: use k = 0 (off) "
                          f"or k >= 2 (drop ~1/k of tokens) with h >= 1 context tokens")
    return run_spec.ObjectiveSpec(mode=mode, ratio=float(o.ratio), ratio_end=ratio_end, score=score, scope=scope,
                                  weighting=weighting, temperature=float(o.temperature), goldfish_k=int(o.goldfish_k),
                                  goldfish_h=int(o.goldfish_h), ce_chunk=int(o.ce_chunk))


def validate(c: ml_collections.ConfigDict, n_devices: int | None = None, purpose: str = "check") -> RunSpec:
    """Every check that depends only on the config, before any compute; each problem gets its own error
    that names it. Called once per command; returns the config's typed view (run_spec.RunSpec), which
    every layer reads instead of the raw strings. `n_devices`: also check the mesh and batch against that
    many devices. `purpose` adds what that command needs: "train" (the reference and the data it reads),
    "score" (rows, score cache, reference), "prepare" (the Beam job's settings, config.prepare)."""
    if purpose not in PURPOSES:
        raise ValueError(f"validate(purpose={purpose!r}); expected one of {PURPOSES}")
    _check_keys(c, base_config())
    spec = _decode(c, require_inputs=purpose == "train")
    t = c.train
    if t.steps < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError(f"config.train.steps/batch_size/grad_accum must be >= 1 "
                          f"(got {t.steps}/{t.batch_size}/{t.grad_accum})")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by "
                          f"config.train.grad_accum={t.grad_accum}")
    if t.log_every < 1:
        raise ConfigError(f"config.train.log_every={t.log_every} must be >= 1")
    _check_run(c, n_devices)
    {"check": lambda _: None, "train": lambda _: None, "score": _check_score, "prepare": _check_prepare}[purpose](c)
    return spec


def _decode(c, require_inputs: bool = False) -> RunSpec:
    """The RunSpec of config `c`, with the checks of the values it decodes (objective, reference, nan_policy)."""
    o, t = c.objective, c.train
    objective = _objective(o)
    ref = reference.resolve_reference(objective, o.reference, checkpoint=c.init.reference,
                                      score_cache=c.data.score_cache, ema_decay=o.ema_decay,
                                      require_inputs=require_inputs)
    return RunSpec(objective=objective, reference=ref, steps=int(t.steps), batch_size=int(t.batch_size),
                   grad_accum=int(t.grad_accum), nan_policy=_choice("train.nan_policy", t.nan_policy, NanPolicy))


def run_spec_of(c: ml_collections.ConfigDict) -> RunSpec:
    """The typed view of config `c`, for a caller that holds only the ConfigDict (a run's command validated
    it once; this decodes the same values again, without the file and device checks)."""
    return _decode(c)


def _check_run(c, n_devices) -> None:
    """Checkpoints, data length, the model and (with `n_devices`) the mesh and batch."""
    t, k = c.train, c.checkpoint
    if k.every < 0 or k.keep < 1:
        raise ConfigError(f"config.checkpoint.every={k.every} must be >= 0 (0 disables) and "
                          f"config.checkpoint.keep={k.keep} must be >= 1")
    if k.keep_best and c.eval.every <= 0:
        raise ConfigError("config.checkpoint.keep_best=True needs config.eval.every > 0: the best checkpoint "
                          "is chosen by held-out eval loss")
    if c.data.seq_len < 2:
        raise ConfigError(f"config.data.seq_len={c.data.seq_len} must be >= 2")
    if not c.init.target and c.data.seq_len > c.model.max_positions:
        raise ConfigError(f"config.data.seq_len={c.data.seq_len} exceeds the model's maximum positions "
                          f"config.model.max_positions={c.model.max_positions}")
    try:
        model_config(c)
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from None
    if n_devices is not None:
        try:
            data, fsdp, tensor = mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, n_devices)
        except ValueError as e:
            raise ConfigError(f"config.mesh: {e}") from None
        micro = t.batch_size // t.grad_accum
        if micro % (data * fsdp):
            raise ConfigError(f"config.train.batch_size={t.batch_size} (micro-batch {micro} with grad_accum="
                              f"{t.grad_accum}) is not divisible by the data parallelism data x fsdp = {data * fsdp}")


def _check_score(c) -> None:
    d = c.data
    if not d.prepared:
        raise ConfigError("config.data.prepared is empty: which prepared rows should be scored? "
                          "(run `rho-jax prepare --config=...` first)")
    if not d.score_cache:
        raise ConfigError("config.data.score_cache is empty: where should the score shards go?")
    if not c.init.reference:
        raise ConfigError("config.init.reference is empty: which reference model scores the corpus?")


def _check_prepare(c) -> None:
    p = c.prepare  # (the output directory may come from the caller: prepare.run checks it)
    if p.workers < 1:
        raise ConfigError(f"config.prepare.workers={p.workers} must be >= 1")
    if p.max_shards < 0:
        raise ConfigError(f"config.prepare.max_shards={p.max_shards} must be >= 0 (0 = every shard)")
    if p.shard_mb <= 0:
        raise ConfigError(f"config.prepare.shard_mb={p.shard_mb} must be > 0")


def check_compatible(c, target_cfg) -> None:
    """The check that needs the loaded target: maximum positions (vocabularies: data.vocab.check_vocabularies)."""
    if c.data.seq_len > target_cfg.max_positions:
        raise ConfigError(f"config.data.seq_len={c.data.seq_len} exceeds the target model's maximum positions "
                          f"({target_cfg.max_positions})")
