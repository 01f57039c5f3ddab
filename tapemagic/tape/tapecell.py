"""Run a cell's code under watched tapes and collect its derivatives into a `TapeResult`.

This is the core of `%%tape` and `%grad`, with no IPython in it: the caller passes the
cell's Python source, the namespace it runs in, and optionally an `execute` function
(the magic's runs the code through IPython so that prints, display and tracebacks
behave as in a plain cell).
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic import devices
from tapemagic.tape import analysis, rewrite
from tapemagic.tape.analysis import CellInfo
from tapemagic.tape.diagnosis import Context, arithmetic_names, explain
from tapemagic.tape.recording import (
    Plan,
    Recorder,
    classify,
    dense,
    is_float_tensor,
    is_tensor_like,
    size_of,
    to_numpy,
    unwrap,
)
from tapemagic.tape.rerun import snapshot, variables_in, written_before_read
from tapemagic.tape.result import NONE, Derivative, TapeResult
from tapemagic.tape.rewrite import BIND_HOOK, LAST_HOOK

MAX_ORDER = 4


class TapeError(ValueError):
    """A mistake in what the user asked for; the message is one line with the fix."""


@dataclass
class TapeOptions:
    watch: list[str] | None = None
    targets: list[str] | None = None
    order: int = 1
    jacobian: bool = False
    hessian: bool = False
    check: bool = False
    plot: bool = False
    device: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # %grad --at: values for this run
    # Every (target, source) pair instead of the defaults that answer the usual question
    # (the Variables, when the cell reads any; the scalar targets, when it binds any).
    all_pairs: bool = False
    # Makes the context manager that silences the re-runs of --check and --plot (the magic
    # passes IPython's capture_output, which also swallows display() calls; by default
    # stdout and stderr are silenced).
    silence_reruns: Callable[[], AbstractContextManager] | None = None


# execute(rewriter, tree) runs the cell with the rewriter applied; False when the cell
# failed (the executor has shown the error), an exception propagates otherwise. `tree` is
# the cell's parse when the analysis made one (the executor may rewrite and run it rather
# than parse the cell again), else None.
Executor = Callable[[ast.NodeTransformer, "ast.Module | None"], bool]


def plain_executor(code: str, namespace: dict) -> Executor:
    """Run with `exec`, as a script would; the cell's exception propagates."""

    def execute(rewriter: ast.NodeTransformer, parsed: ast.Module | None = None) -> bool:
        tree = rewriter.visit(parsed if parsed is not None else ast.parse(code, "<tape cell>"))
        body, last = tree.body, None
        if body and isinstance(body[-1], ast.Expr):
            body, last = body[:-1], body[-1]
        exec(compile(ast.Module(body, []), "<tape cell>", "exec"), namespace)
        if last is not None:
            eval(compile(ast.Expression(last.value), "<tape cell>", "eval"), namespace)
        return True

    return execute


def tape_cell(
    code: str,
    namespace: dict,
    options: TapeOptions | None = None,
    execute: Executor | None = None,
) -> TapeResult | None:
    """Run `code` in `namespace` under tapes; None when the cell itself failed."""
    opts = options or TapeOptions()
    if not code.strip():
        raise TapeError("the cell is empty: put the code to differentiate below %%tape")
    if not 1 <= opts.order <= MAX_ORDER:
        raise TapeError(f"--order must be 1 to {MAX_ORDER}, not {opts.order}")
    try:
        info, tree = analysis.analyse_parsed(code, _numeric_modules(namespace))
    except SyntaxError:
        if execute is None:
            raise
        info = tree = None  # the executor shows the syntax error as IPython does
    try:
        device = devices.resolve(opts.device) if opts.device else None
    except ValueError as exc:
        raise TapeError(f"--device: {exc}") from None
    execute = execute or plain_executor(code, namespace)
    if info is None:
        execute(rewrite.Rewriter(), None)
        return None
    if not info.statements and not (tree or ast.parse(code)).body:
        raise TapeError("the cell is empty: put the code to differentiate below %%tape")
    sources, watched, swaps = _resolve_sources(info, namespace, opts)
    _check_target_names(info, namespace, opts)
    recorder = Recorder(
        plan=Plan(opts.order, opts.jacobian, opts.hessian),
        watch=set(opts.watch) if opts.watch is not None else None,
        device=device,
        keep_large=opts.check,
    )
    # Re-runs (--check, --plot) start from the Variables' values before this run.
    before = (
        snapshot(variables_in([*namespace.values(), *sources.values()]))
        if opts.check or opts.plot
        else []
    )
    # Hooks of an enclosing run (a %grad inside a %%tape cell) are put back afterwards.
    saved = {name: namespace[name] for name in [*swaps, BIND_HOOK, LAST_HOOK] if name in namespace}
    ok = False
    try:
        namespace.update(swaps)
        recorder.start(sources)
        namespace[BIND_HOOK], namespace[LAST_HOOK] = recorder.bind, recorder.last
        given, tree = tree, None  # the run rewrites it: nothing else may hold it
        ok = execute(rewrite.rewriter_for(info, opts.watch), given)
        del given
        if ok:
            targets = _collect_targets(info, namespace, opts, recorder)
            _add_accessed_variables(recorder, opts, info, namespace)
            hidden = _default_pairs(recorder, targets, opts, info)
            derivatives = recorder.finish(targets)
    finally:
        recorder.close()
        for name in (BIND_HOOK, LAST_HOOK):
            if name in saved:
                namespace[name] = saved[name]
            else:
                namespace.pop(name, None)
        for name, tensor in swaps.items():  # give the user their own objects back
            if namespace.get(name) is tensor:
                if name in saved:
                    namespace[name] = saved[name]
                else:
                    del namespace[name]
        # Names computed from -w numbers by plain arithmetic hold what a plain cell gives.
        numbers = {
            n: saved[n]
            for n in swaps
            if n in saved and isinstance(saved[n], (float, np.floating, np.ndarray))
        }
        plain = _PlainValues(info, numbers, namespace) if numbers else None
        for name in info.binds if plain else []:
            if name in namespace:
                namespace[name] = plain.of(name, namespace[name])
    if not ok:
        return None
    return _build_result(
        info, namespace, opts, recorder, targets, derivatives, watched, code, before, hidden
    )


def _numeric_modules(namespace: dict) -> frozenset[str]:
    """Names bound to NumPy, math or SciPy modules: calls through them leave TensorFlow."""
    return frozenset(
        name
        for name, value in namespace.items()
        if isinstance(value, types.ModuleType)
        and value.__name__.split(".")[0] in ("numpy", "math", "scipy")
    )


def _resolve_sources(info: CellInfo, namespace: dict, opts: TapeOptions):
    """Sources known before the run, the ids watched on purpose, and tensors to swap in."""
    sources: dict[str, Any] = {}
    swaps: dict[str, Any] = {}
    names = opts.watch if opts.watch is not None else info.reads
    peer = _peer_dtype(info, namespace, names, opts.overrides)
    for name in names:
        if name in opts.overrides:
            value = opts.overrides[name]
        elif name in namespace and name in info.reads:
            value = namespace[name]
        elif name in info.binds:
            continue  # watched by the bind hook from the moment the cell binds it
        elif name in namespace:
            value = namespace[name]
        elif opts.watch is None:
            continue  # a builtin, or a name the cell fails on: the run will tell
        else:
            raise TapeError(
                f"--watch {name}: no such name in the namespace or the cell; "
                f"define {name} first, or check the spelling"
            )
        value = unwrap(value)  # a Keras Variable: its tf.Variable; the name keeps the Keras one
        tensor = _as_source(name, value, explicit=opts.watch is not None, peer=peer)
        if tensor is None:
            continue
        if tensor is not value or name in opts.overrides:  # a float or array made a tensor
            swaps[name] = tensor
        sources[name] = tensor
    if opts.watch is None and not sources:
        # Nothing float was read: show integer tensors too, so their None gets explained.
        for name in info.reads:
            value = namespace.get(name)
            if isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype.is_integer:
                sources[name] = value
    return sources, {id(v) for v in sources.values()}, swaps


def _peer_dtype(info: CellInfo, namespace: dict, names: list[str], overrides: dict):
    """The dtype -w numbers take: that of the float tensors the cell reads when they agree
    (TF converts a number to the dtype of the tensor it meets), else that of the NumPy
    values watched when they agree (NumPy arithmetic keeps it), else None."""

    def one(values) -> tf.DType | None:
        dtypes = {tf.as_dtype(v.dtype).base_dtype for v in values}
        return dtypes.pop() if len(dtypes) == 1 else None

    read = [unwrap(namespace.get(n)) for n in info.reads]
    tensors = [v for v in read if isinstance(v, (tf.Tensor, tf.Variable)) and v.dtype.is_floating]
    watched = [overrides.get(n, namespace.get(n)) for n in names]
    arrays = [
        v for v in watched if isinstance(v, (np.ndarray, np.floating)) and v.dtype.kind == "f"
    ]
    return one(tensors) if tensors else one(arrays)


def _as_source(name: str, value: Any, explicit: bool, peer: tf.DType | None = None) -> Any:
    """The tensor to differentiate with respect to, or None (not a source by default).

    A Python or NumPy number given with -w becomes a tensor of the dtype it would take in
    the plain cell: TF converts such values to the dtype of the tensor they meet, so that of
    the float tensors the cell reads (`peer`) when they agree, else its own (a Python float:
    float32, as tf.constant(2.0))."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype.is_floating or value.dtype.is_complex or explicit:
            return value
        return None
    if not explicit:
        return None
    if isinstance(value, (bool, int, np.integer)):
        raise TapeError(
            f"{name} is an int ({value!r}): tapes differentiate floats only; "
            f"make it {name} = {float(value)!r} (or pass --at {name}={float(value)!r})"
        )
    if isinstance(value, (float, np.floating)) or (
        isinstance(value, np.ndarray) and value.dtype.kind == "f"
    ):
        own = tf.float32 if isinstance(value, float) else tf.as_dtype(np.asarray(value).dtype)
        return tf.constant(value, dtype=peer or own)
    if isinstance(value, np.ndarray):
        raise TapeError(
            f"{name} is a NumPy {value.dtype} array: tapes differentiate floats only; "
            f"use {name}.astype('float32')"
        )
    kind = type(value).__name__
    raise TapeError(
        f"{name} is a {kind}, not a number or tensor: tapes differentiate float tensors; "
        f"make it one, e.g. {name} = tf.constant(...)"
    )


class _PlainValues:
    """What a plain cell leaves in each name the cell computed from numbers given with -w
    (`numbers`: their original values): a number or array when the computation was plain
    arithmetic (`pf = pf * 3.0`, `q = pf ** 2`), the tensor when TensorFlow took part
    (`pf = tf.sin(pf)`) or when it does not come from those numbers at all. The dataflow is
    followed once for all names (name by name it was quadratic in a long cell)."""

    def __init__(self, info: CellInfo, numbers: dict, namespace: dict) -> None:
        self.numbers = numbers
        # each number -> the names computed from it, and itself
        self.reach = {d: info.computed_from([d]) | {d} for d in numbers}
        bound = set(info.binds)
        outside = {r for st in info.statements for r in st.reads} - bound - set(numbers)
        # names computed from a value TensorFlow (or code that may use it) made
        self.by_tf = info.computed_from(
            d
            for d in outside
            if isinstance(value := namespace.get(d), (tf.Tensor, tf.Variable, types.ModuleType))
            or callable(value)
        )

    def of(self, name: str, now: Any) -> Any:
        if not isinstance(now, tf.Tensor):
            return now
        used = [value for d, value in self.numbers.items() if name in self.reach[d]]
        if not used or name in self.by_tf:
            return now
        return _plain_value(now, used)


def _plain_value(now: tf.Tensor, used: list) -> Any:
    """`now` as the number or array plain arithmetic on the numbers `used` gives."""
    array = to_numpy(now)
    arrays = [u for u in used if isinstance(u, np.ndarray)]
    if arrays:  # NumPy's own promotion of the arrays' dtypes
        return array.astype(np.result_type(*arrays))
    if array.size != 1:
        return now
    scalars = [u for u in used if isinstance(u, np.floating)]
    return type(scalars[0])(array.item()) if scalars else float(array.item())


def _check_target_names(info: CellInfo, namespace: dict, opts: TapeOptions) -> None:
    for name in opts.targets or []:
        if name not in info.binds and name not in namespace:
            raise TapeError(
                f"--target {name}: the cell does not bind {name} and no such name exists; "
                f"targets: {', '.join(info.binds) or 'none'}"
            )


def _collect_targets(info: CellInfo, namespace: dict, opts: TapeOptions, recorder: Recorder):
    if opts.targets:
        return {name: _named_target(name, info, namespace) for name in opts.targets}
    source_ids = {id(v) for v in recorder.sources.values()}
    targets = {
        name: namespace[name]
        for name in info.binds
        if name in namespace
        and is_float_tensor(namespace[name])
        and not isinstance(namespace[name], tf.Variable)
        and name not in recorder.sources
        and id(namespace[name]) not in source_ids
    }
    # Values that should have been targets but are not float tensors get a row too, so
    # their None is explained: NumPy or Python numbers computed from a source (they left
    # TensorFlow), and integer results when the sources themselves are integers.
    all_int = all(not is_float_tensor(v) for v in recorder.sources.values())
    from_sources = None  # the names computed from the sources, found when first needed
    for name in info.binds:
        value = namespace.get(name)
        if name in targets or name in recorder.sources or value is None:
            continue
        left_tf = isinstance(value, (np.ndarray, np.generic, float)) and (
            np.asarray(value).dtype.kind == "f"
        )
        int_result = all_int and isinstance(value, tf.Tensor) and value.dtype.is_integer
        if not (left_tf or int_result):
            continue
        if from_sources is None:
            from_sources = info.computed_from(recorder.sources)
        if name in from_sources:
            targets[name] = value
    if not targets and info.has_last_expr:
        last = ast.parse(info.source).body[-1]
        label = ast.get_source_segment(info.source, last) or "_"
        targets[label] = recorder.last_value
    return targets


def _named_target(name: str, info: CellInfo, namespace: dict) -> Any:
    """A -t target after the run: a tensor, a list of them, or a number computed from a
    source (its None is then explained); anything else is a mistake to say at once."""
    if name not in namespace:
        lines = info.bind_lines.get(name)
        where = f" (its line {lines[0]} did not run)" if lines else ""
        raise TapeError(f"-t {name}: the cell did not bind {name}{where}; name a value it computes")
    value = unwrap(namespace[name])
    tensors = value if isinstance(value, (list, tuple)) and value else [value]
    if all(isinstance(v, (tf.Tensor, tf.Variable)) for v in tensors):
        return value
    numeric = isinstance(value, (float, np.floating, np.ndarray)) and not isinstance(value, bool)
    if numeric and name in info.binds:
        return value  # computed by the cell but not a tensor: the diagnosis says why
    kind = type(value).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    raise TapeError(
        f"-t {name}: {name} holds {article} {kind} ({_short_repr(value)}), not a tensor; "
        f"targets are float tensors the cell computes, e.g. {name} = tf.reduce_sum(...)"
    )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _add_accessed_variables(
    recorder: Recorder, opts: TapeOptions, info: CellInfo, namespace: dict
) -> None:
    """Trainable Variables reached through objects (`b.w`, `ws[0]`, a Keras model's kernel)
    are sources too, each under the expression the user reaches it by."""
    if opts.watch is not None or not recorder.tapes:
        return
    known = {id(v) for v in recorder.sources.values()}
    new = [
        var
        for var in recorder.tapes[-1].watched_variables()
        if id(var) not in known and is_float_tensor(var)
    ]
    if not new:
        return
    from tapemagic.tape.naming import reach_names

    # What the cell reads first (`Ws[7]`, not the loop variable `W` left bound to it), then
    # what it binds, then the rest of the namespace.
    groups = [info.reads, [n for n in info.binds if n not in info.reads]]
    groups.append([n for n in namespace if not n.startswith("_") and n not in _SHELL_NAMES])
    names = reach_names(
        new,
        [[(n, namespace[n]) for n in group if n in namespace] for group in groups],
        taken=recorder.sources,
    )
    for var in new:
        recorder.sources[names[id(var)]] = var


# IPython's own names in a user namespace: no way to a user's Variable.
_SHELL_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


def _default_pairs(
    recorder: Recorder, targets: dict, opts: TapeOptions, info: CellInfo
) -> dict[str, Any]:
    """The pairs that answer the usual question, unless --all: with respect to the
    Variables when the cell reads trainable ones into what it computes (the data tensors
    stay watched, for `_tape.gradient(t, "X")`, but get no row unless named with -w); of
    the scalar targets (a loss) when the cell binds any. Returns the sources left out."""
    hidden: dict[str, Any] = {}
    if opts.all_pairs:
        return hidden
    sources = recorder.sources
    # A Variable the cell only writes (`counter.assign_add(1.0)`) is no parameter: it takes
    # one a target is computed from, by the cell's dataflow (or reached through an object).
    upstream = {n for t in targets if t in info.binds for n in info.depends_on(t)}
    if any(t not in info.binds for t in targets):  # the last expression: what the cell reads
        upstream.update(info.reads)
    parameters = [
        name
        for name, v in sources.items()
        if isinstance(v, tf.Variable)
        and v.trainable
        and (name in upstream or name not in info.reads)
    ]
    if opts.watch is None and parameters:
        for name in [n for n, v in sources.items() if not isinstance(v, tf.Variable)]:
            hidden[name] = sources.pop(name)
    scalar = {n: _elements(v) == 1 for n, v in targets.items()}
    if not opts.targets and any(scalar.values()):
        for name in [n for n, one in scalar.items() if not one]:
            del targets[name]
    return hidden


def _elements(value: Any) -> int:
    """Elements in a target: a tensor's, or a NumPy value's (one that left TensorFlow)."""
    if is_tensor_like(value) or isinstance(value, (list, tuple)):
        return size_of(value)
    return int(np.size(value))


def _build_result(
    info, namespace, opts, recorder, targets, derivatives, watched, code, before, hidden
):
    point = {name: recorder.initial.get(name, v) for name, v in recorder.sources.items()}
    for name, v in recorder.sources.items():  # written before it is read: the value read
        if isinstance(v, tf.Variable) and written_before_read(code, name) not in (None, -1):
            point[name] = tf.identity(v)
    values = {name: v for name, v in targets.items()}
    ctx = Context(
        info=info,
        sources=recorder.sources,
        targets=targets,
        namespace=namespace,
        watched=watched | {id(v) for v in recorder.sources.values()},
        point=point,
    )
    for d in derivatives:
        if d.why is None or d.status == NONE:
            d.why = explain(d, ctx)
    # Read a pair's orders together: ∂y/∂x, ∂²y/∂x², then its Jacobian and Hessian.
    t_index, s_index = {t: i for i, t in enumerate(targets)}, {}
    for name in recorder.sources:
        s_index.setdefault(name, len(s_index))
    kinds = {"gradient": 0, "jacobian": 1, "hessian": 2}
    derivatives.sort(
        key=lambda d: (t_index.get(d.target, 0), s_index.get(d.source, 0), kinds[d.kind], d.order)
    )
    result = TapeResult(
        targets=list(targets),
        sources=list(recorder.sources),
        point=point,
        values=values,
        derivatives=derivatives,
        notes=_notes(info, namespace, recorder, targets),
        tape=recorder.tapes[-1] if recorder.tapes else None,
    )
    result._lookup = _on_demand(recorder, ctx, namespace, hidden)
    result._name_of = lambda obj: _known_name(obj, recorder.sources, hidden)
    if opts.check:
        from tapemagic.tape.fdcheck import check_result

        check_result(result, code, namespace, recorder, opts, before)
    if opts.plot:
        from tapemagic.tape.tangent import add_tangent_curve

        add_tangent_curve(result, code, namespace, recorder, opts, before)
    return result


def _notes(info: CellInfo, namespace: dict, recorder: Recorder, targets: dict) -> list[str]:
    notes = [lint.message for lint in info.lints]
    for name, source in recorder.sources.items():
        now = namespace.get(name)
        if (
            isinstance(source, tf.Variable)
            and name in info.binds
            and not isinstance(now, tf.Variable)
        ):
            line = info.bind_lines[name][0]
            notes.append(
                f"line {line}: {name} was a tf.Variable and the cell rebinds the name to a "
                f"Tensor ({info.line(line)}); the Variable is gone from the namespace and the "
                f"next run differentiates a constant: update it in place with "
                f"{name}.assign(...) / assign_add / assign_sub"
            )
        if isinstance(source, tf.Variable) and not source.trainable:
            notes.append(
                f"{name} has trainable=False: tapemagic watched it, but a plain GradientTape "
                f"would not (its gradient would be None) and optimizers skip it"
            )
    vectors = [n for n, v in recorder.sources.items() if size_of(v) > 1]
    if recorder.plan.order > 1 and vectors:
        notes.append(
            f"order 2 and up with respect to {', '.join(vectors)} (not scalars): each order is "
            f"the gradient of the sum of the previous one's elements, as nested tapes give "
            f"(the elementwise derivative for elementwise functions, Hessian row sums in "
            f"general); use --hessian for the full matrix"
        )
    if recorder.plan.hessian:
        vectors = [t for t, v in targets.items() if size_of(v) > 1]
        if vectors:
            notes.append(
                f"--hessian is for scalar targets: {', '.join(vectors)} "
                f"{'is' if len(vectors) == 1 else 'are'} not; reduce to a scalar (e.g. "
                f"tf.reduce_sum) or use --jacobian"
            )
    if not recorder.sources:
        notes.append(_no_sources_note(info, namespace, targets))
    elif not targets:
        notes.append(
            "no targets: the cell binds no float tensor and ends with no expression; "
            "assign the value to differentiate (y = ...) or name it with -t"
        )
    ignored = [
        f"{n} ({namespace[n].dtype.name})"
        for n in info.reads
        if isinstance(namespace.get(n), (tf.Tensor, tf.Variable))
        and namespace[n].dtype.is_integer
        and n not in recorder.sources
        and n in arithmetic_names(info.source)  # not an index: v[i], tf.gather(v, idx)
    ]
    if ignored:
        notes.append(
            f"not differentiated, integer: {', '.join(ignored)}; tapes differentiate floats "
            f"only (use tf.constant(3.0) or tf.cast(..., tf.float32) to include them)"
        )
    return notes


def _no_sources_note(info: CellInfo, namespace: dict, targets: dict) -> str:
    upstream = set().union(*(info.depends_on(t) for t in targets))
    made_here = [n for n in info.binds if n in upstream and is_float_tensor(namespace.get(n))]
    if made_here:
        name = made_here[0]
        return (
            f"no sources: the targets are computed from {', '.join(made_here)}, made in the "
            f"cell as a constant (line {info.bind_lines[name][0]}), and no tape watches a "
            f"constant by itself; watch it from the moment it is bound: %%tape -w {name}"
        )
    return (
        "no sources: the cell reads no float tensor or Variable from the namespace and "
        "creates no Variable; name what to differentiate with respect to with -w NAME"
    )


def _on_demand(recorder: Recorder, ctx: Context, namespace: dict, hidden: dict[str, Any]):
    """Order-1 gradients and Jacobians for pairs not precomputed, from the still-persistent
    inner tape (a Hessian needs the second tape, which closed with the run)."""
    inner = recorder.tapes[-1] if recorder.tapes else None

    def lookup(target, source, order, kind):
        if order != 1 or kind not in ("gradient", "jacobian") or inner is None:
            return None
        name, obj = _source_object(source, ctx, namespace, hidden)
        if obj is None:
            return None
        if target in ctx.targets:
            value = ctx.targets[target]
        elif target in namespace:
            value = namespace[target]
        else:
            return None
        stale = name in ctx.sources and ctx.sources[name] is not obj
        # A scalar target's Jacobian is its gradient.
        jacobian = kind == "jacobian" and size_of(value) > 1
        d = Derivative(target, name, 1, "jacobian" if jacobian else "gradient")
        try:
            if not is_tensor_like(value):
                d.value = None
            elif jacobian:
                d.value = inner.jacobian(value, obj)
                if d.value is not None and (value.shape.rank or 0) + (obj.shape.rank or 0) > 2:
                    d.value = tf.reshape(d.value, (size_of(value), size_of(obj)))
            else:
                d.value = dense(inner.gradient(value, obj))
        except Exception as exc:
            d.error = exc
        d.status = classify(d.value) if d.value is not None and d.error is None else NONE
        d.summed = size_of(value) > 1 and not jacobian
        local = Context(
            ctx.info, {**ctx.sources, name: obj}, {**ctx.targets, target: value},
            namespace, ctx.watched, ctx.point,
        )  # fmt: skip
        if stale and d.status == NONE:
            d.why = (
                f"{name} is a different object from the one the tape recorded: the cell that "
                f"makes {name} ran again after this tape, so the tape never saw the new "
                f"{name}; re-run the %%tape cell"
            )
        else:
            d.why = explain(d, local)
        return d

    return lookup


def _known_name(obj: Any, *known: dict[str, Any]) -> str | None:
    """The name a source object has here (`b.w`), or None."""
    inner = unwrap(obj)
    for names in known:
        for name, value in names.items():
            if value is obj or value is inner:
                return name
    return None


def _source_object(source: Any, ctx: Context, namespace: dict, hidden: dict[str, Any]):
    """(name, object) for a source given by name or as the object itself."""
    if isinstance(source, str):
        for known in (ctx.sources, hidden, namespace):
            if source in known:
                return source, known[source]
        return source, None
    for known in (ctx.sources, hidden):  # a source's own name: `b.w`, not the Variable's
        for name, value in known.items():
            if value is source or value is unwrap(source):
                return name, value
    for name, value in namespace.items():
        if value is source and not name.startswith("_"):
            return name, source
    return getattr(source, "name", "source").split(":")[0], source
