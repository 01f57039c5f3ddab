"""From the trainer's keyword arguments to checked, placed, built parts.

Kept apart from `Trainer` so that its constructor reads as a list of decisions; every
check here raises a one-line ValueError that names the argument and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tapemagic.training.data import ArrayData, DatasetData, check_batch_size, prepare, split
from tapemagic.training.distributed.replicas import Replicas
from tapemagic.training.loop import CompiledLoop
from tapemagic.training.objectives import (
    make_optimizer,
    misplaced,
    resolve_loss,
    resolve_metrics,
    variable_names,
)
from tapemagic.training.subject import (
    Style,
    all_scalar,
    build_model,
    discover_step,
    dtype_of,
    make_steps,
    probe,
)


@dataclass
class Parts:
    """Everything the trainer trains with, on its device."""

    data: ArrayData | DatasetData
    val: ArrayData | DatasetData | None
    batch_size: int | None
    loss: Any
    optimizer: Any
    train_metrics: list
    val_metrics: list
    metric_names: list[str]  # training metrics, then "val_" ones
    first_batch: int  # samples in the first batch (a Dataset's batch size)
    dist_batches: Callable[[], Any] | None = None  # under a strategy, for a Dataset


def check_options(on_nonfinite: str, checkpoint_every: Any) -> None:
    """The two plain options, checked before anything is built."""
    if on_nonfinite not in ("restore", "keep"):
        raise ValueError(f"on_nonfinite must be 'restore' or 'keep', got {on_nonfinite!r}")
    if checkpoint_every is not None and (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")


def build_parts(
    style: Style,
    device: str,
    *,
    model: Any,
    loss: Any,
    data: Any,
    validation_data: Any,
    validation_split: float | None,
    batch_size: Any,
    optimizer: Any,
    learning_rate: float | None,
    metrics: Any,
    replicas: Replicas | None = None,
) -> Parts:
    """Check the data, build the model, make the optimizer, probe one forward pass.

    With `replicas` (a strategy) everything is made in its scope, the variables must
    come from it, and the probe also tells whether the loss sums or averages."""
    dtype = dtype_of(style)
    data = prepare(data, dtype)
    if validation_data is not None and validation_split is not None:
        raise ValueError("pass validation_data= or validation_split=, not both")
    val = None
    if validation_split is not None:
        data, val = split(data, validation_split)
    elif validation_data is not None:
        val = prepare(validation_data, dtype, "validation_data")
    batch_size = check_batch_size(batch_size, data)
    if isinstance(data, ArrayData):  # two samples to build and probe the model with
        sample = data.take(0, min(2, data.n))
        x1, y1 = sample.x, sample.y
    else:
        x1, y1 = data.first()
    if model is not None and loss is None and style.kind == "model":
        loss = getattr(model, "loss", None)  # a compiled model brings its loss
    needs_loss = style.kind != "step" or val is not None or bool(metrics)
    if style.kind == "step" and needs_loss and style.forward is None:
        raise ValueError(
            "validation and metrics with step= need predictions: also pass model= or "
            "params= with predict=, and loss="
        )
    loss_fn = resolve_loss(loss) if needs_loss else None
    pred = None
    with replicas.scope() if replicas else tf.device(device):
        given = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if replicas and isinstance(given, keras.Optimizer):
            replicas.check_optimizer(given)
        build_model(style, x1)
        if replicas:
            same = len(style.weights) == len(style.names)  # params: the user's own names
            names = style.names if same else variable_names(style.weights)
            replicas.check_variables(style.weights, names)
        if style.kind == "step":
            if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
                raise ValueError("with step=, optimizer= can only be the optimizer your step uses")
            discover_step(style, x1, y1)
        else:
            if optimizer is None:
                optimizer = getattr(model, "optimizer", None) or "sgd"
            optimizer = make_optimizer(optimizer, learning_rate)
            optimizer.build(style.trainable)
            sources = replicas.local_copies(style.trainable) if replicas else None
            user_loss = not isinstance(loss, str)
            pred = probe(style, loss_fn, x1, y1, user_loss=user_loss, sources=sources)
            if replicas:
                _decide_reduction(replicas, style, loss_fn, data)
        if pred is None and metrics and style.forward is not None:
            pred = style.forward(x1, False)
        where = None if replicas else device
        m_train, m_val, names = resolve_metrics(metrics, where, _shape(y1), _shape(pred))
    away = [] if replicas else misplaced(style.trainable, style.names, device)
    if away:
        warnings.warn(
            f"{', '.join(away[:3])} {'is' if len(away) == 1 else 'are'} not on {device}: "
            f"TensorFlow copies {'it' if len(away) == 1 else 'them'} every step; create the "
            f"variables under `with tf.device('{device}'):` or pass device= to match",
            stacklevel=3,
        )
    has_val = val is not None
    home = replicas.host if replicas else device
    dist = None
    if replicas and isinstance(data, DatasetData):
        dist = replicas.distribute_dataset(data.ds, data.steps)
    return Parts(
        data=data.to_device(home) if isinstance(data, ArrayData) else data,
        val=val.to_device(home) if isinstance(val, ArrayData) else val,
        batch_size=batch_size,
        loss=loss_fn,
        optimizer=optimizer,
        train_metrics=m_train,
        val_metrics=m_val if has_val else [],
        metric_names=names + ([f"val_{n}" for n in names] if has_val else []),
        first_batch=int(tf.shape(tf.nest.flatten(y1)[0])[0]),
        dist_batches=dist,
    )


def _decide_reduction(replicas: Replicas, style: Style, loss_fn: Any, data: Any) -> None:
    """Sum or mean: the loss on up to 16 samples and on their halves."""
    if isinstance(data, ArrayData):
        sample = data.take(0, min(16, data.n))
        x, y = sample.x, sample.y
    else:
        x, y = data.first()
    replicas.decide_reduction(loss_fn, y, style.forward(x, False))


def make_loop(
    style: Style,
    parts: Parts,
    *,
    state: list,
    record_vars: list,
    shuffle: bool,
    seed: int,
    per_batch: bool,
    device: str,
    replicas: Replicas | None = None,
    snapshot: list | None = None,
) -> CompiledLoop:
    """The compiled loop for the current optimizer and batch size."""
    if replicas:
        train_step, eval_step = replicas.make_steps(
            style, parts.loss, parts.optimizer, parts.train_metrics, parts.val_metrics
        )
    else:
        train_step, eval_step = make_steps(style, parts.loss, parts.optimizer)
    return CompiledLoop(
        train_step=train_step,
        eval_step=eval_step,
        data=parts.data,
        val=parts.val,
        batch_size=parts.batch_size,
        shuffle=shuffle,
        seed=seed,
        state=state,
        record_vars=record_vars,
        train_metrics=parts.train_metrics,
        val_metrics=parts.val_metrics,
        metric_names=parts.metric_names,
        n_grad_vars=len(style.trainable) if style.kind != "step" else 0,
        grads_are_values=all_scalar(style.trainable),
        collect_batches=per_batch,
        device=device,
        metrics_in_step=replicas is not None,
        snapshot=snapshot,
        batch_iterator=parts.dist_batches,
    )


def _shape(t: Any) -> tuple | None:
    """The shape of a single tensor (None for structures: no accuracy guessing then)."""
    leaves = tf.nest.flatten(t) if t is not None else []
    return tuple(leaves[0].shape) if len(leaves) == 1 else None
