"""Run code under nested persistent GradientTapes and take its derivatives.

For derivatives up to order N the code runs inside N nested tapes. Each derivative
of order k is taken while the tapes outside it are still recording, so it can be
differentiated again: the placement the seed tutorial does by hand with `t` and `t2`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, VALUE, ZERO, Derivative
from tapemagic.variables import unwrap


def is_float_tensor(value: Any) -> bool:
    """A tensor or Variable a tape can differentiate (floating or complex dtype)."""
    return isinstance(value, (tf.Tensor, tf.Variable)) and (
        value.dtype.is_floating or value.dtype.is_complex
    )


def to_numpy(value: Any) -> np.ndarray:
    """A tensor, Variable or number as a NumPy array; bfloat16 comes back as float32 (exact):
    `np.asarray` of a bfloat16 scalar tensor fails, and NumPy's own functions do not all know
    the ml_dtypes type (its dtype kind is "V", not "f")."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype == tf.bfloat16:
            value = tf.cast(value, tf.float32)
        return np.asarray(value.numpy())
    return np.asarray(value)


def is_tensor_like(value: Any) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable))


def size_of(value: Any) -> int:
    """Elements in a value; a list or tuple of tensors counts all of theirs (TF sums them)."""
    if isinstance(value, (list, tuple)):
        return sum(size_of(v) for v in value)
    if not is_tensor_like(value):
        return 1
    n = value.shape.num_elements()
    return int(tf.size(value)) if n is None else n


@dataclass
class Plan:
    """What to compute once the code has run."""

    order: int = 1
    jacobian: bool = False
    hessian: bool = False

    @property
    def levels(self) -> int:
        return max(self.order, 2 if self.hessian else 1)


@dataclass
class Recorder:
    """Nested persistent tapes, opened by `start`, closed level by level by `finish`.

    `sources` maps names to the objects derivatives are taken with respect to; the
    rewritten cell reports names it binds through `bind`, and those named in `watch`
    (or Variables the cell creates) become sources from that moment.
    """

    plan: Plan = field(default_factory=Plan)
    watch: set[str] | None = None  # names to watch when bound; None: Variables only
    device: str | None = None
    sources: dict[str, Any] = field(default_factory=dict)
    bound: dict[str, tuple[int, Any]] = field(default_factory=dict)  # name -> (line, last value)
    last_value: Any = None
    created: set[int] = field(default_factory=set)  # ids of Variables made during the run
    # Values of Variable sources when first seen: the point derivatives are taken at, even
    # if the cell then changes the Variable (an SGD step inside the cell). Large ones only
    # when `keep_large` (the finite-difference check needs them).
    initial: dict[str, Any] = field(default_factory=dict)
    keep_large: bool = False
    tapes: list[tf.GradientTape] = field(default_factory=list)
    _stack: contextlib.ExitStack | None = None

    def start(self, sources: dict[str, Any]) -> None:
        self._stack = contextlib.ExitStack()
        if self.device:
            self._stack.enter_context(tf.device(self.device))
        self._stack.enter_context(tf.variable_creator_scope(self._creator))
        for _ in range(self.plan.levels):
            self.tapes.append(self._stack.enter_context(tf.GradientTape(persistent=True)))
        for name, value in sources.items():
            self._add_source(name, value)

    def _creator(self, next_creator, **kwargs):
        """Note the Variables the cell creates: those, not any it binds, are sources."""
        var = next_creator(**kwargs)
        self.created.add(id(var))
        return var

    def _add_source(self, name: str, value: Any) -> None:
        value = unwrap(value)
        self.sources[name] = value
        if isinstance(value, tf.Variable) and (self.keep_large or size_of(value) <= 1000):
            self.initial[name] = tf.identity(value)
        if is_float_tensor(value):  # TF only warns for others, and records nothing
            for tape in self.tapes:
                tape.watch(value)

    def bind(self, lineno: int, names: tuple[str, ...], values: tuple[Any, ...]) -> tuple:
        """Hook called by the rewritten cell after each binding statement."""
        for name, value in zip(names, values, strict=True):
            self.bound[name] = (lineno, value)
            value = unwrap(value)
            if name in self.sources:
                continue  # derivatives are with respect to a source's first value
            if self.watch is not None:
                wanted = name in self.watch
            else:
                wanted = isinstance(value, tf.Variable) and id(value) in self.created
            if wanted and is_tensor_like(value):
                self._add_source(name, value)
        return values

    def last(self, value: Any) -> Any:
        """Hook wrapped around the cell's last expression."""
        self.last_value = value
        return value

    def close(self) -> None:
        """Close every tape still open (all of them after a failed cell): no later code
        may be recorded. Tapes `finish` already exited are closed again harmlessly."""
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.close()
            self._stack = None

    def finish(self, targets: dict[str, Any]) -> list[Derivative]:
        """Close the tapes innermost first, taking each order's derivatives in between."""
        assert self._stack is not None, "start() was not called"
        plan = self.plan
        pairs = [(t, s) for t in targets for s in self.sources]
        current: dict[tuple[str, str], Any] = {p: targets[p[0]] for p in pairs}
        results: list[Derivative] = []
        gradients: dict[tuple[str, str], Any] = {}
        errors: dict[tuple[str, str], Exception] = {}
        zero_from: dict[tuple[str, str], Derivative] = {}  # a None at order >= 2, and up
        try:
            for order in range(1, plan.order + 1):
                tape = self.tapes[-order]
                tape.__exit__(None, None, None)
                nxt = (
                    self._first_order(tape, targets, errors)
                    if order == 1
                    else {p: self._gradient(tape, current[p], p, errors) for p in current}
                )
                for pair in pairs:
                    if pair in zero_from:  # the derivative of a zero is zero
                        results.append(self._zero_after(zero_from[pair], order))
                    if pair not in nxt:
                        continue
                    d = self._derivative(pair, order, nxt[pair], targets, errors)
                    results.append(d)
                    if d.status == STRUCTURAL:
                        zero_from[pair] = d
                    if order == 1:
                        gradients[pair] = nxt[pair]
                current = {p: v for p, v in nxt.items() if v is not None}
            if plan.hessian:
                results += self._hessians(targets, gradients)
        finally:
            self.close()
        if plan.jacobian:
            results += self._jacobians(targets)
        return results

    def _first_order(self, tape, targets, errors) -> dict:
        """One backward pass per target for all sources at once (a pass per pair would
        repeat the whole backward computation); per pair only when that pass fails."""
        names = list(self.sources)
        out = {}
        for target, value in targets.items():
            try:
                grads = tape.gradient(value, [self.sources[s] for s in names])
            except Exception:  # find which source's path holds the culprit
                for s in names:
                    out[(target, s)] = self._gradient(tape, value, (target, s), errors)
                continue
            out.update({(target, s): dense(g) for s, g in zip(names, grads, strict=True)})
        return out

    def _gradient(self, tape, value, pair, errors):
        try:
            return dense(tape.gradient(value, self.sources[pair[1]]))
        except Exception as exc:  # LookupError: no gradient registered, etc.
            errors[pair] = exc
            return None

    def _derivative(self, pair, order, value, targets, errors) -> Derivative:
        target, source = pair
        # A tape differentiates the sum of a non-scalar target: say so wherever shown.
        summed = size_of(targets[target]) > 1
        d = Derivative(target, source, order=order, value=value, summed=summed)
        if pair in errors:
            d.status, d.error = NONE, errors[pair]
        elif value is None:
            d.status = STRUCTURAL if order > 1 else NONE
            if order > 1:
                d.value = tf.zeros_like(self.sources[source])
                d.why = structural_why(source, order)
        else:
            d.status = classify(value)
        return d

    def _zero_after(self, first: Derivative, order: int) -> Derivative:
        return Derivative(
            first.target, first.source, order, value=first.value, status=STRUCTURAL,
            summed=first.summed, why=f"order {first.order} is already 0, so order {order} is 0",
        )  # fmt: skip

    def _hessians(self, targets, gradients) -> list[Derivative]:
        """Hessian of each scalar target w.r.t. each vector source, from the order-2 tape."""
        out = []
        tape = self.tapes[-2]
        if self.plan.order < 2:  # the order loop left it recording: stop it, as there
            tape.__exit__(None, None, None)
        for (target, source), grad in gradients.items():
            src = self.sources[source]
            if size_of(targets[target]) != 1:
                continue  # a note says --hessian is for scalar targets
            if grad is None:  # no gradient, so no Hessian: None, explained as the gradient is
                out.append(Derivative(target, source, 1, "hessian", None, NONE))
                continue
            try:
                value = tape.jacobian(grad, src, experimental_use_pfor=False)
            except Exception as exc:  # an empty source, an op without a second gradient...
                out.append(Derivative(target, source, 1, "hessian", None, NONE, error=exc))
                continue
            n = size_of(src)
            if value is None:  # as for order 2: no recorded dependence
                # the shape a computed Hessian has: () for a scalar source, (n, n) otherwise
                zeros = tf.zeros((n, n) if src.shape.rank else (), src.dtype)
                why = structural_why(source, 2)
                out.append(Derivative(target, source, 1, "hessian", zeros, STRUCTURAL, why=why))
                continue
            value = tf.reshape(value, (n, n)) if src.shape.rank and src.shape.rank > 1 else value
            out.append(Derivative(target, source, 1, "hessian", value, classify(value)))
        return out

    def _jacobians(self, targets) -> list[Derivative]:
        out = []
        tape = self.tapes[-1]
        for target, value in targets.items():
            if size_of(value) <= 1:
                continue
            for source, src in self.sources.items():
                try:
                    jac = tape.jacobian(value, src)
                except Exception as exc:
                    out.append(Derivative(target, source, 1, "jacobian", None, NONE, error=exc))
                    continue
                if jac is not None and (value.shape.rank or 0) + (src.shape.rank or 0) > 2:
                    jac = tf.reshape(jac, (size_of(value), size_of(src)))
                status = classify(jac) if jac is not None else NONE
                out.append(Derivative(target, source, 1, "jacobian", jac, status))
        return out


def structural_why(source: str, order: int) -> str:
    """TF gives None both for a derivative that is truly 0 and for a path through an op
    with no gradient of this order (it drops those silently): say which is likely."""
    return (
        f"TF returns None: the order-{order - 1} derivative has no recorded dependence on "
        f"{source}, so the order-{order} derivative is 0 (shown so), unless an op on the path "
        f"has no gradient of order {order} (e.g. tf.image.resize): then it is not known"
    )


def dense(value: Any) -> Any:
    """Gradients of gathers come back as IndexedSlices: show them as tensors."""
    return tf.convert_to_tensor(value) if isinstance(value, tf.IndexedSlices) else value


def classify(value: Any) -> str:
    """Which of the outcomes a computed (non-None) derivative is."""
    # One pass answers both questions: the sum of squares is 0 only for zeros, and is
    # finite unless some element is not (or it overflows: then look closer). On the CPU
    # .numpy() shares the tensor's memory, and np.vdot is the fastest pass there is.
    flat = to_numpy(value).ravel()
    total = abs(np.vdot(flat, flat)) if flat.dtype.kind in "fc" else np.count_nonzero(flat)
    if not np.isfinite(total) and not np.isfinite(flat).all():
        return NONFINITE
    if total == 0 and flat.any():  # squares of tiny values underflow: ask exactly
        return VALUE
    return VALUE if total != 0 else ZERO
