"""Selection policies: how eligible candidates are ranked (the default, declared priority)."""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec
from ..schemas.selection import Candidate, DecidedBy, Note


class Policy(Protocol):
    """Orders eligible candidates. ``order`` returns the ranked list, the rule that decided, and notes.
    ``key`` names the policy in the fingerprint; a policy is hashable (selections are cached by it).
    The two flags are read-only: a frozen dataclass field or a property both conform."""

    @property
    def exact_activations(self) -> bool: ...

    @property
    def allow_padding(self) -> bool: ...

    def __hash__(self) -> int: ...

    def order(self, candidates: Sequence[Candidate], layer: LayerSpec,
              device: DeviceSpec) -> tuple[list[Candidate], DecidedBy, tuple[Note, ...]]: ...

    def key(self) -> str: ...


# A NamedTuple, not a frozen dataclass: ~4x cheaper to define (explain's start-up counts, issue 20);
# read-only fields, and hashed and compared by value all the same.
class DeclaredPriority(NamedTuple):
    """The default: declared priority for the layer's quant family, highest first; among equals,
    no padding before padding, then the backend id (so the order never depends on dict order).

    ``exact_activations``: reject backends that would run an approximation of the activation
    (e.g. exact-erf GeGLU for gelu_tanh) instead of accepting it with a note.
    ``allow_padding``: when False, a rule that needs padding rejects instead.
    """

    exact_activations: bool = False
    allow_padding: bool = True

    def order(self, candidates: Sequence[Candidate], layer: LayerSpec,
              device: DeviceSpec) -> tuple[list[Candidate], DecidedBy, tuple[Note, ...]]:
        ranked = sorted(candidates, key=lambda c: (-c.priority, bool(c.padding), c.backend))
        return ranked, "priority", ()

    def key(self) -> str:
        return f"declared(exact={self.exact_activations},pad={self.allow_padding})"
