"""Why a gradient is None, NaN or Inf: one sentence naming the source, the cause and the line.

Inputs are what the recording knew (the source and target objects, which names the
cell bound and where) and the cell's dataflow from `cellcode`. The causes are those of
docs/diagnosis.md, cited below by their stable names; each message ends with the fix.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from tapemagic.tape.cellcode import CellInfo, Finding, findings_in
from tapemagic.tape.recording import to_numpy
from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, ZERO, Derivative


@dataclass
class Context:
    """What a diagnosis may look at."""

    info: CellInfo | None
    sources: Mapping[str, Any]  # name -> object derivatives were taken with respect to
    targets: Mapping[str, Any]  # name -> value
    namespace: Mapping[str, Any] = field(default_factory=dict)
    watched: set[int] = field(default_factory=set)  # ids of objects explicitly watched
    point: Mapping[str, Any] = field(default_factory=dict)


def explain(d: Derivative, ctx: Context) -> str | None:
    """The diagnosis of `d`, or None when it is a proper value."""
    if d.status == NONE:
        return _why_none(d.target, d.source, ctx, d.error)
    if d.status == NONFINITE:
        return _why_nonfinite(d, ctx)
    if d.status == STRUCTURAL:  # docs/diagnosis.md#structural-zero: recording.py wrote why
        return d.why
    if d.status == ZERO:  # docs/diagnosis.md#non-differentiable-op (tf.sign gives zeros)
        sign = _findings(ctx, d.source, d.target, {"sign"})
        if sign:
            f = sign[0]
            return f"line {f.lineno}: {f.text} has a zero gradient everywhere (TF returns zeros)"
    return None


def _why_none(target: str, source: str, ctx: Context, error: Exception | None) -> str:
    src = ctx.sources.get(source)
    tgt = ctx.targets.get(target)
    if isinstance(error, LookupError):  # docs/diagnosis.md#no-registered-gradient
        op = re.search(r"no entry for:?\s*(\w+)", str(error))
        op_name = op.group(1) if op else "an op"
        where = _path_line(ctx, source, target)
        return (
            f"no gradient is registered for the op {op_name}{where} on the path from {source} "
            f"to {target}, so TF cannot differentiate it: use a differentiable equivalent, "
            f"or give it one with tf.custom_gradient"
        )
    # docs/diagnosis.md#integer-source
    if isinstance(src, (tf.Tensor, tf.Variable)) and not (
        src.dtype.is_floating or src.dtype.is_complex
    ):
        kind = "Variable" if isinstance(src, tf.Variable) else "tensor"
        return (
            f"{source} is an integer {kind} ({src.dtype.name}): tapes differentiate only "
            f"floating-point values and return None without a warning; make it a float, "
            f"e.g. tf.{kind if kind == 'Variable' else 'constant'}(3.0), or "
            f"tf.cast({source}, tf.float32)"
        )
    # docs/diagnosis.md#left-tensorflow: the target itself is NumPy or Python
    if tgt is not None and not isinstance(tgt, (tf.Tensor, tf.Variable)):
        leave = _findings(ctx, None, target, {"leave"})
        where = f" (line {leave[0].lineno}: {leave[0].text})" if leave else ""
        return (
            f"{target} is a {type(tgt).__module__.split('.')[0]}.{type(tgt).__name__}, not a "
            f"tensor: it left TensorFlow{where}, and the tape cannot follow it back; keep the "
            f"computation in tf ops (tf.square, tf.reduce_sum...) instead of NumPy, float() "
            f"or .numpy()"
        )
    if error is not None:  # docs/diagnosis.md#when-no-cause-is-recognised
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"TF could not take this gradient: {type(error).__name__}: {first}"
    info = ctx.info
    # docs/diagnosis.md#target-after-tape: a value from a later cell
    if info is not None and target not in info.binds and target in ctx.namespace:
        return (
            f"{target} was not computed in the recorded cell: it was made after the tape "
            f"closed, so the tape never saw it; compute {target} inside the %%tape cell"
        )
    if isinstance(src, tf.Variable) and id(src) not in ctx.watched:
        if not src.trainable:  # docs/diagnosis.md#untrainable-variable
            return (
                f"{source} is a Variable with trainable=False: tapes do not watch it unless "
                f"told to; watch it (-w {source}, or tape.watch({source})) or make it trainable"
            )
    elif isinstance(src, tf.Tensor) and id(src) not in ctx.watched:
        # docs/diagnosis.md#unwatched-constant
        return (
            f"{source} is a constant tensor and no tape watched it: tapes watch only "
            f"trainable Variables by themselves; add it to the watch list (%%tape -w "
            f"{source}), call tape.watch({source}), or make it a tf.Variable"
        )
    if info is None:
        return f"no differentiable path from {source} to {target} was recorded"
    return _why_from_code(target, source, ctx)


def _why_from_code(target: str, source: str, ctx: Context) -> str:
    info = ctx.info
    assert info is not None
    path = info.path(source, target)
    # In this order: docs/diagnosis.md#left-tensorflow, docs/diagnosis.md#state-on-path,
    # docs/diagnosis.md#non-differentiable-op.
    for kinds, cause in (
        ({"leave"}, "leaves TensorFlow"),
        ({"state"}, "writes state"),
        ({"nondiff", "cast_int"}, "is not differentiable"),
    ):
        hits = [f for st in path for f in st.findings if f.kind in kinds]
        if hits:
            return _finding_message(hits[0], cause, source, target)
    inner = _inside_functions(path, ctx)  # the same three, one level into called functions
    if inner:
        fname, f, kind = inner
        cause = {"leave": "leaves TensorFlow", "state": "writes state"}.get(
            kind, "is not differentiable"
        )
        return _finding_message(f, cause, source, target, f" in {fname}()")
    if not path:
        # docs/diagnosis.md#control-flow-only, else docs/diagnosis.md#structural-zero (no path)
        line = info.conditions.get(source)
        upstream = info.depends_on(target) | {target}
        if line is not None and any(
            source in st.conditions and set(st.binds) & upstream for st in info.statements
        ):
            return (
                f"{source} is used only in control flow (line {line}: {info.line(line)}): "
                f"a condition picks which code runs but carries no gradient, so {target} does "
                f"not depend on {source} differentiably; use the value itself in the math "
                f"(e.g. tf.where or a smooth function) if it should"
            )
        return (
            f"{target} does not depend on {source}: nothing in the cell computes it from "
            f"{source}, so the derivative is 0 (TF returns None for no path)"
        )
    lines = ", ".join(f"line {st.lineno}" for st in path)
    return (  # docs/diagnosis.md#when-no-cause-is-recognised
        f"the tape recorded no differentiable operation from {source} to {target} "
        f"(path: {lines}); look there for NumPy, .numpy(), float(), integer casts or "
        f"non-differentiable ops inside called functions"
    )


def _finding_message(f: Finding, cause: str, source: str, target: str, where: str = "") -> str:
    fixes = {
        "leaves TensorFlow": "keep it in tf ops (tf.square, tf.reduce_sum...) so the tape can "
        "follow it",
        "writes state": "the assignment has no gradient: use the expression itself, not a "
        "Variable it was assigned to",
        "is not differentiable": "its gradient is None (or zero) everywhere: use a smooth "
        "substitute (e.g. softmax for argmax, x - tf.stop_gradient(x - round(x)) for round)",
    }
    return (
        f"line {f.lineno}{where}: {f.text} {cause}, which cuts the path from {source} "
        f"to {target}; {fixes[cause]}"
    )


def _why_nonfinite(d: Derivative, ctx: Context) -> str:
    tgt = ctx.targets.get(d.target)
    if _not_finite(tgt):  # docs/diagnosis.md#infinite-derivative: the target itself
        line = ""
        if ctx.info and ctx.info.bind_lines.get(d.target):
            line = f" (line {ctx.info.bind_lines[d.target][-1]})"
        return f"{d.target} itself is NaN or Inf at this point{line}, so its derivatives are too"
    at = _point_text(ctx, d.source)
    where = _findings(ctx, d.source, d.target, {"where"})
    singular = _findings(ctx, d.source, d.target, {"singular"})
    if where:  # docs/diagnosis.md#nan-from-where
        f = where[0]
        op = f" ({singular[0].text})" if singular else ""
        return (
            f"line {f.lineno}: {f.text} computes both branches and the gradient flows through "
            f"both: the unselected branch{op} has an infinite derivative{at}, and 0 x inf = NaN. "
            f"Fix with the double where: x_safe = tf.where(cond, x, 1.0), then apply the op "
            f"to x_safe inside the outer tf.where"
        )
    if singular:  # docs/diagnosis.md#infinite-derivative
        f = singular[0]
        return (
            f"line {f.lineno}: {f.text} has an infinite or undefined derivative{at}; move "
            f"the point, or guard it (e.g. tf.sqrt(x + eps), tf.math.divide_no_nan)"
        )
    return (
        "an op on the path has an infinite or undefined derivative here; "
        "tf.debugging.enable_check_numerics() names the first op that makes NaN or Inf"
    )


def _not_finite(value: Any) -> bool:
    return (
        isinstance(value, (tf.Tensor, tf.Variable))
        and value.dtype.is_floating
        and not bool(tf.reduce_all(tf.math.is_finite(value)))
    )


def _findings(ctx: Context, source: str | None, target: str, kinds: set[str]) -> list[Finding]:
    info = ctx.info
    if info is None:
        return []
    if source is None:
        statements = [st for st in info.statements if target in st.binds]
        deps = info.depends_on(target)
        statements += [st for st in info.statements if set(st.binds) & deps]
    else:
        statements = info.path(source, target)
    return [f for st in statements for f in st.findings if f.kind in kinds]


def _path_line(ctx: Context, source: str, target: str) -> str:
    if ctx.info is None:
        return ""
    path = ctx.info.path(source, target)
    return f" (line {path[-1].lineno}: {path[-1].text})" if path else ""


def _point_text(ctx: Context, source: str) -> str:
    value = ctx.point.get(source)
    if value is None:
        return ""
    arr = to_numpy(value)
    return f" at {source} = {arr.item():g}" if arr.size == 1 else ""


def _inside_functions(path, ctx: Context):
    """Look one level into Python functions the path calls, for the same culprits."""
    for st in path:
        for name in sorted(st.reads):
            fn = ctx.namespace.get(name)
            if not inspect.isfunction(fn):
                continue
            try:
                found = findings_in(textwrap.dedent(inspect.getsource(fn)))
            except (OSError, TypeError, SyntaxError):
                continue
            for kind in ("leave", "state", "nondiff", "cast_int"):
                hits = [f for f in found if f.kind == kind]
                if hits:
                    return name, hits[0], kind
    return None
