"""Stages and their composition: ``VAE() | Hadamard() | Wavelet() | Quantize() | Entropy()``.

Every stage is a small frozen dataclass that owns its parameters' validation, its forward
and inverse, and its serialization (``to_dict`` / ``from_dict``), with one signature for all:
``forward(data, spec)`` and ``inverse(data, spec)``, where the ``StageSpec`` carries what the
stage needs besides its own fields (model, latent shape, subbands, steps). ``STAGE_ORDER`` is
the one list of stages: everything that runs or names them in order derives from it.

A ``Pipeline`` is an ordered chain of stages whose data kinds connect, with an optional
``RateTarget``; it is the one description of a codec: presets, store settings, ``info`` and
stream headers are all derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar, Self

from vaeflow.foundations.errors import PipelineError
from vaeflow.stages.spec import StageSpec
from vaeflow.stages.target import RateTarget

# The kinds of data that flow between stages, in codec order.
DATA_KINDS = ("image", "latent", "coefficients", "symbols", "streams")
# The stages, in codec order: forward runs them first to last, inverse last to first.
STAGE_ORDER = ("postfilter", "vae", "channel", "wavelet", "quantize", "entropy")


class Stage:
    """A codec stage: ``forward(data, spec)`` turns ``input_kind`` into ``output_kind`` for a batch
    (a leading image axis), ``inverse(data, spec)`` turns it back."""

    stage_name: ClassVar[str]
    input_kind: ClassVar[str]
    output_kind: ClassVar[str]
    types: ClassVar[dict[str, type[Stage]]] = {}  # each stage's class by its name in STAGE_ORDER

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.stage_name not in STAGE_ORDER or {cls.input_kind, cls.output_kind} - set(DATA_KINDS):
            raise TypeError(f"stage {cls.__name__} names a stage or data kind outside STAGE_ORDER and DATA_KINDS")
        Stage.types[cls.stage_name] = cls

    def forward(self, data: Any, spec: StageSpec) -> Any:
        raise NotImplementedError

    def inverse(self, data: Any, spec: StageSpec) -> Any:
        raise NotImplementedError

    @classmethod
    def absent(cls) -> Stage | None:
        """What a codec runs when a pipeline leaves this stage out: a pass-through, or None where the
        stage is required."""
        return None

    def __or__(self, other: Stage | Pipeline) -> Pipeline:
        return Pipeline((self,)) | other

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "pipeline") -> Self:
        if not isinstance(data, dict):
            raise PipelineError(f"{where}: [{cls.stage_name}] must be a table of settings, got {data!r}")
        allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = set(data) - set(allowed)
        if unknown:
            raise PipelineError(f"{where}: [{cls.stage_name}] has unknown keys {sorted(unknown)}; allowed: {allowed}")
        return cls(**data)


@dataclass(frozen=True)
class Pipeline:
    """An ordered chain of stages whose data kinds connect, one of each kind of stage."""

    stages: tuple[Stage, ...]
    target: RateTarget | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        seen: dict[str, Stage] = {}
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise PipelineError(f"{stage!r} is not a vaeflow stage")
            if stage.stage_name in seen:
                raise PipelineError(
                    f"pipeline has two {stage.stage_name} stages, {seen[stage.stage_name]!r} and {stage!r}; "
                    "it takes one of each"
                )
            seen[stage.stage_name] = stage
        for prev, nxt in zip(self.stages, self.stages[1:], strict=False):
            if prev.output_kind != nxt.input_kind:
                raise PipelineError(
                    f"stage {type(nxt).__name__} takes {nxt.input_kind} but the stage before it, "
                    f"{type(prev).__name__}, produces {prev.output_kind}"
                )
        if self.target is not None and not isinstance(self.target, RateTarget):
            raise PipelineError(f"target must be a RateTarget, got {self.target!r}")

    def __or__(self, other: Stage | Pipeline) -> Pipeline:
        if isinstance(other, Pipeline):
            return Pipeline((*self.stages, *other.stages), other.target or self.target, self.description)
        return Pipeline((*self.stages, other), self.target, self.description)

    def __str__(self) -> str:
        text = " | ".join(repr(s) for s in self.stages)
        return f"{text}, aiming for {self.target!r}" if self.target else text

    @cached_property
    def by_name(self) -> dict[str, Stage]:
        """Each stage by its name (not a field: computed once, not compared, pickled with the pipeline)."""
        return {s.stage_name: s for s in self.stages}

    def stage(self, name: str) -> Stage | None:
        return self.by_name.get(name)

    def completed(self) -> Pipeline:
        """Every stage of STAGE_ORDER: those left out at their pass-through (``Stage.absent``); a
        required stage left out is refused."""
        stages = []
        for name in STAGE_ORDER:
            stage = self.stage(name) or Stage.types[name].absent()
            if stage is None:
                raise PipelineError(f"a codec pipeline runs from images to streams; it lacks {name}")
            stages.append(stage)
        return Pipeline(tuple(stages), self.target, self.description)

    def with_stages(self, *stages: Stage) -> Pipeline:
        """This pipeline with the stages of the same names replaced (or added, in codec order)."""
        by_name = {s.stage_name: s for s in (*self.stages, *stages)}
        ordered = tuple(by_name[name] for name in STAGE_ORDER if name in by_name)
        return Pipeline(ordered, self.target, self.description)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(s.stage_name for s in self.stages)

    def between(self, first: str, last: str) -> tuple[Stage, ...]:
        """The stages from ``first`` to ``last`` (names), in codec order."""
        names = self.names
        for name in (first, last):
            if name not in names:
                raise PipelineError(f"unknown stage {name!r}; choose one of {names}")
        return self.stages[names.index(first) : names.index(last) + 1]

    def forward(self, data: Any, spec: StageSpec, first: str, last: str) -> Any:
        """``data`` through the stages from ``first`` to ``last``."""
        for stage in self.between(first, last):
            data = stage.forward(data, spec)
        return data

    def inverse(self, data: Any, spec: StageSpec, last: str, first: str) -> Any:
        """``data`` back through the stages from ``last`` down to ``first``."""
        for stage in reversed(self.between(first, last)):
            data = stage.inverse(data, spec)
        return data

    def with_target(self, target: RateTarget | None) -> Pipeline:
        return Pipeline(self.stages, target, self.description)

    def to_dict(self) -> dict[str, Any]:
        """One table per stage, and the target's when there is one (what a preset file holds)."""
        out: dict[str, Any] = {s.stage_name: s.to_dict() for s in self.stages}
        if self.target is not None:
            out["target"] = self.target.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "pipeline") -> Pipeline:
        """A pipeline from its tables (any order); unknown sections and keys are refused."""
        if not isinstance(data, dict):
            raise PipelineError(f"{where}: a pipeline is a table of stage tables, got {type(data).__name__}")
        sections = [*STAGE_ORDER, "target", "description"]
        unknown = set(data) - set(sections)
        if unknown:
            raise PipelineError(f"{where}: unknown sections {sorted(unknown)}; allowed: {sections}")
        stages = tuple(Stage.types[name].from_dict(data[name], where) for name in STAGE_ORDER if name in data)
        target = RateTarget.from_dict(data["target"], f"{where} [target]") if "target" in data else None
        return cls(stages, target, str(data.get("description", "")))
