"""Why a gradient is None, NaN or Inf: one sentence naming the source, the cause and the line.

Inputs are what the recording knew (the source and target objects, which names the
cell bound and where) and the cell's dataflow from `analysis`. The causes are those of
docs/diagnosis.md, cited below by their stable names; each message ends with the fix.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from tapemagic.tape.analysis import CellInfo, Finding, findings_in
from tapemagic.tape.recording import to_numpy
from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, ZERO, Derivative
from tapemagic.variables import unwrap


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
        python = _python_function(ctx, d.source, d.target)
        if python:  # docs/diagnosis.md#python-function
            return python
        sign = _findings(ctx, d.source, d.target, {"sign"})
        if sign:
            f = sign[0]
            return f"line {f.lineno}: {f.text} has a zero gradient everywhere (TF returns zeros)"
    return None


def _why_none(target: str, source: str, ctx: Context, error: Exception | None) -> str:
    src = unwrap(ctx.sources.get(source))  # a Keras Variable: its tf.Variable
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
    python = _python_function(ctx, source, target)
    if python:  # docs/diagnosis.md#python-function
        return python
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
            what = (
                "a Keras non-trainable weight"
                if _is_keras(ctx.sources.get(source))
                else ("a Variable with trainable=False")
            )
            if source.isidentifier() and source in ctx.namespace:
                fix = f"watch it (-w {source}, or tape.watch({source}))"
            elif _reachable(source, ctx):  # an attribute or item path: -w takes names
                fix = f"watch it (tape.watch({source}) in the cell)"
            else:  # no name the user can pass: say where to watch it instead
                fix = "watch it with tape.watch(...) on the object the cell reaches it by"
            return (
                f"{source} is {what}: tapes do not watch it unless told to, so the "
                f"derivative is None, not 0; {fix} or make it trainable"
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


# Ops that run a Python function inside the graph (docs/diagnosis.md#python-function).
_PYTHON_OPS = ("py_function", "numpy_function", "py_func")


def _python_function(ctx: Context, source: str, target: str) -> str | None:
    """A tf.py_function / tf.numpy_function on the path: why it cuts the gradient."""
    info = ctx.info
    if info is None:
        return None
    lines = {st.lineno for st in info.path(source, target)}
    try:
        tree = ast.parse(info.source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _PYTHON_OPS
            and node.lineno in lines
        ):
            continue
        text = ast.get_source_segment(info.source, node) or node.func.attr
        if node.func.attr != "py_function":  # numpy_function, py_func: no gradient at all
            return (
                f"line {node.lineno}: {text} runs NumPy code, which has no gradient: TF "
                f"returns None through it; write the function with tf ops, or give it a "
                f"gradient with tf.custom_gradient"
            )
        inner = _leaves_inside(node, info.source, ctx)
        how = f"{inner} leaves TensorFlow inside it" if inner else "its Python code"
        return (
            f"line {node.lineno}: {text} runs Python, and TF differentiates it only through "
            f"the tf ops it runs: {how}, so the tape sees no dependence on {source} and gives "
            f"zeros or None; keep the function's body in tf ops, or give it a gradient with "
            f"tf.custom_gradient"
        )
    return None


def _leaves_inside(call: ast.Call, source: str, ctx: Context) -> str | None:
    """Text of the first construct that leaves TensorFlow in the function a call runs."""
    fn = call.args[0] if call.args else None
    code = None
    if isinstance(fn, ast.Lambda):
        code = ast.get_source_segment(source, fn.body)
    elif isinstance(fn, ast.Name) and inspect.isfunction(ctx.namespace.get(fn.id)):
        try:
            code = textwrap.dedent(inspect.getsource(ctx.namespace[fn.id]))
        except (OSError, TypeError):
            code = None
    if not code:
        return None
    try:
        found = findings_in(code)
    except SyntaxError:
        return None
    leave = [f for f in found if f.kind == "leave"]
    return leave[0].text if leave else None


def _is_keras(value: Any) -> bool:
    return type(value).__module__.startswith("keras")


def _reachable(name: str, ctx: Context) -> bool:
    """Whether `name` is a path from the namespace (`box.w`, `ws[0]`), not the Variable's
    own internal name."""
    head = re.match(r"[A-Za-z_]\w*", name)
    return bool(head) and head.group(0) in ctx.namespace


def arithmetic_names(code: str) -> set[str]:
    """Names whose values enter arithmetic (`n * x`, `tf.cast(n, tf.float32) * x`): an
    integer there is a value the user may have meant to differentiate; one used only as an
    index (`v[i]`, `tf.gather(v, idx)`) or a count is not (docs/diagnosis.md#integer-source)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    found: set[str] = set()

    def values_in(node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Subscript):
            values_in(node.value)  # the index is not a value: v[i]
        elif isinstance(node, ast.Call):
            index_fn = isinstance(node.func, ast.Attribute) and node.func.attr in _INDEX_FNS
            for arg in node.args[:1] if index_fn else node.args:
                values_in(arg)
        else:
            for child in ast.iter_child_nodes(node):
                values_in(child)

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and not isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            values_in(node.left)
            values_in(node.right)
    return found


# Calls whose arguments after the first are indices, shapes or counts, not values.
_INDEX_FNS = {
    "gather", "gather_nd", "one_hot", "range", "reshape", "tile", "slice", "fill", "repeat",
    "roll", "split", "unsorted_segment_sum", "segment_sum", "scatter_nd", "zeros", "ones",
}  # fmt: skip
