"""The step functions the compiled loop calls, and the probe that checks them first.

One `make_steps` for every configuration: on one device the steps are built here; under
a `tf.distribute` strategy `Replicas.split_steps` builds them from the same pieces
(`differentiate`, `gradient_summaries`). The probe runs one eager forward pass and
gradient on a sample batch, so that shape mismatches and missing gradients surface as
one-line errors naming the variables, before any compiled code runs. When no gradient
reaches any variable, Keras says only "No gradients provided for any variable"; here the
message names the variables and the usual way the gradient is lost
(docs/diagnosis.md#no-gradient-for-any-variable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import tensorflow as tf

from tapemagic.training.objectives import same_rank, scalar_loss
from tapemagic.training.subject import Style, first_line
from tapemagic.training.user_warnings import warn_user

if TYPE_CHECKING:
    from tapemagic.training.distributed.replicas import Replicas

# step(x, y) -> (loss: f32 scalar, per-variable gradient summaries or None, y_pred or None);
# it applies the update. A summary is the gradient itself for a scalar variable when all
# are scalars (`all_scalar`), else the sum of its squared entries.
TrainStep = Callable[[Any, Any], tuple[tf.Tensor, list | None, Any]]
# evaluate(x, y) -> (loss: f32 scalar, y_pred or None), no update.
EvalStep = Callable[[Any, Any], tuple[tf.Tensor, Any]]


class Steps(NamedTuple):
    """What the compiled loop runs for each batch."""

    train: TrainStep
    eval: EvalStep | None  # None: nothing to validate with (a bare step=)
    updates_metrics: bool  # the steps update the metrics themselves (in each replica)


class Gradients(NamedTuple):
    """One forward and backward pass, before the update."""

    loss: tf.Tensor
    grads: list  # per trainable variable, None where no gradient arrives
    pairs: list  # (gradient, variable) for those that have one: what the optimizer applies
    pred: Any


def make_steps(
    style: Style,
    loss_fn: Callable | None,
    optimizer: Any,
    *,
    replicas: Replicas | None = None,
    train_metrics: Sequence[Any] = (),
    val_metrics: Sequence[Any] = (),
) -> Steps:
    """The compiled loop's train and evaluation steps for this style (and strategy)."""
    if replicas is not None:
        return replicas.split_steps(style, loss_fn, optimizer, train_metrics, val_metrics)
    forward = style.forward
    eval_step = None
    if forward is not None and loss_fn is not None:

        def eval_step(x, y):
            pred = forward(x, False)
            return tf.cast(scalar_loss(loss_fn(y, pred)), tf.float32), pred

    if style.kind == "step":
        user = style.user_step

        def train_step(x, y):
            pred = forward(x, False) if forward is not None else None
            out = user(x, y)
            if isinstance(out, Mapping):
                out = out["loss"]
            elif isinstance(out, tuple | list):
                out = out[0]
            return tf.cast(scalar_loss(out), tf.float32), None, pred

        return Steps(train_step, eval_step, False)

    values = all_scalar(style.trainable)

    def train_step(x, y):
        g = differentiate(style, lambda y, pred: scalar_loss(loss_fn(y, pred)), x, y)
        optimizer.apply_gradients(g.pairs)
        return tf.cast(g.loss, tf.float32), gradient_summaries(g.grads, values), g.pred

    return Steps(train_step, eval_step, False)


def tapped_train_step(
    style: Style, loss_fn: Callable, optimizer: Any, tapped: Callable[[Any, bool], tuple]
) -> Callable[[Any, Any], tuple]:
    """The single-device train step, its forward pass made by `tapped(x, training)` ->
    (predictions, [layer outputs]) (health's ReLU statistics); it returns those outputs
    fourth."""
    outputs: list = []

    def forward(x, training):
        pred, acts = tapped(x, training)
        outputs[:] = [acts]  # read back in the same trace, right after the forward pass
        return pred

    style = dataclasses.replace(style, forward=forward)
    values = all_scalar(style.trainable)

    def train_step(x, y):
        g = differentiate(style, lambda y, pred: scalar_loss(loss_fn(y, pred)), x, y)
        optimizer.apply_gradients(g.pairs)
        summaries = gradient_summaries(g.grads, values)
        return tf.cast(g.loss, tf.float32), summaries, g.pred, outputs[0]

    return train_step


def differentiate(
    style: Style, loss_of: Callable[[Any, Any], tf.Tensor], x: Any, y: Any, replicas: int = 1
) -> Gradients:
    """Forward pass in training mode, `loss_of(y, pred)` plus the model's own losses
    (regularizers; split over `replicas` whose losses are summed), and its gradient.

    Raises when no trainable variable gets a gradient: the optimizer would fail with a
    message that names none of them."""
    model = style.model
    with tf.GradientTape() as tape:
        pred = style.forward(x, True)
        loss = loss_of(y, pred)
        if model is not None and model.losses:
            extra = tf.cast(tf.add_n(model.losses), loss.dtype)
            loss = loss + (extra / replicas if replicas != 1 else extra)
    grads = tape.gradient(loss, style.trainable)
    pairs = [(g, v) for g, v in zip(grads, style.trainable, strict=True) if g is not None]
    if not pairs:
        raise ValueError(no_gradient_message(style.names, style.kind))
    return Gradients(loss, grads, pairs, pred)


def all_scalar(variables: Sequence[Any]) -> bool:
    """Models made of scalars (the seed's a and b) report raw gradients: fewer ops."""
    return all(len(v.shape) == 0 for v in variables)


def gradient_summaries(grads: Sequence[Any], values: bool) -> list[tf.Tensor]:
    """Per variable: the gradient itself (`values`, all scalar) or its squared norm."""
    out = []
    for g in grads:
        if g is None:
            out.append(tf.constant(0.0))
        elif values:
            out.append(tf.cast(g, tf.float32))
        else:
            g = g.values if isinstance(g, tf.IndexedSlices) else g
            out.append(tf.cast(2.0 * tf.nn.l2_loss(g), tf.float32))
    return out


# -- the probe ---------------------------------------------------------------------------


def no_gradient_message(names: Sequence[str], kind: str) -> str:
    """No gradient reaches any variable: name them, and where the gradient is usually lost."""
    where = (
        "predict must compute with these Variables through TensorFlow ops (no .numpy(), "
        "float() or NumPy on the way)"
        if kind == "params"
        else "the loss must use the model's predictions (y_pred) through TensorFlow ops"
    )
    return f"no gradient reaches any of {', '.join(names)} from the loss: {where}"


def probe(
    style: Style, loss_fn: Callable, x: Any, y: Any, user_loss: bool, sources: Any = None
) -> Any:
    """One eager forward pass and gradient, for clear errors before compiling.

    `sources`: what to differentiate against instead of `style.trainable` (under a
    strategy: each variable's first local copy, the one read outside replicas).
    Returns the predictions (their shape tells metrics what 'accuracy' means)."""
    what = _what(style)
    with tf.GradientTape() as tape:
        pred, value = _predict_and_loss(
            style, loss_fn, x, y, user_loss,
            lambda err: f"{what} fails on a batch of X with shape {_shapes(x)}: {first_line(err)}",
            lambda err, pred: (
                f"loss fails on (Y with shape {_shapes(y)}, predictions with shape "
                f"{_shapes(pred)}): {first_line(err)}{_shape_hint(y, pred)}"
            ),
        )  # fmt: skip
        loss = scalar_loss(value)
    grads = tape.gradient(loss, sources if sources is not None else style.trainable)
    missing = [n for n, g in zip(style.names, grads, strict=True) if g is None]
    if len(missing) == len(style.names):
        raise ValueError(no_gradient_message(style.names, style.kind))
    if missing:
        # Not "the loss does not depend on them": a NumPy detour or a rounding op loses the
        # gradient too. The trainer's first-step findings name the cause per variable.
        warn_user(
            f"no gradient reaches {', '.join(missing)} from the loss, so training leaves "
            "them as they are"
        )
    return pred


def probe_validation(
    style: Style, loss_fn: Callable, x: Any, y: Any, x_train: Any, user_loss: bool
) -> None:
    """The probe's forward pass and loss on a sample of validation_data, so that data of
    another width fails here, in one line, and not inside the compiled loop."""
    what = _what(style)
    _predict_and_loss(
        style, loss_fn, x, y, user_loss,
        lambda err: (
            f"validation_data: {what} fails on a batch of its X with shape {_shapes(x)}, "
            f"where training batches have shape {_shapes(x_train)}: {first_line(err)}; pass "
            "validation X with the same features as the training X"
        ),
        lambda err, pred: (
            f"validation_data: loss fails on (Y with shape {_shapes(y)}, predictions with "
            f"shape {_shapes(pred)}): {first_line(err)}; pass validation Y shaped like the "
            "training Y"
        ),
    )  # fmt: skip


def _what(style: Style) -> str:
    return "predict" if style.kind == "params" else "the model"


def _predict_and_loss(
    style: Style,
    loss_fn: Callable,
    x: Any,
    y: Any,
    user_loss: bool,
    forward_error: Callable[[BaseException], str],
    loss_error: Callable[[BaseException, Any], str],
) -> tuple[Any, tf.Tensor]:
    """One eager forward pass and the loss on it, each failure a one-line ValueError whose
    text the caller words (training batch or validation data); a broadcast the loss would
    do is warned about. Returns the predictions and the checked loss value."""
    try:
        pred = style.forward(x, False)
    except Exception as err:
        raise ValueError(forward_error(err)) from err
    if user_loss:
        _warn_broadcast(*same_rank(y, pred))
    try:
        value = loss_fn(y, pred)
    except Exception as err:
        raise ValueError(loss_error(err, pred)) from err
    return pred, _check_loss_value(value)


def _shape_hint(y: Any, pred: Any) -> str:
    """When the shapes differ beyond what Keras aligns: what must change."""
    ys, ps = tf.nest.flatten(y), tf.nest.flatten(pred)
    if len(ys) != 1 or len(ps) != 1 or ys[0].shape[1:] == ps[0].shape[1:]:
        return ""
    return (
        f"; the predictions need Y's shape per sample ({tuple(ys[0].shape[1:])}, they have "
        f"{tuple(ps[0].shape[1:])}): change the model's output (or predict) or reshape Y"
    )


def _shapes(t: Any) -> Any:
    """For messages: a tensor's shape, or the list of a structure's shapes."""
    shapes = [tuple(s.shape) for s in tf.nest.flatten(t)]
    return shapes[0] if len(shapes) == 1 else shapes


def _check_loss_value(value: Any) -> tf.Tensor:
    """What the loss returned must be a float tensor (a scalar, or per-sample values that
    are averaged): anything else cannot carry a gradient."""
    if value is None:
        raise ValueError(
            "loss returned None: end the loss function with `return` and the loss value, "
            "e.g. return tf.reduce_mean(tf.square(y_true - y_pred))"
        )
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"loss returned a {type(value).__name__}, not a number: return a float tensor "
            "computed from y_pred, e.g. tf.reduce_mean(tf.square(y_true - y_pred))"
        ) from err
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer or tensor.dtype.is_bool):
        raise ValueError(
            f"loss returned a {tensor.dtype.name} tensor, not a number: return a float tensor "
            "computed from y_pred, e.g. tf.reduce_mean(tf.square(y_true - y_pred))"
        )
    if not tensor.dtype.is_floating:
        raise ValueError(
            f"loss returned {tensor.dtype.name} {_value_text(tensor)}, which has no gradient: "
            "compute it in floats from y_pred (no int(), round() or integer casts), e.g. "
            "tf.reduce_mean(tf.square(y_true - y_pred))"
        )
    return tensor


def _value_text(t: tf.Tensor) -> str:
    return repr(t.numpy().item()) if t.shape.rank == 0 else f"of shape {tuple(t.shape)}"


def _warn_broadcast(y: Any, pred: Any) -> None:
    """Targets and predictions that still broadcast to more elements than either has after
    Keras's rank alignment (e.g. (n,) against (n, 1, 1)): Keras would compute the loss on
    that broadcast too, so it is not refused, but never silently."""
    if not (isinstance(pred, tf.Tensor) and isinstance(y, tf.Tensor)):
        return
    if pred.shape == y.shape:
        return
    try:
        both = tf.broadcast_static_shape(pred.shape, y.shape)
    except ValueError:
        return
    if both.num_elements() and both.num_elements() > max(
        pred.shape.num_elements() or 0, y.shape.num_elements() or 0
    ):
        warn_user(
            f"predictions have shape {tuple(pred.shape)} but Y has {tuple(y.shape)}; they "
            f"broadcast to {tuple(both)} in the loss (as under Keras fit): reshape Y or the "
            "predictions so they match"
        )
