"""`--check`: compare each first derivative with finite differences, and say how sure that is.

The numeric derivative comes from Ridders' method: central differences at steps shrinking
by 2, extrapolated (Richardson) in a Neville table, which also gives an error estimate; the
table stops when that estimate stops improving (rounding has taken over). Differences are
taken in float64 where the cell allows it (tensor sources are cast, Variables reached by
name are replaced by float64 copies for the re-run), else in the source's own dtype.

When the float64 re-run works, the tape's derivative is taken in it too: the differences
check TF's derivative code against that float64 derivative, and the shown derivative (in
float32, float16, bfloat16) is compared with it at its own dtype's precision, so a loss to
rounding (1 - tanh² in bfloat16) is told apart from a wrong derivative.

The verdict compares |derivative - numeric| with what rounding explains: the derivative's
own (its dtype's unit roundoff, times its size and times the curvature the rounding of the
point itself meets, and the digits lost below the smallest normal number) plus the
differences' error estimate. A gap beyond that is a MISMATCH only when the differences are
sure of themselves: at a kink, when their error estimate is of the size of the gap, or when
the band is wider than a quarter of the derivative, the verdict is "inconclusive", with the
reason. Sources finite differences cannot perturb get "not checked", with the reason.

Large sources are checked along a few random directions (a directional derivative costs the
same whatever the size), small ones along every coordinate.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.tape.recording import to_numpy
from tapemagic.tape.rerun import Rerunner, written_before_read
from tapemagic.tape.result import (
    CHECK_OK,
    INCONCLUSIVE,
    MISMATCH,
    NONE,
    NONFINITE,
    NOT_CHECKED,
    STRUCTURAL,
    Check,
    Derivative,
    TapeResult,
)
from tapemagic.tape.syntax import dotted_name

# Machine epsilon by dtype (bfloat16 keeps 8 significant bits, float16 11).
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
MAX_COORDINATES = 8
RANDOM_DIRECTIONS = 3
SHRINK = 2.0  # step ratio between levels of the Ridders table
LEVELS = 14  # at most this many steps (2 runs each) per direction
SAFE = 2.0  # stop when the extrapolation's error grows by this factor (rounding took over)
# The smallest normal number by dtype: below it, values carry fewer digits.
TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}
COARSE = 0.25  # a tolerance above this fraction of the derivative decides nothing
CONVINCED = 20.0  # a gap this many times the differences' error estimate is a mismatch


@dataclass
class _Point:
    """The recorded point and how to evaluate the target around it."""

    start: dict[str, Any]  # source name -> value at the point
    dtype: tf.DType  # the dtype the perturbed source is given in
    precision: str  # the dtype the target is computed in (the lower of the two)


def check_result(result: TapeResult, code: str, namespace: dict, recorder, opts, before) -> None:
    """Attach a `Check` to every first derivative and Jacobian of `result`."""
    set_after, ambiguous = {}, set()
    for name, source in recorder.sources.items():
        if isinstance(source, tf.Variable) and name.isidentifier():
            index = written_before_read(code, name)
            if index is not None and index >= 0:
                set_after[name] = index
            elif index == -1:
                ambiguous.add(name)
    rerun = Rerunner(
        code, namespace, recorder.sources, result.targets, before, opts.silence_reruns, set_after
    )
    draws = random_draws(code, namespace)
    rng = np.random.default_rng(0)
    for d in result.derivatives:
        if d.order != 1 or d.kind == "hessian" or d.status in (NONFINITE, STRUCTURAL):
            continue
        reason = _unchecked_reason(d, recorder.sources.get(d.source), ambiguous)
        if reason:
            d.check = _not_checked(reason)
            continue
        try:
            d.check = _check_one(d, result, recorder.sources, rerun, rng, namespace, draws)
        except Exception as exc:  # the cell cannot run at other points: say so
            first = (str(exc).strip().splitlines() or [""])[0]
            d.check = _not_checked(
                f"the cell fails when {d.source} moves ({type(exc).__name__}: {first})"
            )
            continue
        if draws and not d.check.note:
            lineno, text = draws[0]
            d.check.note = (
                f"line {lineno}: {text} draws random numbers; the re-runs draw the recorded "
                f"run's again (a seed in the cell, or a generator's state put back), so the "
                f"differences still hold"
            )


# Calls on tf.random that make a generator or set a seed rather than draw numbers.
_NOT_DRAWS = {"Generator", "from_seed", "from_non_deterministic_state", "from_state", "set_seed"}
_NOT_DRAWS |= {"get_global_generator", "set_global_generator", "split", "reset_from_seed"}


def random_draws(code: str, namespace: dict) -> list[tuple[int, str]]:
    """(line, text) of every random draw in the cell: `tf.random.*`, `np.random.*`,
    `keras.random.*` and calls on a `tf.random.Generator` (seeded or not: each draw advances
    its state), whether the generator comes from the namespace or the cell makes it."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    made_here = {  # names the cell binds to a new generator
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and "random" in dotted_name(_callee(node.value)).split(".")
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in _NOT_DRAWS:
            continue
        root = node.func.value
        while isinstance(root, ast.Attribute):
            root = root.value
        generator = isinstance(root, ast.Name) and (
            isinstance(namespace.get(root.id), tf.random.Generator) or root.id in made_here
        )
        if generator or "random" in dotted_name(node.func).split(".")[:-1]:
            text = ast.get_source_segment(code, node) or node.func.attr
            found.append((node.lineno, text))
    return sorted(set(found))


def _callee(node: ast.AST) -> ast.AST:
    return node.func if isinstance(node, ast.Call) else node


def _not_checked(reason: str) -> Check:
    return Check(False, math.nan, math.nan, "-", note=reason, verdict=NOT_CHECKED)


def _unchecked_reason(d: Derivative, source: Any, ambiguous: set[str]) -> str | None:
    if source is None:
        return f"{d.source} is not a source of the recorded run"
    if not isinstance(source, (tf.Tensor, tf.Variable)):
        return f"{d.source} is not a tensor"
    if source.dtype.is_complex:
        return f"{d.source} is complex ({source.dtype.name}); finite differences here are real"
    if not source.dtype.is_floating:
        return f"{d.source} is an integer ({source.dtype.name}): there is no step to take"
    if not isinstance(source, tf.Variable) and not d.source.isidentifier():
        return f"{d.source} is a tensor reached through an object; it cannot be set by name"
    if d.source in ambiguous:
        return (
            f"the cell writes {d.source} both before and after reading it, so the point the "
            f"derivative is taken at cannot be set from outside"
        )
    return None


def _check_one(d, result: TapeResult, sources, rerun: Rerunner, rng, namespace, draws) -> Check:
    start = {n: result.point.get(n, v) for n, v in sources.items()}
    x0 = to_numpy(start[d.source]).astype(np.float64)
    analytic_dtype = getattr(d.value, "dtype", sources[d.source].dtype).name
    exact = np.zeros_like(x0) if d.value is None else to_numpy(d.value).astype(np.float64)
    evaluate, point = _evaluator(d, start, sources, rerun, namespace)
    f0 = evaluate(x0)
    again = evaluate(x0)
    if not np.array_equal(f0, again, equal_nan=True):  # the cell draws new numbers each run
        where = f"line {draws[0][0]}: {draws[0][1]}" if draws else "something in the cell"
        return Check(
            False, math.nan, math.nan, point.precision,
            note=f"{where} draws new numbers at every run, so finite differences cannot "
            f"decide; fix the draws (a seed set in the cell, or a tensor made before)",
            verdict=INCONCLUSIVE,
        )  # fmt: skip
    eps_p = EPS.get(point.precision, EPS["float32"])
    u_a = EPS.get(analytic_dtype, EPS["float32"]) / 2
    # The tape's derivative of the float64 re-run: the differences check TF's derivative
    # code against it at float64's precision, and the shown derivative is compared with it
    # at its own dtype's (a bfloat16 gradient may be off by its rounding alone).
    reference, u_ref, ref_dtype = exact, u_a, analytic_dtype
    if point.precision == "float64" and analytic_dtype != "float64":
        evaluate(x0, grad=True)
        if rerun.gradient_taken:
            g = rerun.gradient
            reference = np.zeros_like(exact) if g is None else to_numpy(g).astype(np.float64)
            reference = reference.reshape(exact.shape)
            u_ref, ref_dtype = EPS["float64"] / 2, "float64"
    scale_x = max(1.0, float(np.max(np.abs(x0)))) if x0.size else 1.0
    directions = _directions(x0.size, rng)
    worst_ratio, worst = -1.0, (0.0, 0.0)
    verdicts, kinks, noisy, own, lossy = [], [], [], [], []
    for v in directions:
        v = v.reshape(x0.shape)
        want = _apply(reference, v, d, f0)
        shown = _apply(exact, v, d, f0)
        est = _ridders(
            lambda t, v=v: evaluate(x0 + t * v), f0, 0.1 * scale_x, eps_p, point, x0, v,
            enough=max(0.01 * math.sqrt(u_a), 10 * eps_p ** (2 / 3)),  # or what eps_p allows
        )  # fmt: skip
        diff = float(np.max(np.abs(want - est.value)))
        size = max(float(np.max(np.abs(want))), float(np.max(np.abs(est.value))))
        rounding = _rounding(u_ref, ref_dtype, size, x0, est)
        tol = rounding + 2 * est.error
        denom = size if size > 0 else 1.0
        # The shown derivative's own rounding (none more when it is the reference itself).
        own_rounding = _rounding(u_a, analytic_dtype, size, x0, est) if u_ref != u_a else 0.0
        off = float(np.max(np.abs(shown - want)))  # shown vs float64 reference
        shown_diff, shown_tol = float(np.max(np.abs(shown - est.value))), tol + own_rounding
        ratio = shown_diff / shown_tol if shown_tol > 0 else (math.inf if shown_diff else 0.0)
        if ratio > worst_ratio:
            worst_ratio, worst = ratio, (shown_diff / denom, shown_tol / denom)
        if diff <= tol and tol > COARSE * size:  # agreement within a band too wide to mean it
            verdicts.append(INCONCLUSIVE)
            if rounding >= 2 * est.error:
                own.append(tol / denom)
            else:
                noisy.append(est.error / denom)
        elif diff <= tol and off > own_rounding > 0:  # right in float64, off in its dtype
            verdicts.append(INCONCLUSIVE)
            lossy.append((off / denom, float(np.max(np.abs(want)))))
        elif diff <= tol and own_rounding > COARSE * size:  # its dtype cannot show it
            verdicts.append(INCONCLUSIVE)
            own.append(own_rounding / denom)
        elif diff <= tol:
            verdicts.append(CHECK_OK)
        elif est.kink:
            verdicts.append(INCONCLUSIVE)
            kinks.append(est)
        elif not math.isfinite(est.error) or CONVINCED * est.error >= diff:
            verdicts.append(INCONCLUSIVE)
            noisy.append(est.error / denom)
        else:
            verdicts.append(MISMATCH)
        if est.kink and est not in kinks:
            kinks.append(est)
    verdict = (
        MISMATCH
        if MISMATCH in verdicts
        else INCONCLUSIVE
        if INCONCLUSIVE in verdicts or kinks
        else CHECK_OK
    )
    note = ""
    if verdict == MISMATCH and d.status == NONE:
        note = (
            f"finite differences say {d.target} does depend on {d.source}: the tape lost the path"
        )
    elif kinks:
        k = kinks[0]
        note = (
            f"kink: one-sided slopes differ ({k.left:.3g} and {k.right:.3g}), so the "
            f"derivative is not defined here; TF gives one convention for it"
        )
    elif verdict == INCONCLUSIVE and lossy:
        rel, value = max(lossy)
        note = (
            f"{analytic_dtype} rounding: the same cell in float64 gives {value:.6g} "
            f"({_share(rel)} away), and the finite differences agree with that"
        )
    elif verdict == INCONCLUSIVE and own and not noisy:
        note = (
            f"{analytic_dtype} rounding in the derivative itself allows {_share(max(own))} here "
            f"(cancellation, or values near the smallest {analytic_dtype}), too wide to decide"
        )
    elif verdict == INCONCLUSIVE:
        note = (
            f"finite differences in {point.precision} are too coarse to decide here (their "
            f"relative error estimate is {max(noisy):.1e})"
        )
    if x0.size > MAX_COORDINATES and not note:
        note = f"{len(directions)} random directions"
    return Check(
        verdict == CHECK_OK, worst[0], worst[1], point.precision, kink=bool(kinks), note=note,
        verdict=verdict,
    )  # fmt: skip


def _share(r: float) -> str:
    """A relative size for a message: ±12%, or a multiple when beyond the value itself."""
    return f"±{r:.0%}" if r < 10 else "many times the value"


def _rounding(u: float, dtype: str, size: float, x0: np.ndarray, est) -> float:
    """What rounding in a derivative of this dtype explains: its own (sqrt(u) of its size
    covers the growth of rounding through reductions), the rounding of the point itself
    times the curvature (d f' = f'' dx, with |dx| = u |x|), and the digits lost below the
    smallest normal number."""
    at = float(np.max(np.abs(x0))) if x0.size else 0.0
    return math.sqrt(u) * size + u * at * est.curvature + TINY.get(dtype, 0.0)


def _evaluator(d, start, sources, rerun: Rerunner, namespace):
    """x -> the target (summed unless a Jacobian) with the source at x, and the precision
    that runs in: float64 when the cell accepts float64 sources and computes the target in
    float64 from them, else the source's own dtype."""
    own = sources[d.source].dtype.base_dtype
    x0 = to_numpy(start[d.source]).astype(np.float64)
    if own != tf.float64:
        made = _values(start, sources, d.source, tf.float64, namespace)
        if made is not None:
            # Float tensors the cell reads that are not sources (data) are cast too: the
            # cast is exact, so the function is the same, evaluated in float64.
            for name in rerun.info.reads:
                value = namespace.get(name)
                if (
                    name not in sources
                    and isinstance(value, tf.Tensor)
                    and value.dtype in (tf.float16, tf.bfloat16, tf.float32)
                ):
                    made[0][name] = tf.cast(value, tf.float64)
            evaluate = _make_evaluate(d, rerun, tf.float64, *made)
            originals = {id(v) for v in sources.values() if isinstance(v, tf.Variable)}
            try:
                evaluate(x0)
                took = rerun.dtypes.get(d.target) == tf.float64 and not (
                    rerun.accessed & originals  # a Variable reached otherwise than by name
                )
            except Exception:
                took = False
            if took:
                return evaluate, _Point(start, tf.float64, "float64")
    made = _values(start, sources, d.source, own, namespace)
    evaluate = _make_evaluate(d, rerun, own, *made)
    evaluate(x0)  # raises if the cell cannot run at all
    target = getattr(rerun.dtypes.get(d.target), "name", own.name)
    precision = max(own.name, target, key=lambda n: EPS.get(n, 0.0))
    return evaluate, _Point(start, own, precision)


def _make_evaluate(d, rerun: Rerunner, dtype: tf.DType, values: dict, as_variables: set[str]):
    def evaluate(x: np.ndarray, grad: bool = False) -> np.ndarray:
        # Fresh copies at every run: the cell may change them (an SGD step inside it).
        run_values = {**values, d.source: tf.constant(x, dtype=dtype)}
        run_values = {n: tf.Variable(v) if n in as_variables else v for n, v in run_values.items()}
        out = rerun(run_values, (d.target, d.source, d.kind == "jacobian") if grad else None)
        out = out[d.target]
        return out.reshape(-1) if d.kind == "jacobian" else np.asarray(np.sum(out))

    return evaluate


def _values(start, sources, checked: str, dtype: tf.DType, namespace):
    """The other sources at the point, in `dtype` where they are float tensors, and whether
    the checked source is given as a Variable of that dtype (a Variable of another dtype,
    replaced by name for the run); None when a Variable cannot be replaced so."""

    def replaceable(name: str, var: tf.Variable) -> bool:
        # trainable: the re-run's probe tape sees it if the cell reaches it some other way
        return name.isidentifier() and namespace.get(name) is var and var.trainable

    values, as_variables = {}, set()
    for name, value in start.items():
        src = sources[name]
        if name == checked or not (
            isinstance(src, (tf.Tensor, tf.Variable)) and src.dtype.is_floating
        ):
            if name != checked:
                values[name] = value
            continue
        if isinstance(src, tf.Variable) and src.dtype.base_dtype != dtype:
            if not replaceable(name, src):
                return None
            values[name] = tf.cast(value, dtype)
            as_variables.add(name)
        elif isinstance(src, tf.Variable):
            values[name] = value
        else:
            values[name] = tf.cast(value, dtype)
    source = sources[checked]
    as_variable = isinstance(source, tf.Variable) and source.dtype.base_dtype != dtype
    if as_variable and not replaceable(checked, source):
        return None
    return values, as_variables | ({checked} if as_variable else set())


@dataclass
class _Estimate:
    value: np.ndarray  # the extrapolated derivative
    error: float  # its error estimate (absolute, max over elements)
    curvature: float  # |second derivative| along the direction, at the best step
    kink: bool = False
    left: float = 0.0
    right: float = 0.0


def _ridders(g, f0, h0: float, eps_p: float, point: _Point, x0, v, enough: float) -> _Estimate:
    """Ridders' extrapolated central difference of t -> g(t) at 0, with its error; it stops
    once the error is below `enough` times the derivative's size, or when it grows again
    (rounding took over) after the steps reached the range where the table converges."""
    low = point.precision != "float64"
    table: list[list[np.ndarray]] = []
    best, error, best_h = None, math.inf, h0
    levels = []  # (h_plus, h_minus, f(+), f(-)) at each step
    h = h0
    for _ in range(LEVELS):
        fp, fm = g(h), g(-h)
        hp, hm = h, h
        if low:  # the steps the perturbed source really takes, rounded to its dtype
            hp, hm = _realised(x0, v, h, point.dtype), _realised(x0, v, -h, point.dtype)
        levels.append((hp, hm, fp, fm))
        if hp <= 0 or hm <= 0:
            h /= SHRINK
            continue
        central = (fp - fm) / (hp + hm)
        if not np.all(np.isfinite(central)):
            table = []  # a singularity within reach: start again from smaller steps
            h /= SHRINK
            continue
        row = [central]
        stop = False
        if table:
            prev = table[-1]
            fac = SHRINK**2
            for j in range(1, len(prev) + 1):
                row.append((row[j - 1] * fac - prev[j - 1]) / (fac - 1))
                fac *= SHRINK**2
                err = max(
                    float(np.max(np.abs(row[j] - row[j - 1]))),
                    float(np.max(np.abs(row[j] - prev[j - 1]))),
                )
                if err <= error:
                    best, error, best_h = row[j], err, h
            size = float(np.max(np.abs(best))) if best is not None else 0.0
            converging = error <= 0.1 * size  # steps large for the function do not count
            stop = converging and float(np.max(np.abs(row[-1] - prev[-1]))) >= SAFE * error
        elif best is None:
            best, best_h = central, h
        table.append(row)
        size = float(np.max(np.abs(best))) if best is not None else 0.0
        if stop or (len(table) >= 3 and error <= enough * max(size, 1e-300)):
            break
        h /= SHRINK
    if best is None:
        raise ValueError("the target is not finite at any step around the point")
    # Rounding in the function values sets a floor on what the differences can resolve.
    fscale = max(float(np.max(np.abs(f0))), 1e-300)
    # Two values each rounded within eps/2 of fscale, their difference over 2h: a floor.
    error = max(error, eps_p * fscale / best_h)
    est = _Estimate(np.asarray(best), error, 0.0)
    finite = [lv for lv in levels if lv[0] > 0 and lv[1] > 0 and np.all(np.isfinite(lv[2]))]
    finite = [lv for lv in finite if np.all(np.isfinite(lv[3]))]
    at_best = [lv for lv in finite if lv[0] <= best_h * 1.5] or finite
    if at_best:
        hp, hm, fp, fm = at_best[0]
        est.curvature = float(np.max(np.abs((fp - f0) / hp - (f0 - fm) / hm))) / ((hp + hm) / 2)
    _kink(est, finite, f0, eps_p, fscale)
    return est


def _realised(x0: np.ndarray, v: np.ndarray, t: float, dtype: tf.DType) -> float:
    """The step along v the point really moves by when x0 + t v is rounded to `dtype`."""
    moved = to_numpy(tf.cast(tf.constant(x0 + t * v, tf.float64), dtype)).astype(np.float64)
    return abs(float(np.vdot(moved - x0, v)))


def _kink(est: _Estimate, levels, f0, eps_p: float, fscale: float) -> None:
    """One-sided slopes whose gap does not shrink with the step: a kink. For a smooth
    function the gap is h |f''| and halves with h; at a kink it stays the jump in slope."""
    if len(levels) < 2:
        return
    gaps = []
    for hp, hm, fp, fm in levels[-2:]:
        right, left = (fp - f0) / hp, (f0 - fm) / hm
        noise = 8 * eps_p * fscale / min(hp, hm)
        gaps.append((float(np.max(np.abs(right - left))), noise, left, right))
    (g1, n1, _, _), (g2, n2, left, right) = gaps
    slope = max(float(np.max(np.abs(left))), float(np.max(np.abs(right))))
    # A jump in slope of at least 1% that stays as the step halves (a smooth function's gap
    # halves; near an inflection point it is tiny and erratic, hence the 1%).
    if g2 > 10 * n2 and g1 > 10 * n1 and 0.7 * g1 < g2 < 1.5 * g1 and g2 > 0.01 * slope:
        est.kink = True
        est.left = float(np.max(left)) if np.size(left) else 0.0
        est.right = float(np.max(right)) if np.size(right) else 0.0


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
