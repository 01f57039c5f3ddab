"""The name a user reaches a Variable by: `b.w`, `ws[0]`, `params["w"]`,
`model.layers[0].kernel`, never the Variable's own `name` (which users rarely choose, and
which collides: every unnamed Variable is "Variable").

A breadth-first search from the names the cell reads and binds, through attributes, list
and tuple items and dict entries, finds the shortest such expression. Public attributes come
first: a private one is followed where a public property of the same name gives it (Keras
keeps `kernel` in `_kernel`, a model its layers in `_layers`), and as `obj._attr` only when
nothing public reaches the Variable.
"""

from __future__ import annotations

import contextlib
import json
import types
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.variables import unwrap

MAX_DEPTH = 8  # model.layers[3].cell.kernel is 5 steps; deeper paths are not names
MAX_VISITS = 20_000  # objects looked at per search: a namespace holding big lists stays fast

_LEAVES = (
    str, bytes, int, float, complex, bool, type(None), types.ModuleType, type,
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, np.ndarray, np.generic,
    tf.Tensor, tf.dtypes.DType, tf.TensorShape,
)  # fmt: skip


# Flat lists of a model's or layer's weights: `model.trainable_variables[3]` says less than
# `model.layers[1].kernel`, so the search does not go through them.
_WEIGHT_LISTS = {
    "variables", "trainable_variables", "non_trainable_variables", "weights",
    "trainable_weights", "non_trainable_weights", "tracker",
}  # fmt: skip


def reach_names(
    wanted: Iterable[Any],
    root_groups: Iterable[Iterable[tuple[str, Any]]],
    taken: Iterable[str] = (),
) -> dict[int, str]:
    """id(variable) -> the shortest expression from a root (name, value) that evaluates
    to it (or to the Keras Variable around it). Groups are searched in order (the names
    the cell uses before the rest of the namespace), each by public paths first. Variables
    no root reaches get their own name in angle brackets, `<kernel>`; no two get the same
    label, nor one already in `taken`."""
    wanted = {id(unwrap(v)): unwrap(v) for v in wanted}
    found: dict[int, str] = {}
    for roots in root_groups:
        roots = list(roots)
        for private in (False, True):
            missing = set(wanted) - set(found)
            if missing:
                found.update(_search(missing, roots, private))
    used = set(taken)
    out = {}
    for key, var in wanted.items():
        label = found.get(key) or f"<{getattr(var, 'name', 'Variable').split(':')[0]}>"
        base, n = label, 2
        while label in used:
            label, n = f"{base}#{n}", n + 1
        used.add(label)
        out[key] = label
    return out


def _search(missing: set[int], roots: list[tuple[str, Any]], private: bool) -> dict[int, str]:
    found: dict[int, str] = {}
    seen: set[int] = set()
    alive: list[Any] = []  # what a property made stays alive, so its id is not reused
    queue: deque[tuple[str, Any, int]] = deque((name, value, 0) for name, value in roots)
    visits = 0
    while queue and missing and visits < MAX_VISITS:
        label, value, depth = queue.popleft()
        inner = unwrap(value)
        if id(value) in seen:
            continue
        seen.add(id(value))
        alive.append(value)
        visits += 1
        if id(inner) in missing:
            found[id(inner)] = label
            missing.discard(id(inner))
            continue
        if depth >= MAX_DEPTH or isinstance(inner, (tf.Variable, *_LEAVES)):
            continue
        for child_label, child in _children(label, value, private):
            if id(child) not in seen:
                queue.append((child_label, child, depth + 1))
    return found


def _children(label: str, value: Any, private: bool) -> Iterable[tuple[str, Any]]:
    if isinstance(value, (list, tuple)):
        return ((f"{label}[{i}]", item) for i, item in enumerate(value))
    if isinstance(value, dict):
        return (
            (f"{label}[{json.dumps(k) if isinstance(k, str) else repr(k)}]", item)
            for k, item in value.items()
            if isinstance(k, (str, int)) and not isinstance(k, bool)
        )
    try:
        attrs = vars(value)
    except TypeError:  # no __dict__ (slots, builtins)
        return ()
    out = []
    cls = type(value)
    for attr, item in list(attrs.items()):
        if not isinstance(attr, str) or attr.lstrip("_") in _WEIGHT_LISTS:
            continue
        if not attr.startswith("_"):
            out.append((f"{label}.{attr}", item))
            continue
        public = attr.lstrip("_")
        if public and isinstance(getattr(cls, public, None), property):
            # Keras: `kernel` for `_kernel`, `layers` for `_layers`; a property that fails
            # here is no way in.
            with contextlib.suppress(Exception):
                out.append((f"{label}.{public}", getattr(value, public)))
        elif private and not attr.startswith("__"):
            out.append((f"{label}.{attr}", item))
    return out
