"""Rate targets: encoder-side policy that searches each image's quantizer step.

A target is not part of what a stream needs to decode (the stream records the step it
got); it is what the encoder aims for, with the figure reached recorded beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vaeflow.errors import PipelineError

KINDS = ("bpp", "psnr", "latent")


@dataclass(frozen=True)
class RateTarget:
    """Exactly one of ``bpp``, ``psnr`` or ``max_latent_error``; ``max_psnr_drop`` only beside the latter.

    - ``bpp``: the step whose stream has this rate (within 2%);
    - ``psnr``: the step whose decoded image has this PSNR (within 0.1 dB);
    - ``max_latent_error``: the largest step keeping every dequantized latent value within this
      (unit-variance scale); with ``max_psnr_drop``, also keeping the decoded PSNR within that
      many dB of decoding the exact latent.
    """

    bpp: float | None = None
    psnr: float | None = None
    max_latent_error: float | None = None
    max_psnr_drop: float | None = None

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PipelineError(f"target {key} must be a number, got {value!r}")
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PipelineError(f"target {key} must be a positive number, got {value!r}")
        given = [k for k in ("bpp", "psnr", "max_latent_error") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PipelineError(f"a rate target takes one of bpp, psnr or max_latent_error; got {given or 'none'}")
        if self.max_psnr_drop is not None and self.max_latent_error is None:
            raise PipelineError("max_psnr_drop works beside max_latent_error; give both")

    @property
    def kind(self) -> str:
        return "bpp" if self.bpp is not None else "psnr" if self.psnr is not None else "latent"

    @property
    def value(self) -> float:
        return float(next(v for v in (self.bpp, self.psnr, self.max_latent_error) if v is not None))

    @property
    def searches_with_image(self) -> bool:
        """Whether the search decodes trials and compares them with the original image."""
        return self.psnr is not None or self.max_psnr_drop is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target") -> RateTarget:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PipelineError(f"{where}: unknown keys {sorted(unknown)}; allowed: {list(cls.__dataclass_fields__)}")
        return cls(**data)


@dataclass(frozen=True)
class TargetRecord:
    """What a rate-controlled stream records: the target's kind and value, and the figure reached;
    beside a latent error bound, the PSNR-drop limit and the drop reached (format 2)."""

    kind: str
    value: float
    achieved: float
    drop_limit: float | None = None
    drop: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PipelineError(f"unknown target kind {self.kind!r}; choose one of {KINDS}")
        if (self.drop_limit is None) != (self.drop is None) or (self.drop_limit is not None and self.kind != "latent"):
            raise PipelineError("a PSNR-drop record needs both its limit and the drop, beside a latent error bound")
