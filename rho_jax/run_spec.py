"""The typed, frozen view of a validated config: what a run does, decoded once.

`config.validate` builds a `RunSpec` from the `ml_collections.ConfigDict` after checking it; every layer
(loop, step, input, score job, demo) reads this view, never the raw objective strings. The vocabularies
of score, scope and weighting are objective.py's own tuples, so a new score is added there only; the
reference's vocabulary and requirements are rho_jax/reference.py's.
"""

from __future__ import annotations

import dataclasses
import enum

from rho_jax import objective


class ConfigError(ValueError):
    """A config problem, in one line: what, where, the fix (the CLI exits 2 with it)."""


class Mode(enum.StrEnum):
    CLM = "clm"  # every valid token
    SLM = "slm"  # the selected tokens only


class NanPolicy(enum.StrEnum):
    STOP = "stop"
    SKIP = "skip"


def _vocabulary(name: str, values) -> type[enum.StrEnum]:
    """A StrEnum whose members are another module's names (NAME = "name"), in that module's order."""
    return enum.StrEnum(name, [(v.upper(), v) for v in values], module=__name__)


Score = _vocabulary("Score", objective.SCORE_FUNCTIONS)
Scope = _vocabulary("Scope", objective.CONFIG_SCOPES)
Weighting = _vocabulary("Weighting", objective.WEIGHTINGS)


def values(kind: type[enum.Enum]) -> tuple[str, ...]:
    """The enum's values as the plain tuple the error messages print: ('clm', 'slm')."""
    return tuple(m.value for m in kind)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """config.objective, decoded: which tokens a step trains on and with what weight."""

    mode: Mode
    ratio: float  # fraction of valid target tokens kept, in (0, 1]
    ratio_end: float | None  # None: a constant ratio; else linear from ratio to ratio_end over train.steps
    score: Score
    scope: Scope
    weighting: Weighting
    temperature: float  # soft weighting only
    goldfish_k: int  # 0: off; else drop ~1/k of target tokens
    goldfish_h: int
    ce_chunk: int  # > 0: vocabulary-chunked CE

    @property
    def slm(self) -> bool:
        return self.mode is Mode.SLM

    @property
    def reads_reference(self) -> bool:
        """Whether the objective reads a reference at all (SLM with a score other than random / target_loss)."""
        return self.slm and objective.needs_ref(self.score)

    @property
    def reads_ref_entropy(self) -> bool:
        """Whether the score reads the reference's per-token entropy (scores of the reference's entropy)."""
        return objective.needs_ref_entropy(self.score)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated config's typed view (config.validate returns it; hashable, frozen)."""

    objective: ObjectiveSpec
    reference: "ReferenceMode"  # rho_jax.reference.ReferenceMode (reference.py imports this module)
    steps: int
    batch_size: int  # global sequences per step
    grad_accum: int
    nan_policy: NanPolicy
