"""Which reference a run uses, decided in one function (`resolve_reference`), and what that mode needs.

    none    CLM, or a score that reads no reference (random, target_loss) with online or ema: nothing is
            loaded or run.
    online  the reference model's forward runs in the step; config.init.reference holds its weights.
    cached  ref_ce (and ref_entropy) come with the rows from the score cache (`rho-jax score`);
            config.init.reference is the model the scores were made with, which the cache is checked against.
            SLM with a score that reads no reference still gets them (the selection statistics compare with them).
    ema     an EMA of the target, kept in the TrainState (with reverse_excess: ssToken).

A new mode is a member of ReferenceKind plus its entries in the tables below, and the step's code for it.
"""

from __future__ import annotations

import dataclasses
import enum

from rho_jax.run_spec import ConfigError, ObjectiveSpec


class ReferenceKind(enum.StrEnum):
    NONE = "none"  # resolved only, never written in a config
    ONLINE = "online"
    CACHED = "cached"
    EMA = "ema"


# config.objective.reference's accepted values, in the order the error message lists them.
CONFIG_KINDS = tuple(k.value for k in ReferenceKind if k is not ReferenceKind.NONE)
# Kinds that need config.init.reference to train, and why (the error message's reason).
_NEEDS_CHECKPOINT = {
    ReferenceKind.ONLINE: "the reference model the step scores with",
    ReferenceKind.CACHED: "the reference the scores were made with, so the score cache can be checked against it",
}
_IN_STEP = {ReferenceKind.ONLINE, ReferenceKind.EMA}  # the step runs the reference's forward
_TARGET_SHAPED = {ReferenceKind.EMA}  # the reference is a copy of the target's parameters (its architecture)
_FOR_STATISTICS = {ReferenceKind.CACHED}  # kept in SLM when the score reads no reference: the statistics use it


@dataclasses.dataclass(frozen=True)
class ReferenceMode:
    """The resolved reference of a run and what it needs (hashable; fields unused by the kind are empty)."""

    kind: ReferenceKind
    checkpoint: str = ""  # config.init.reference: online (weights the step runs), cached (the cache's identity)
    score_cache: str = ""  # cached: config.data.score_cache
    ema_decay: float = 0.0  # ema: ema <- decay * ema + (1 - decay) * params after each update
    with_entropy: bool = False  # the score reads the reference's per-token entropy (cached: the shards hold it)
    scored: bool = False  # the score reads it (else, cached: the selection statistics only)

    @property
    def active(self) -> bool:
        return self.kind is not ReferenceKind.NONE

    @property
    def loads_checkpoint(self) -> bool:
        """Whether the run loads config.init.reference's weights to run them (cached only checks its identity)."""
        return self.kind is ReferenceKind.ONLINE

    @property
    def in_step(self) -> bool:
        """Whether the step computes the reference's CE itself (else it comes with the batch, or is unused)."""
        return self.kind in _IN_STEP

    @property
    def target_shaped(self) -> bool:
        """Whether the reference is a copy of the target's parameters (so it has the target's architecture)."""
        return self.kind in _TARGET_SHAPED

    @property
    def random_ties(self) -> bool:
        """Score ties broken at random: a copy of the target (the EMA) starts equal to it, every excess 0, and
        the flat index would pick the first rows."""
        return self.kind in _TARGET_SHAPED


def resolve_reference(objective: ObjectiveSpec, kind: str, *, checkpoint: str = "", score_cache: str = "",
                      ema_decay: float = 0.999, require_inputs: bool = False) -> ReferenceMode:
    """THE decision of which reference a run uses: `kind` is config.objective.reference, `checkpoint`
    config.init.reference, `score_cache` config.data.score_cache, `ema_decay` config.objective.ema_decay.
    `require_inputs` (training): also require the checkpoint and score cache the mode reads.
    Raises ConfigError with the one-line message of each problem."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"config.objective.reference={kind!r}; expected one of {CONFIG_KINDS}")
    kind = ReferenceKind(kind)
    score = objective.score.value
    if objective.slm and kind is ReferenceKind.EMA and not objective.reads_reference:
        raise ConfigError(f"config.objective.reference='ema' with score={score!r}, which reads no reference; "
                          f"use a reference score (e.g. reverse_excess) or another reference mode")
    if not 0.0 <= ema_decay < 1.0:
        raise ConfigError(f"config.objective.ema_decay={ema_decay} is outside [0, 1)")
    scored = objective.reads_reference
    if not objective.slm or not (scored or kind in _FOR_STATISTICS):
        return ReferenceMode(ReferenceKind.NONE)
    why = _NEEDS_CHECKPOINT.get(kind)
    require_inputs = require_inputs and scored  # statistics only: the input layer reports what is missing
    if require_inputs and why and not checkpoint:
        raise ConfigError(f"config.objective.reference={kind.value!r} with score={score!r} needs "
                          f"config.init.reference: {why} (an Orbax dir, HF dir or .gguf)")
    if require_inputs and kind is ReferenceKind.CACHED and not score_cache:
        raise ConfigError("config.objective.reference='cached' needs config.data.score_cache (run `rho-jax score`)")
    return ReferenceMode(kind, checkpoint=checkpoint if why else "",
                         score_cache=score_cache if kind is ReferenceKind.CACHED else "",
                         ema_decay=float(ema_decay) if kind is ReferenceKind.EMA else 0.0,
                         with_entropy=objective.reads_ref_entropy, scored=scored)
