"""``--quant``: one scheme for every MoE layer. Its own module, imported when an override is given: a
frozen dataclass costs an exec() per generated method to define, which explain's start-up counts
(issue 20)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schemas.quant import QuantScheme
from .base import QuantConfig


@dataclass(frozen=True)
class OverrideQuant(QuantConfig):
    """``--quant`` given on the command line: every MoE layer gets this scheme."""

    scheme: QuantScheme = field(default_factory=QuantScheme)

    def scheme_for(self, name: str) -> QuantScheme:
        return self.scheme
