"""`--check`: compare each first derivative with central finite differences.

Differences are taken in float64 where the cell allows it (tensor sources are cast,
the cell re-run); where it does not (a float32 Variable, a float32 constant inside
the cell) they are taken in the source's own dtype, with a looser tolerance. Large
sources are checked along a few random directions (a directional derivative costs
two runs whatever the size), small ones along every coordinate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.tape.rerun import Rerunner
from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, Check, TapeResult

# Tolerance on |analytic - numeric| / max(|analytic|, |numeric|, 1), by the precision of
# the differences and of the analytic derivative (float32 gradients carry ~1e-7 rounding
# per op; float32 differences with h ~ eps^(1/3) carry ~1e-5 of truncation and noise).
TOLERANCE = {("float64", "float64"): 1e-6, ("float64", "float32"): 1e-3}
LOOSE = {"float32": 1e-2, "float16": 1e-1, "bfloat16": 1e-1}
MAX_COORDINATES = 8
RANDOM_DIRECTIONS = 3


def check_result(result: TapeResult, code: str, namespace: dict, recorder, opts, before) -> None:
    """Attach a `Check` to every first derivative and Jacobian of `result`."""
    rerun = Rerunner(code, namespace, recorder.sources, result.targets, before, opts.silence_reruns)
    random = [f for st in rerun.info.statements for f in st.findings if f.kind == "random"]
    rng = np.random.default_rng(0)
    for d in result.derivatives:
        if d.order != 1 or d.kind == "hessian" or d.status in (NONFINITE, STRUCTURAL):
            continue
        if d.source not in recorder.sources or d.source.count("/"):
            continue  # weights reached through a model: not re-bindable by name
        source = recorder.sources[d.source]
        if source.dtype.is_complex:
            d.check = Check(False, float("nan"), float("nan"), "-", note="complex: not checked")
            continue
        try:
            d.check = _check_one(d, recorder, rerun, rng)
        except Exception as exc:  # the cell cannot run at other points: say so
            d.check = Check(False, float("nan"), float("nan"), "-", note=f"could not re-run: {exc}")
            continue
        if random:
            d.check.note = (
                f"line {random[0].lineno}: {random[0].text} draws new numbers at every run, so "
                f"the differences mean little; fix the draws (a seed, or a tensor made before)"
            )


def _check_one(d, recorder, rerun: Rerunner, rng) -> Check:
    sources = recorder.sources
    # The point is where the tape recorded, before the cell changed anything.
    start = {n: recorder.initial.get(n, v) for n, v in sources.items()}
    x0 = np.asarray(start[d.source], dtype=np.float64)
    analytic = np.zeros_like(x0) if d.value is None else np.asarray(d.value, dtype=np.float64)
    analytic_dtype = "float64" if getattr(d.value, "dtype", None) == tf.float64 else "float32"
    own = sources[d.source].dtype
    # A Variable is perturbed in place, so in its own dtype; a tensor is tried in float64,
    # which counts only if the target then comes out in float64 too (no cast on the way).
    candidates = [own] if isinstance(sources[d.source], tf.Variable) else [tf.float64, own]
    for i, dtype in enumerate(candidates):
        try:
            evaluate = _evaluator(rerun, d, start, dtype)
            f0 = evaluate(x0)
            out_dtype = rerun.dtypes.get(d.target)
            precision = dtype.name
            if out_dtype is not None and getattr(out_dtype, "name", "") in LOOSE:
                precision = out_dtype.name  # the cell computes the target in lower precision
            break
        except Exception:
            if i == len(candidates) - 1:
                raise
    eps = np.finfo(np.float64 if precision == "float64" else np.float32).eps
    h = eps ** (1 / 3) * max(1.0, float(np.max(np.abs(x0))) if x0.size else 1.0)
    directions = _directions(x0.size, rng)
    worst, kink = 0.0, False
    for v in directions:
        v = v.reshape(x0.shape)
        fp, fm = evaluate(x0 + h * v), evaluate(x0 - h * v)
        numeric = (fp - fm) / (2 * h)
        exact = _apply(analytic, v, d, f0)
        err = np.abs(exact - numeric) / np.maximum(np.maximum(np.abs(exact), np.abs(numeric)), 1)
        worst = max(worst, float(np.max(err)) if err.size else 0.0)
        forward, backward = (fp - f0) / h, (f0 - fm) / h
        gap = np.abs(forward - backward)
        scale = np.maximum(np.maximum(np.abs(forward), np.abs(backward)), 1)
        kink = kink or bool(np.any(gap > 0.05 * scale))
    tol = TOLERANCE.get((precision, analytic_dtype), LOOSE.get(precision, 1e-2))
    note = ""
    if d.status == NONE and worst > tol:
        note = (
            f"finite differences say {d.target} does depend on {d.source}: the tape lost the path"
        )
    if x0.size > MAX_COORDINATES:
        note = note or f"{len(directions)} random directions"
    return Check(worst <= tol, worst, tol, precision, kink=kink, note=note)


def _evaluator(rerun: Rerunner, d, base: dict[str, Any], dtype: tf.DType):
    """x -> the target's value (summed unless this is a Jacobian) with source = x."""

    def evaluate(x: np.ndarray) -> np.ndarray:
        values = {
            n: tf.cast(v, dtype) if v.dtype.is_floating and not isinstance(v, tf.Variable) else v
            for n, v in base.items()
            if n != d.source
        }
        values[d.source] = tf.constant(x, dtype=dtype)
        out = rerun(values)[d.target]
        return out.reshape(-1) if d.kind == "jacobian" else np.asarray(np.sum(out))

    return evaluate


def _directions(n: int, rng) -> list[np.ndarray]:
    if n <= MAX_COORDINATES:
        return list(np.eye(max(n, 1)))
    out = []
    for _ in range(RANDOM_DIRECTIONS):
        v = rng.standard_normal(n)
        out.append(v / np.linalg.norm(v))
    return out


def _apply(analytic: np.ndarray, v: np.ndarray, d, f0) -> np.ndarray:
    """The analytic directional derivative along v."""
    if d.kind == "jacobian":
        jac = analytic.reshape(np.size(f0), -1)
        return jac @ v.reshape(-1)
    return np.asarray(np.sum(analytic * v))
