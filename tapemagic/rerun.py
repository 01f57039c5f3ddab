"""Re-run a recorded cell at other source values, leaving no trace.

The finite-difference check and the tangent plot evaluate the cell's targets at
points near the recorded one. Each run happens in the user's namespace (functions
the cell calls read their globals from there), quietly, and everything it touched is
put back afterwards: rebound names, swapped tensors and the values of Variables.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic import cellcode
from tapemagic.cellcode import BIND_HOOK, LAST_HOOK


class Rerunner:
    """Evaluate `targets` of `code` with some sources replaced by other values."""

    def __init__(
        self,
        code: str,
        namespace: dict,
        sources: dict[str, Any],
        targets: list[str],
        extra_variables: list[tf.Variable] = (),
    ):
        self.namespace = namespace
        self.sources = sources
        self.targets = targets
        tree = cellcode.Rewriter().visit(cellcode.ast.parse(code))
        self.info = cellcode.analyse(code)
        # Sources the cell binds before reading them are replaced as they are bound.
        self.made_in_cell = {n for n in sources if n in self.info.binds} - set(self.info.reads)
        self.code = compile(tree, "<tapemagic re-run>", "exec")
        variables = {id(v): v for v in extra_variables}
        for value in [*namespace.values(), *sources.values()]:
            if isinstance(value, tf.Variable):
                variables[id(value)] = value
        self.variables = list(variables.values())

    def __call__(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        """Target values (as float64 arrays) with the given sources replaced."""
        ns = self.namespace
        names = set(self.info.binds) | set(values) | {BIND_HOOK, LAST_HOOK}
        missing = object()
        saved_names = {n: ns.get(n, missing) for n in names}
        saved_vars = [(v, v.read_value()) for v in self.variables]
        pending = {n: v for n, v in values.items() if n in self.made_in_cell}
        last: list[Any] = [None]

        def bind(_line, bound_names, bound_values):
            out = list(bound_values)
            for i, name in enumerate(bound_names):
                if name in pending:
                    new = pending.pop(name)
                    is_var = isinstance(out[i], tf.Variable)
                    out[i] = tf.Variable(new) if is_var else new
            return tuple(out)

        def keep_last(value):
            last[0] = value
            return value

        try:
            for name, value in values.items():
                if name in self.made_in_cell:
                    continue
                source = self.sources[name]
                if isinstance(source, tf.Variable):
                    source.assign(tf.cast(value, source.dtype))
                else:
                    ns[name] = value
            ns[BIND_HOOK], ns[LAST_HOOK] = bind, keep_last
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                exec(self.code, ns)
            out = {}
            for t in self.targets:
                value = ns.get(t, missing) if t in self.info.binds else missing
                if value is missing:
                    value = last[0]
                out[t] = np.asarray(value, dtype=np.float64)
            return out
        finally:
            for name, value in saved_names.items():
                if value is missing:
                    ns.pop(name, None)
                else:
                    ns[name] = value
            for var, value in saved_vars:
                var.assign(value)
