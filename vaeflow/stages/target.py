"""Rate targets: encoder-side policy that searches each image's quantizer step.

A target is not part of what a stream needs to decode (the stream records the step it
got); it is what the encoder aims for, with the figure reached recorded beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vaeflow.foundations.errors import PipelineError

TARGET_KINDS = ("bpp", "psnr", "latent")
VERIFY = ("all", "sample", "none")  # how a PSNR-drop limit is proved: every image decoded, a sample, none
DEFAULT_VERIFY_FRACTION = 1 / 32


@dataclass(frozen=True)
class RateTarget:
    """Exactly one of ``bpp``, ``psnr`` or ``max_latent_error``; ``max_psnr_drop`` only beside the latter.

    - ``bpp``: the step whose stream has this rate (within 2%);
    - ``psnr``: the step whose decoded image has this PSNR (within 0.1 dB);
    - ``max_latent_error``: the largest step keeping every dequantized latent value within this
      (unit-variance scale); with ``max_psnr_drop``, also keeping the decoded PSNR within that
      many dB of decoding the exact latent.

    ``verify`` says how a PSNR-drop limit is kept (``vaeflow.codec.ratecontrol``): ``"all"``
    decodes every image and checks its step; ``"sample"`` decodes ``verify_fraction`` of a
    dataset's images, chosen from their names, and predicts the others' steps with a margin
    learned from them; ``"none"`` predicts every step from the model's calibration.
    """

    bpp: float | None = None
    psnr: float | None = None
    max_latent_error: float | None = None
    max_psnr_drop: float | None = None
    verify: str = "all"
    verify_fraction: float = DEFAULT_VERIFY_FRACTION

    def __post_init__(self) -> None:
        if self.verify not in VERIFY:
            raise PipelineError(f"target verify must be one of {', '.join(VERIFY)}, got {self.verify!r}")
        fraction = self.verify_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise PipelineError(f"target verify_fraction must be a number in (0, 1], got {fraction!r}")
        for key in ("bpp", "psnr", "max_latent_error", "max_psnr_drop"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PipelineError(f"target {key} must be a number, got {value!r}")
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PipelineError(f"target {key} must be a positive number, got {value!r}")
        given = [k for k in ("bpp", "psnr", "max_latent_error") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PipelineError(f"a rate target takes one of bpp, psnr or max_latent_error; got {given or 'none'}")
        if self.max_psnr_drop is not None and self.max_latent_error is None:
            raise PipelineError("max_psnr_drop works beside max_latent_error; give both")
        if self.max_psnr_drop is None and (self.verify != "all" or fraction != DEFAULT_VERIFY_FRACTION):
            raise PipelineError("verify and verify_fraction apply to a PSNR-drop limit (max_psnr_drop)")
        if self.verify != "sample":  # the fraction means nothing then: one target, one form
            object.__setattr__(self, "verify_fraction", DEFAULT_VERIFY_FRACTION)

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

    @property
    def measures_every_image(self) -> bool:
        """Whether every image's PSNR drop is measured by decoding (any other target: none is predicted)."""
        return self.max_psnr_drop is None or self.verify == "all"

    def to_dict(self) -> dict[str, Any]:
        """Its settings; the verification policy only beside a PSNR-drop limit, the fraction only for ``sample``."""
        out = asdict(self)
        if self.max_psnr_drop is None or self.verify != "sample":
            del out["verify_fraction"]
        if self.max_psnr_drop is None:
            del out["verify"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target") -> RateTarget:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PipelineError(f"{where}: unknown keys {sorted(unknown)}; allowed: {list(cls.__dataclass_fields__)}")
        return cls(**data)


@dataclass(frozen=True)
class TargetRecord:
    """What a rate-controlled stream records: the target's kind and value, and the figure reached;
    beside a latent error bound, the PSNR-drop limit (formats 2 to 4), the drop measured by decoding
    (None where it was predicted only) and the drop predicted from the model's calibration (format 4)."""

    kind: str
    value: float
    achieved: float
    drop_limit: float | None = None
    drop: float | None = None
    predicted_drop: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise PipelineError(f"unknown target kind {self.kind!r}; choose one of {TARGET_KINDS}")
        reached = self.drop is not None or self.predicted_drop is not None
        if (self.drop_limit is None) == reached or (self.drop_limit is not None and self.kind != "latent"):
            raise PipelineError(
                "a PSNR-drop record needs its limit and the drop measured or predicted, beside a latent error bound"
            )

    @property
    def measured(self) -> bool:
        """Whether the drop was measured by decoding (every format-2 and format-3 drop was)."""
        return self.drop is not None
