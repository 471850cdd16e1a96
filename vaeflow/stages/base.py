"""What every stage's params dataclass shares: its data kinds, its name, and ``|``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from vaeflow.pipeline import Pipeline

# The kinds of data that flow between stages, in codec order.
KINDS = ("image", "latent", "coefficients", "symbols", "streams")


class Stage:
    stage_name: ClassVar[str]
    input_kind: ClassVar[str]
    output_kind: ClassVar[str]

    def __or__(self, other: Any) -> Pipeline:
        from vaeflow.pipeline import Pipeline

        return Pipeline((self,)) | other
