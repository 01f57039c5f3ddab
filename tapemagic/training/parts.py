"""Assembly: the Trainer's keyword arguments, in order, into the parts it trains with.

Each module checks its own arguments (see the package docstring); this one calls them in
the order their dependencies need: the data (its dtype follows the variables), the built
subject (an unbuilt model needs a sample batch), the optimizer, the probe (one eager pass
on the sample), the metrics (their accuracy follows the probe's predictions). It also
makes the compiled loop from the parts. Every check raises a one-line ValueError that
names the argument and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tapemagic.training import subject
from tapemagic.training.data import ArrayData, DatasetData, check_batch_size, prepare, split
from tapemagic.training.distributed.replicas import Replicas
from tapemagic.training.loop import CompiledLoop
from tapemagic.training.objectives import (
    check_learning_rate,
    make_optimizer,
    resolve_loss,
    resolve_metrics,
)
from tapemagic.training.steps import all_scalar, make_steps, probe, probe_validation
from tapemagic.training.subject import Style, SubjectSpec
from tapemagic.training.user_warnings import warn_user


@dataclass
class Parts:
    """Everything the trainer trains with, on its device."""

    style: Style
    data: ArrayData | DatasetData
    val: ArrayData | DatasetData | None
    batch_size: int | None  # changes between runs (Trainer.batch_size)
    loss: Any
    optimizer: Any  # changes between runs (Trainer.optimizer)
    train_metrics: list
    val_metrics: list
    metric_names: list[str]  # training metrics, then "val_" ones
    first_batch: int  # samples in the first batch (a Dataset's batch size)
    dist_batches: Callable[[], Any] | None = None  # under a strategy, for a Dataset


def build_parts(
    spec: SubjectSpec,
    device: str,
    *,
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
    """Check the data, build the subject, make the optimizer, probe one forward pass.

    With `replicas` (a strategy) everything is made in its scope, the variables must
    come from it, and the probe also tells whether the loss sums or averages."""
    if learning_rate is not None:
        learning_rate = check_learning_rate(learning_rate, schedule_ok=True)  # before building
    dtype = subject.dtype_of(spec)
    data = prepare(data, dtype)
    if validation_data is not None and validation_split is not None:
        raise ValueError("pass validation_data= or validation_split=, not both")
    val = None
    if validation_split is not None:
        data, val = split(data, validation_split)
    elif validation_data is not None:
        val = prepare(validation_data, dtype, "validation_data")
    batch_size = check_batch_size(batch_size, data)
    x1, y1 = _sample(data, 2)  # two samples to build and probe the model with
    model = spec.model
    if model is not None and loss is None and spec.kind == "model":
        loss = getattr(model, "loss", None)  # a compiled model brings its loss
    needs_loss = spec.kind != "step" or val is not None or bool(metrics)
    if spec.kind == "step" and needs_loss and spec.forward is None:
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
        if spec.kind == "step" and not (
            optimizer is None or isinstance(optimizer, keras.optimizers.Optimizer)
        ):
            raise ValueError("with step=, optimizer= can only be the optimizer your step uses")
        style = subject.build(spec, x1, y1)
        if replicas:
            same = len(style.weights) == len(style.names)  # params: the user's own names
            names = style.names if same else subject.variable_names(style.weights)
            replicas.check_variables(style.weights, names)
        if style.kind != "step":
            if optimizer is None:
                optimizer = getattr(model, "optimizer", None) or "sgd"
            optimizer = make_optimizer(optimizer, learning_rate)
            optimizer.build(style.trainable)
            sources = replicas.local_copies(style.trainable) if replicas else None
            user_loss = not isinstance(loss, str)
            pred = probe(style, loss_fn, x1, y1, user_loss=user_loss, sources=sources)
            if replicas:
                x, y = _sample(data, 16)  # sum or mean: the loss on these and their halves
                replicas.decide_reduction(loss_fn, y, style.forward(x, False))
        if validation_data is not None and style.forward is not None and loss_fn is not None:
            xv, yv = _sample(val, 2)
            probe_validation(style, loss_fn, xv, yv, x1, user_loss=not isinstance(loss, str))
        if pred is None and metrics and style.forward is not None:
            pred = style.forward(x1, False)
        m = resolve_metrics(metrics, None if replicas else device, y1, pred)
    away = [] if replicas else subject.misplaced(style.trainable, style.names, device)
    if away:
        warn_user(
            f"{', '.join(away[:3])} {'is' if len(away) == 1 else 'are'} not on {device}: "
            f"TensorFlow copies {'it' if len(away) == 1 else 'them'} every step; create the "
            f"variables under `with tf.device('{device}'):` or pass device= to match"
        )
    has_val = val is not None
    home = replicas.host if replicas else device
    dist = None
    if replicas and isinstance(data, DatasetData):
        dist = replicas.distribute_dataset(data.ds, data.steps)
    return Parts(
        style=style,
        data=data.to_device(home) if isinstance(data, ArrayData) else data,
        val=val.to_device(home) if isinstance(val, ArrayData) else val,
        batch_size=batch_size,
        loss=loss_fn,
        optimizer=optimizer,
        train_metrics=m.train,
        val_metrics=m.val if has_val else [],
        metric_names=m.names + ([f"val_{n}" for n in m.names] if has_val else []),
        first_batch=int(tf.shape(tf.nest.flatten(y1)[0])[0]),
        dist_batches=dist,
    )


def _sample(data: ArrayData | DatasetData, n: int) -> tuple[Any, Any]:
    """Up to `n` samples of in-memory data, or a Dataset's first batch."""
    if isinstance(data, ArrayData):
        sample = data.take(0, min(n, data.n))
        return sample.x, sample.y
    return data.first()


def make_loop(
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
    style = parts.style
    steps = make_steps(
        style,
        parts.loss,
        parts.optimizer,
        replicas=replicas,
        train_metrics=parts.train_metrics,
        val_metrics=parts.val_metrics,
    )
    return CompiledLoop(
        steps=steps,
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
        snapshot=snapshot,
        batch_iterator=parts.dist_batches,
    )
