"""Re-run a recorded cell at other source values, leaving no trace.

The finite-difference check and the tangent plot evaluate the cell's targets at
points near the recorded one. Each run happens in the user's namespace (functions
the cell calls read their globals from there), quietly, from the state the cell first
ran in: Variables are set back to their values from before the recorded run, and
afterwards everything is put back as the recorded run left it (names the cell binds,
swapped tensors, Variable values). Other side effects (appending to a list, writing a
file) do repeat: the README says so.
"""

from __future__ import annotations

import ast
import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.tape import analysis, rewrite
from tapemagic.tape.recording import to_numpy
from tapemagic.tape.rewrite import BIND_HOOK, LAST_HOOK
from tapemagic.variables import unwrap


def variables_in(values: Iterable[Any]) -> list[tf.Variable]:
    """The Variables a cell can reach from these values: Variables themselves, in lists,
    tuples and dicts, those of objects that list theirs (Keras models, optimizers,
    tf.Module), and the state of a tf.random.Generator."""
    found: dict[int, tf.Variable] = {}

    def add(value: Any, depth: int = 0) -> None:
        value = unwrap(value)
        if isinstance(value, tf.Variable):
            found[id(value)] = value
        elif isinstance(value, tf.random.Generator):  # its state: re-runs draw from it too
            found[id(value.state)] = value.state
        elif depth == 0 and isinstance(value, (list, tuple)):
            for item in value:
                add(item, 1)
        elif depth == 0 and isinstance(value, dict):
            for item in value.values():
                add(item, 1)
        elif depth == 0 and not isinstance(value, type):
            try:
                owned = getattr(value, "variables", None)
            except Exception:  # a property that fails on some objects
                owned = None
            if isinstance(owned, (list, tuple)):
                for item in owned:
                    add(item, 1)

    for value in values:
        add(value)
    return list(found.values())


def snapshot(variables: Iterable[tf.Variable]) -> list[tuple[tf.Variable, tf.Tensor]]:
    return [(v, tf.identity(v)) for v in variables]


SET_HOOK = "__tapemagic_set__"


def written_before_read(code: str, name: str) -> int | None:
    """For a Variable the cell writes (`name.assign(...)`) before it first reads it: the
    index of the last top-level statement before that read, after which its value is the
    point the derivative is taken at; -1 when it is also written after the read (or the
    writes are not top-level statements); None when it is read first (the usual case)."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return None
    last_write = None
    for i, statement in enumerate(body):
        writes, reads = _uses(statement, name)
        if reads and last_write is None:
            return None
        if reads:
            later = any(_uses(st, name)[0] for st in body[i:])
            return -1 if later else last_write
        if writes:
            last_write = i
    return None


def _uses(statement: ast.stmt, name: str) -> tuple[bool, bool]:
    """(writes, reads) of `name` in a statement: writes are `name.assign*(...)` calls."""
    receivers = set()
    writes = False
    for node in ast.walk(statement):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("assign", "assign_add", "assign_sub")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            writes = True
            receivers.add(id(node.func.value))
    reads = any(
        isinstance(node, ast.Name) and node.id == name and id(node) not in receivers
        for node in ast.walk(statement)
    )
    return writes, reads


class Rerunner:
    """Evaluate `targets` of `code` with some sources replaced by other values.

    A value given for a Variable source is assigned to it (in its dtype), unless the value
    is itself a Variable: then the name is bound to it for the run (a float64 copy, for
    differences in float64). `set_after` maps sources the cell writes before reading them
    to the top-level statement after which their value is set."""

    def __init__(
        self,
        code: str,
        namespace: dict,
        sources: dict[str, Any],
        targets: list[str],
        before: list[tuple[tf.Variable, tf.Tensor]] = (),
        silence: Callable[[], contextlib.AbstractContextManager] | None = None,
        set_after: dict[str, int] | None = None,
    ):
        self.namespace = namespace
        self.sources = sources
        self.targets = targets
        self.before = list(before)  # Variable values from before the recorded run
        self.silence = silence or silence_output  # makes the context each run is under
        self.set_after = dict(set_after or {})
        parsed = ast.parse(code)
        for name, index in sorted(self.set_after.items(), key=lambda kv: -kv[1]):
            call = ast.Call(ast.Name(SET_HOOK, ast.Load()), [ast.Constant(name)], [])
            parsed.body.insert(index + 1, ast.Expr(call))
        tree = rewrite.Rewriter().visit(ast.fix_missing_locations(parsed))
        self.info = analysis.analyse(code)
        # Sources the cell binds before reading them are replaced as they are bound.
        self.made_in_cell = {n for n in sources if n in self.info.binds} - set(self.info.reads)
        self.code = compile(tree, "<tapemagic re-run>", "exec")
        known = [v for v, _ in self.before]
        self.variables = variables_in([*known, *namespace.values(), *sources.values()])
        self.dtypes: dict[str, Any] = {}  # the targets' dtypes in the last evaluation
        self.accessed: set[int] = set()  # ids of the trainable Variables the last run read
        self.gradient: Any = None  # the derivative asked of the last run (None: no path)
        self.gradient_taken = False  # whether it could be asked at all

    def _wrt(self, name: str, values: dict[str, Any]) -> Any:
        """The object a run's derivative is taken with respect to: the value given for a
        source (a tensor, or a Variable copy), or the Variable it is assigned to."""
        if name in self.made_in_cell or name not in values:
            return None
        source = self.sources.get(name)
        if isinstance(source, tf.Variable) and not _is_var(values[name]):
            return source
        return values[name]

    def __call__(
        self, values: dict[str, Any], grad: tuple[str, str, bool] | None = None
    ) -> dict[str, np.ndarray]:
        """Target values (as float64 arrays) with the given sources replaced. With `grad`
        (target, source, jacobian?), also the tape's derivative of that target with respect
        to that source in this run, in `self.gradient` (None where there is none)."""
        ns = self.namespace
        names = set(self.info.binds) | set(values) | {BIND_HOOK, LAST_HOOK, SET_HOOK}
        missing = object()
        saved_names = {n: ns.get(n, missing) for n in names}
        saved_vars = snapshot(self.variables)
        pending = {n: v for n, v in values.items() if n in self.made_in_cell}
        # Sources the cell writes before reading them: set (again) after those writes.
        deferred = {n: tf.identity(v) for n, v in values.items() if n in self.set_after}
        last: list[Any] = [None]

        def bind(_line, bound_names, bound_values):
            out = list(bound_values)
            for i, name in enumerate(bound_names):
                if name in pending:
                    new = pending.pop(name)
                    is_var = isinstance(unwrap(out[i]), tf.Variable)
                    out[i] = (tf.Variable(new) if is_var else new) if not _is_var(new) else new
            return tuple(out)

        def keep_last(value):
            last[0] = value
            return value

        def put(name: str, value: Any) -> None:
            source = self.sources.get(name)  # None: a value the cell reads by name (data)
            if isinstance(source, tf.Variable) and not _is_var(value):
                source.assign(tf.cast(value, source.dtype))
            else:
                ns[name] = value

        def set_now(name: str) -> None:
            var = unwrap(ns.get(name))  # the source, or the copy bound in its place
            if name in deferred and isinstance(var, tf.Variable):
                var.assign(tf.cast(deferred.pop(name), var.dtype))

        try:
            for var, value in self.before:
                var.assign(value)
            for name, value in values.items():
                if name not in self.made_in_cell:
                    put(name, value)
            ns[BIND_HOOK], ns[LAST_HOOK], ns[SET_HOOK] = bind, keep_last, set_now
            with self.silence(), tf.GradientTape() as probe:
                wrt = self._wrt(grad[1], values) if grad else None
                if isinstance(wrt, tf.Tensor):
                    probe.watch(wrt)
                exec(self.code, ns)
            self.accessed = {id(v) for v in probe.watched_variables()}
            self.gradient, self.gradient_taken = None, False
            out = {}
            for t in self.targets:
                value = ns.get(t, missing) if t in self.info.binds else missing
                if value is missing:
                    value = last[0]
                self.dtypes[t] = getattr(value, "dtype", None)
                out[t] = np.real(to_numpy(value)).astype(np.float64)
                if grad and grad[0] == t and wrt is not None and isinstance(value, tf.Tensor):
                    self.gradient = _derivative(probe, value, wrt, jacobian=grad[2])
                    self.gradient_taken = True
            return out
        finally:
            for name, value in saved_names.items():
                if value is missing:
                    ns.pop(name, None)
                else:
                    ns[name] = value
            for var, value in saved_vars:
                var.assign(value)


def _derivative(probe: tf.GradientTape, target: Any, source: Any, jacobian: bool) -> Any:
    try:
        if jacobian:
            return probe.jacobian(target, source, experimental_use_pfor=False)
        g = probe.gradient(target, source)
        return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
    except Exception:  # no gradient registered...: the check goes on without it
        return None


def _is_var(value: Any) -> bool:
    return isinstance(value, tf.Variable)


@contextlib.contextmanager
def silence_output() -> Iterator[None]:
    """Swallow stdout and stderr: the default silence of re-runs outside IPython."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
