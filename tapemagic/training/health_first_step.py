"""Before training: each variable the first step's gradient misses, and why.

The causes are those of docs/diagnosis.md, cited by their stable names: an integer dtype,
a layer frozen (trainable=False) on the loss's path, no path at all, a path through a
non-differentiable op or through Python/NumPy. The path is read from the traced graph of
the forward pass and the loss: forward from the variable's reads to the loss, noting the
first op that has no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from tapemagic.training.health import Finding, HealthThresholds
from tapemagic.variables import unwrap

# Ops whose gradient is None (or zero everywhere): docs/diagnosis.md#non-differentiable-op
_NONDIFF = {
    "Round", "Sign", "Floor", "Ceil", "ArgMax", "ArgMin", "StopGradient", "Equal", "NotEqual",
    "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr", "LogicalNot",
    "FloorDiv", "FloorMod", "TopKV2", "Unique", "RandomShuffle", "Rint",
}  # fmt: skip
# Ops that run Python: docs/diagnosis.md#python-function
_PYTHON = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def first_step_findings(
    style: Any, loss_fn: Callable, x: Any, y: Any, thresholds: HealthThresholds
) -> list[Finding]:
    """Each variable (or frozen layer) the first step's gradient misses, with its cause."""
    if style.kind == "step" or loss_fn is None:
        return []
    model = style.model
    trainable = list(style.trainable)
    floats = [v for v in trainable if tf.as_dtype(v.dtype).is_floating]
    frozen = _frozen(model, trainable) if thresholds.frozen else []
    sources = [unwrap(v) for v in floats] + [unwrap(f.weight) for f in frozen]
    saved = [unwrap(v).numpy() for v in model.non_trainable_weights] if model else []
    try:
        with tf.GradientTape() as tape:
            tape.watch([unwrap(f.weight) for f in frozen])
            pred = style.forward(x, True)  # training mode: BatchNorm's moving stats are off
            loss = _loss(loss_fn, y, pred, model)
        grads = tape.gradient(loss, sources)
    finally:  # a training-mode pass moves BatchNorm statistics and dropout seeds: undo
        for v, value in zip(model.non_trainable_weights if model else [], saved, strict=True):
            unwrap(v).assign(value)
    got = {id(s) for s, g in zip(sources, grads, strict=True) if g is not None}
    names = dict(zip([id(unwrap(v)) for v in trainable], style.names, strict=True))
    out: list[Finding] = []
    cuts = None
    for v in trainable:
        name = names[id(unwrap(v))]
        if not tf.as_dtype(v.dtype).is_floating:  # docs/diagnosis.md#integer-source
            out.append(Finding(
                "no-gradient", name, 0,
                f"{name} is an integer Variable ({tf.as_dtype(v.dtype).name}): gradients exist "
                "only for floats, so it gets none and never changes; make it a float "
                "(dtype='float32'), or trainable=False if it is a count or an index",
                "integer-source",
            ))  # fmt: skip
        elif id(unwrap(v)) not in got:
            if cuts is None:
                cuts = _cuts(style, loss_fn, x, y, model)
            out.append(_cut_finding(name, cuts.get(id(unwrap(v)))))
    layers: dict[tuple[str, str], list[str]] = {}
    for f in frozen:
        if id(unwrap(f.weight)) in got:  # docs/diagnosis.md#untrainable-variable
            layers.setdefault((f.layer, f.access), []).append(
                getattr(f.weight, "path", f.weight.name)
            )
    for (layer, access), weights in layers.items():
        listed = ", ".join(weights[:4]) + (
            f" and {len(weights) - 4} more" if len(weights) > 4 else ""
        )
        out.append(Finding(
            "no-gradient", layer, 0,
            f"layer {layer} is frozen (trainable=False) but on the loss's path: its weights "
            f"({listed}) get no gradient and never change; if that is a mistake, set "
            f"{access}.trainable = True before making the Trainer",
            "untrainable-variable",
        ))  # fmt: skip
    return out


def _loss(loss_fn: Callable, y: Any, pred: Any, model: Any) -> tf.Tensor:
    value = tf.reduce_mean(tf.cast(loss_fn(y, pred), tf.float32))
    if model is not None and model.losses:
        value += tf.cast(tf.add_n(model.losses), tf.float32)
    return value


class Frozen(NamedTuple):
    """A float weight the model does not train: its layer's name, the expression that
    reaches that layer from `model` (nested layers are not found by model.get_layer)."""

    layer: str
    access: str
    weight: Any


def _frozen(model: Any, trainable: Sequence[Any]) -> list[Frozen]:
    """Float weights of layers set trainable=False, each under its outermost frozen layer
    (a frozen sub-model is one finding, not one per layer inside it), and float weights
    made with trainable=False outside BatchNormalization-like statistics."""
    if model is None:
        return []
    import keras

    ids = {id(unwrap(v)) for v in trainable}
    out: list[Frozen] = []
    seen: set[int] = set()

    def add(layer: str, access: str, v: Any) -> None:
        tv = unwrap(v)
        if id(tv) not in ids and id(tv) not in seen and tv.dtype.is_floating:
            seen.add(id(tv))
            out.append(Frozen(layer, access, v))

    def visit(parent: Any, access: str) -> None:
        for layer in parent._flatten_layers(include_self=False, recursive=False):
            where = f"{access}.get_layer('{layer.name}')"
            if layer.trainable:
                visit(layer, where)
                continue
            for inner in layer._flatten_layers(include_self=True, recursive=True):
                for v in getattr(inner, "_trainable_variables", []):  # what it would train
                    add(layer.name, where, v)

    visit(model, "model")
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.non_trainable_weights:
                add(layer.name, f"model.get_layer('{layer.name}')", v)
    return out


def _cuts(style: Any, loss_fn: Callable, x: Any, y: Any, model: Any) -> dict[int, str | None]:
    """For each variable: the first op that cuts its path to the loss (its type and name,
    e.g. 'Round (dense/Round)'), '' when nothing connects it to the loss, None when the
    graph shows no cut (the cause is elsewhere)."""
    fn = tf.function(lambda x, y: _loss(loss_fn, y, style.forward(x, False), model))
    try:
        graph = fn.get_concrete_function(x, y).graph
    except Exception:  # the eager probe already passed: tracing problems are not ours
        return {}
    target = graph.outputs[0].op
    handles = {id(ext): internal for ext, internal in graph.captures}
    out: dict[int, str | None] = {}
    for v in style.trainable:
        tv = unwrap(v)
        inner = handles.get(id(getattr(tv, "handle", None)))
        if inner is None:
            out[id(tv)] = ""
            continue
        out[id(tv)] = _walk(inner.op, target)
    return out


def _walk(start: Any, target: Any) -> str | None:
    """Forward from `start`: '' if `target` is unreachable, the first cutting op met on
    the way if it is reachable only through cuts, None if a clean path exists."""
    seen, frontier, cut = {start}, [(start, None)], None
    reached_clean, reached = False, False
    while frontier:
        op, via = frontier.pop()
        if op is target:
            reached = True
            reached_clean = reached_clean or via is None
            continue
        if op.type in _NONDIFF or op.type in _PYTHON or _int_cast(op):
            via = via or f"{op.type} ({op.name})"
            cut = cut or via
        for out in op.outputs:
            for nxt in out.consumers():
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, via))
    if not reached:
        return ""
    return None if reached_clean else cut


def _int_cast(op: Any) -> bool:
    if op.type != "Cast":
        return False
    dst = op.get_attr("DstT")
    return not (dst.is_floating or dst.is_complex)


def _cut_finding(name: str, cut: str | None) -> Finding:
    if cut == "":  # docs/diagnosis.md#structural-zero: no path at all
        return Finding(
            "no-gradient", name, 0,
            f"{name} gets no gradient at the first step: it is not on the loss's path (the "
            "predictions and the loss do not use it), so training leaves it as it is; use it "
            "in the model's computation, or leave it out of the trained variables",
            "structural-zero",
        )  # fmt: skip
    if cut is not None and cut.split(" ")[0] in _PYTHON:  # docs/diagnosis.md#python-function
        return Finding(
            "no-gradient", name, 0,
            f"{name} gets no gradient at the first step: its path to the loss goes through "
            f"{cut}, Python or NumPy code that TensorFlow cannot differentiate; write that "
            "computation with tf ops, or give it a gradient with tf.custom_gradient",
            "python-function",
        )  # fmt: skip
    if cut is not None:  # docs/diagnosis.md#non-differentiable-op
        return Finding(
            "no-gradient", name, 0,
            f"{name} gets no gradient at the first step: its path to the loss goes through "
            f"{cut}, which is not differentiable; use a smooth substitute (e.g. softmax for "
            "argmax, sigmoid for a step, x + tf.stop_gradient(tf.round(x) - x) for round)",
            "non-differentiable-op",
        )  # fmt: skip
    return Finding(  # docs/diagnosis.md#when-no-cause-is-recognised
        "no-gradient", name, 0,
        f"{name} gets no gradient at the first step, through no op tapemagic recognises; look "
        "on its path to the loss for NumPy, integer casts or ops without a gradient",
        "when-no-cause-is-recognised",
    )  # fmt: skip
