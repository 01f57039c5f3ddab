"""The result of a recorded cell: derivatives, diagnoses, checks and tangent curves.

`TapeResult` is what `%%tape` leaves in `_tape`. It holds plain data (tensors, arrays
and strings) and knows nothing of how it is shown: `tapemagic.display.render` turns it
into HTML, markdown and text, and the IPython layer registers those as its formatters
(as `%timeit`'s result is data, printed by a separate formatter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# The four outcomes a derivative can have, told apart everywhere it is shown.
VALUE = "value"  # a finite, non-zero tensor
ZERO = "zero"  # computed, and all zeros at this point (e.g. relu below 0, tf.sign)
STRUCTURAL = "structural"  # None from TF, but the true answer is 0 (d2(3x)/dx2): shown as 0
NONE = "none"  # None: no differentiable path; `why` says which link broke
NONFINITE = "nonfinite"  # contains NaN or Inf; `why` says where it came from

KINDS = ("gradient", "jacobian", "hessian")


# The verdicts of a finite-difference check.
CHECK_OK = "ok"
MISMATCH = "MISMATCH"
INCONCLUSIVE = "inconclusive"  # finite differences cannot decide here: `note` says why
NOT_CHECKED = "not checked"  # the source cannot be checked: `note` says why


@dataclass
class Check:
    """Verdict of comparing an analytic derivative with finite differences.

    ``max_rel_error`` is the worst |analytic - numeric| over the scale of the derivative,
    ``tolerance`` the largest that rounding in the analytic derivative and the finite
    differences' own error estimate explain (both relative to the same scale)."""

    ok: bool
    max_rel_error: float
    tolerance: float
    precision: str  # dtype the finite differences were computed in, e.g. "float64"
    kink: bool = False  # one-sided differences disagree: the derivative is not defined here
    note: str = ""
    verdict: str = ""  # one of the verdicts above; "" means CHECK_OK or MISMATCH from `ok`

    def __post_init__(self) -> None:
        self.verdict = self.verdict or (CHECK_OK if self.ok else MISMATCH)

    def summary(self) -> str:
        if self.verdict == NOT_CHECKED:
            return f"not checked: {self.note}"
        text = f"{self.verdict}: "
        if self.verdict == INCONCLUSIVE and self.note:
            text += f"{self.note}; "
        if self.max_rel_error == self.max_rel_error:  # no numbers (NaN) when none were taken
            text += (
                f"max rel. error {self.max_rel_error:.1e} "
                f"(tolerance {self.tolerance:.0e}, {self.precision} differences)"
            )
        text = text.removesuffix("; ")
        if self.kink and "kink" not in self.note:
            text += "; kink: one-sided slopes differ"
        if self.note and self.verdict != INCONCLUSIVE:
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


@dataclass(eq=False)  # compared and hashed by identity: the display layer caches its drawing
class TangentCurve:
    """What `--plot` shows: a scalar target sampled around the point, with its tangent.

    ``ys`` holds the target re-computed at each of ``xs`` (NaN where that run failed);
    ``dydx`` and ``d2ydx2`` are its first and second derivatives taken numerically from
    those samples, for orders 2 and up (None at order 1).
    """

    target: str
    source: str
    xs: np.ndarray
    ys: np.ndarray
    x0: float  # the point
    y0: float  # the target's recorded value there
    slope: float  # the derivative the tape gave at x0
    order: int = 1
    dydx: np.ndarray | None = None
    d2ydx2: np.ndarray | None = None

    def tangent(self) -> np.ndarray:
        """The tangent line at x0, evaluated at ``xs``."""
        return self.y0 + self.slope * (self.xs - self.x0)


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
    tangents: list[TangentCurve] = field(default_factory=list)  # from --plot
    tape: Any = field(default=None, repr=False)  # the inner persistent tf.GradientTape
    # Called for pairs that were not precomputed: (target, source) -> Derivative.
    _lookup: Any = field(default=None, repr=False, compare=False)
    # A source given as the object itself (a Variable) -> its name here, or None.
    _name_of: Any = field(default=None, repr=False, compare=False)

    def find(self, target: str, source: Any, order: int = 1, kind: str = "gradient"):
        """The `Derivative` for this pair, computing it on demand where the tapes allow.
        `source` is a name (`"x"`, `"b.w"`, `"ws[0]"`) or the object itself."""
        if not isinstance(source, str) and self._name_of is not None:
            source = self._name_of(source) or source
        if isinstance(source, str):  # objects the names do not know go to the lookup
            for d in self.derivatives:
                if (d.target, d.source, d.order, d.kind) == (target, source, order, kind):
                    return d
        if kind == "gradient" and order > 1 and any(d.order >= order for d in self.derivatives):
            # An order asked for whose lower order is None: None too, with the reason of
            # the lowest None (TF gives nothing to differentiate again), never no entry.
            for k in range(1, order):
                lower = self.find(target, source, k, kind)
                if lower is not None and lower.status == NONE:
                    why = f"the order-{k} derivative is None, so there is no order {order}"
                    return Derivative(
                        target, lower.source, order, kind, None, NONE, lower.summed,
                        why=f"{why}: {lower.why}" if lower.why else why, error=lower.error,
                    )  # fmt: skip
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

    def jacobian(self, target: str, source: Any):
        """The full Jacobian, shape (target elements, source elements) for tensors of rank
        above 1 (a scalar target's Jacobian is its gradient), or None; computed on demand
        from the kept tape when the cell ran without --jacobian."""
        d = self.find(target, source, 1, "jacobian")
        if d is None:
            raise KeyError(
                f"no Jacobian of {target!r} with respect to {source!r}; "
                f"targets: {', '.join(self.targets) or 'none'}; "
                f"sources: {', '.join(self.sources) or 'none'}"
            )
        return d.value

    def hessian(self, target: str, source: Any):
        """The Hessian of a scalar target, or None. It needs the second tape of a run with
        --hessian (or, for a scalar source, -o 2 and up: its order-2 derivative)."""
        d = self.find(target, source, 1, "hessian")
        if d is None:
            second = self.find(target, source, 2)
            scalars = second is not None and _size(self.values.get(target)) == 1
            if scalars and _size(self.point.get(second.source)) == 1:  # H is d2y/dx2 then
                return second.value
            raise KeyError(
                f"no Hessian of {target!r} with respect to {source!r}: it is taken while the "
                f"cell runs; run it with %%tape --hessian"
            )
        return d.value

    def why(self, target: str, source: Any, order: int = 1) -> str | None:
        """Why this derivative is None or not finite; None when it is a proper value."""
        d = self.find(target, source, order)
        if d is None:
            raise KeyError(f"no derivative of {target!r} with respect to {source!r}")
        return d.why if d.status in (NONE, NONFINITE, STRUCTURAL) else None

    def __repr__(self) -> str:
        """One plain line; the tables are the display layer's formatters."""
        targets = ", ".join(map(str, self.targets)) or "no targets"
        sources = ", ".join(map(str, self.sources)) or "no sources"
        parts = [f"{_count(self.derivatives, 'derivative')} of {targets} w.r.t. {sources}"]
        parts += [_count(self.notes, "note")] if self.notes else []
        parts += [_count(self.tangents, "tangent curve")] if self.tangents else []
        return f"<TapeResult: {', '.join(parts)}>"


def _size(value: Any) -> int | None:
    """Elements in a tensor or array (None for anything without a shape)."""
    shape = getattr(value, "shape", None)
    return None if shape is None else math.prod(int(n) for n in shape)


def _count(items: list, what: str) -> str:
    return f"{len(items)} {what}{'' if len(items) == 1 else 's'}"
