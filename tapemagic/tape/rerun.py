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

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.tape import cellcode
from tapemagic.tape.cellcode import BIND_HOOK, LAST_HOOK
from tapemagic.tape.recording import to_numpy
from tapemagic.variables import unwrap


def variables_in(values: Iterable[Any]) -> list[tf.Variable]:
    """The Variables a cell can reach from these values: Variables themselves, in lists,
    tuples and dicts, and those of objects that list theirs (Keras models, optimizers,
    tf.Module)."""
    found: dict[int, tf.Variable] = {}

    def add(value: Any, depth: int = 0) -> None:
        value = unwrap(value)
        if isinstance(value, tf.Variable):
            found[id(value)] = value
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


class Rerunner:
    """Evaluate `targets` of `code` with some sources replaced by other values."""

    def __init__(
        self,
        code: str,
        namespace: dict,
        sources: dict[str, Any],
        targets: list[str],
        before: list[tuple[tf.Variable, tf.Tensor]] = (),
        silence: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        self.namespace = namespace
        self.sources = sources
        self.targets = targets
        self.before = list(before)  # Variable values from before the recorded run
        self.silence = silence or silence_output  # makes the context each run is under
        tree = cellcode.Rewriter().visit(cellcode.ast.parse(code))
        self.info = cellcode.analyse(code)
        # Sources the cell binds before reading them are replaced as they are bound.
        self.made_in_cell = {n for n in sources if n in self.info.binds} - set(self.info.reads)
        self.code = compile(tree, "<tapemagic re-run>", "exec")
        known = [v for v, _ in self.before]
        self.variables = variables_in([*known, *namespace.values(), *sources.values()])
        self.dtypes: dict[str, Any] = {}  # the targets' dtypes in the last evaluation

    def __call__(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        """Target values (as float64 arrays) with the given sources replaced."""
        ns = self.namespace
        names = set(self.info.binds) | set(values) | {BIND_HOOK, LAST_HOOK}
        missing = object()
        saved_names = {n: ns.get(n, missing) for n in names}
        saved_vars = snapshot(self.variables)
        pending = {n: v for n, v in values.items() if n in self.made_in_cell}
        last: list[Any] = [None]

        def bind(_line, bound_names, bound_values):
            out = list(bound_values)
            for i, name in enumerate(bound_names):
                if name in pending:
                    new = pending.pop(name)
                    is_var = isinstance(unwrap(out[i]), tf.Variable)
                    out[i] = tf.Variable(new) if is_var else new
            return tuple(out)

        def keep_last(value):
            last[0] = value
            return value

        try:
            for var, value in self.before:
                var.assign(value)
            for name, value in values.items():
                if name in self.made_in_cell:
                    continue
                source = self.sources[name]
                if isinstance(source, tf.Variable):
                    source.assign(tf.cast(value, source.dtype))
                else:
                    ns[name] = value
            ns[BIND_HOOK], ns[LAST_HOOK] = bind, keep_last
            with self.silence():
                exec(self.code, ns)
            out = {}
            for t in self.targets:
                value = ns.get(t, missing) if t in self.info.binds else missing
                if value is missing:
                    value = last[0]
                self.dtypes[t] = getattr(value, "dtype", None)
                out[t] = np.real(to_numpy(value)).astype(np.float64)
            return out
        finally:
            for name, value in saved_names.items():
                if value is missing:
                    ns.pop(name, None)
                else:
                    ns[name] = value
            for var, value in saved_vars:
                var.assign(value)


@contextlib.contextmanager
def silence_output() -> Iterator[None]:
    """Swallow stdout and stderr: the default silence of re-runs outside IPython."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
