"""The result of a recorded cell: derivatives, diagnoses and checks, with their reprs.

`TapeResult` is what `%%tape` leaves in `_tape`. It holds plain data (tensors and
strings); rendering lives in `render.py`, so this module stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The four outcomes a derivative can have, told apart everywhere it is shown.
VALUE = "value"  # a finite, non-zero tensor
ZERO = "zero"  # computed, and all zeros at this point (e.g. relu below 0, tf.sign)
STRUCTURAL = "structural"  # None from TF, but the true answer is 0 (d2(3x)/dx2): shown as 0
NONE = "none"  # None: no differentiable path; `why` says which link broke
NONFINITE = "nonfinite"  # contains NaN or Inf; `why` says where it came from

KINDS = ("gradient", "jacobian", "hessian")


@dataclass
class Check:
    """Verdict of comparing an analytic derivative with central finite differences."""

    ok: bool
    max_rel_error: float
    tolerance: float
    precision: str  # dtype the finite differences were computed in, e.g. "float64"
    kink: bool = False  # one-sided differences disagree: the derivative is not defined here
    note: str = ""

    def summary(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        text = (
            f"{verdict}: max rel. error {self.max_rel_error:.1e} "
            f"(tolerance {self.tolerance:.0e}, {self.precision} differences)"
        )
        if self.kink:
            text += "; kink: one-sided slopes differ"
        if self.note:
            text += f"; {self.note}"
        return text


@dataclass
class Derivative:
    """One derivative of one target with respect to one source."""

    target: str
    source: str
    order: int = 1
    kind: str = "gradient"  # one of KINDS
    value: Any = None  # tf.Tensor, or None when TF returned None
    status: str = VALUE  # one of the outcomes above
    summed: bool = False  # gradient of the sum of a non-scalar target's elements
    why: str | None = None  # diagnosis for NONE / NONFINITE / STRUCTURAL
    check: Check | None = None
    error: Exception | None = None  # what TF raised instead of a gradient (e.g. LookupError)

    @property
    def notation(self) -> str:
        """Plain-text notation, e.g. ∂y/∂x, ∂²y/∂x², ∂Σy/∂x, J(y; x), H(y; x)."""
        if self.kind == "jacobian":
            return f"J({self.target}; {self.source})"
        if self.kind == "hessian":
            return f"H({self.target}; {self.source})"
        target = self.target if self.target.isidentifier() else f"({self.target})"
        top = f"Σ{target}" if self.summed else target
        if self.order == 1:
            return f"∂{top}/∂{self.source}"
        sup = _SUPERSCRIPT.get(self.order, f"^{self.order}")
        return f"∂{sup}{top}/∂{self.source}{sup}"


_SUPERSCRIPT = {1: "", 2: "²", 3: "³", 4: "⁴"}


@dataclass
class TapeResult:
    """Derivatives of what a cell computed with respect to what it read.

    ``targets`` and ``sources`` are names; ``point`` maps each source name to the
    value it had when recorded, ``values`` each target name to its value.
    """

    targets: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    point: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    derivatives: list[Derivative] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about the cell, one line each
    plots: list[bytes] = field(default_factory=list)  # PNG images (from --plot)
    tape: Any = field(default=None, repr=False)  # the inner persistent tf.GradientTape
    # Called for pairs that were not precomputed: (target, source) -> Derivative.
    _lookup: Any = field(default=None, repr=False, compare=False)

    def find(self, target: str, source: Any, order: int = 1, kind: str = "gradient"):
        """The `Derivative` for this pair, computing it on demand where the tapes allow."""
        if isinstance(source, str):  # objects (a Variable) are resolved by the lookup
            for d in self.derivatives:
                if (d.target, d.source, d.order, d.kind) == (target, source, order, kind):
                    return d
        if self._lookup is not None:
            return self._lookup(target, source, order, kind)
        return None

    def gradient(self, target: str, source: Any, order: int = 1):
        """The derivative as a tensor, or None (structural zeros come back as zeros)."""
        d = self.find(target, source, order)
        if d is None:
            raise KeyError(
                f"no derivative of {target!r} with respect to {source!r} at order {order}; "
                f"targets: {', '.join(self.targets) or 'none'}; "
                f"sources: {', '.join(self.sources) or 'none'}"
            )
        return d.value

    def why(self, target: str, source: Any, order: int = 1) -> str | None:
        """Why this derivative is None or not finite; None when it is a proper value."""
        d = self.find(target, source, order)
        if d is None:
            raise KeyError(f"no derivative of {target!r} with respect to {source!r}")
        return d.why if d.status in (NONE, NONFINITE, STRUCTURAL) else None

    # -- reprs: the work is in render.py ------------------------------------------------
    def _repr_html_(self) -> str:
        from tapemagic.display import render

        return render.to_html(self)

    def _repr_markdown_(self) -> str:
        from tapemagic.display import render

        return render.to_markdown(self)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        from tapemagic.display import render

        p.text("TapeResult(...)" if cycle else render.to_text(self))

    def __repr__(self) -> str:
        from tapemagic.display import render

        return render.to_text(self)
