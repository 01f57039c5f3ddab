"""The three ways the seed trains, as one `Style`: raw Variables, a Keras model, a step.

Also the construction-time probe: one eager forward pass and gradient on two samples, so
that shape mismatches and missing gradients (REFERENCE.md section 2, cause 17: Keras
says only "No gradients provided for any variable") surface as one-line errors naming
the variables, before any compiled code runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tapemagic.training.objectives import scalar_loss, variable_names
from tapemagic.variables import unwrap


@dataclass
class Style:
    """What is trained and how its predictions are made."""

    kind: str  # "params", "model" or "step"
    trainable: list  # variables the trainer differentiates (empty for a user step)
    names: list[str]  # display names of `trainable` (or of the step's trainable ones)
    weights: list  # all model state: trainable, BatchNorm statistics, RNG seeds
    forward: Callable[[Any, bool], Any] | None  # (x, training) -> y_pred
    user_step: Callable[[Any, Any], Any] | None = None
    model: Any = None
    lr_variable: Any = None  # a step's own optimizer learning rate, when found


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def resolve(model: Any, params: Any, predict: Any, step: Any) -> Style:
    """Check which style the arguments describe; build nothing yet."""
    if model is not None and params is not None:
        raise ValueError("pass either model= or params= (with predict=), not both")
    if step is not None and not callable(step):
        raise ValueError("step must be a function train_step(x, y) that returns the loss")
    if predict is not None and params is None and step is None:
        raise ValueError("predict= needs params=[the Variables it uses], e.g. params=[a, b]")
    if params is not None and predict is None and step is None:
        raise ValueError("params= needs predict=fn(X) that computes the predictions from them")
    if model is None and params is None and step is None:
        raise ValueError(
            "nothing to train: pass params=[a, b] with predict=fn, model=keras_model, "
            "or step=train_step (a function (x, y) -> loss that updates the weights itself)"
        )
    if model is not None and not isinstance(model, keras.Model | keras.layers.Layer):
        raise ValueError(f"model must be a Keras model or layer, got {type(model).__name__}")
    names: list[str] | None = None
    if params is not None:
        if isinstance(params, Mapping):
            names, params = [str(k) for k in params], list(params.values())
        elif isinstance(params, tf.Variable | keras.Variable):
            params = [params]
        else:
            params = list(params)
        names = names or _names_in(predict or step, params)
        _check_params(params, names)
        names = variable_names(params, names)
        forward = None if predict is None else (lambda x, training: predict(x))
        kind = "step" if step is not None else "params"
        return Style(kind, params, names, list(params), forward, step)
    if model is not None:
        forward = lambda x, training: model(x, training=training)  # noqa: E731
        kind = "step" if step is not None else "model"
        return Style(kind, [], [], [], forward, step, model)
    return Style("step", [], [], [], None, step)


def _names_in(fn: Any, params: Sequence[Any]) -> list[str] | None:
    """The names `fn` uses for the params (closure or globals), as the user wrote them."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    scope = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    for name in code.co_names:
        if name in fn.__globals__:
            scope.setdefault(name, fn.__globals__[name])
    by_id = {id(v): k for k, v in scope.items()}
    found = [by_id.get(id(p)) for p in params]
    return found if all(found) and len(set(found)) == len(found) else None


def _check_params(params: Sequence[Any], names: Sequence[str] | None) -> None:
    if not params:
        raise ValueError("params is empty: pass the tf.Variables to train, e.g. params=[a, b]")
    for i, p in enumerate(params):
        label = names[i] if names else f"params[{i}]"
        if not isinstance(p, tf.Variable | keras.Variable):
            raise ValueError(
                f"{label} is a {type(p).__name__}, not a tf.Variable; make it "
                "tf.Variable(initial_value) so it can be trained"
            )
        dtype = tf.as_dtype(p.dtype)
        if not dtype.is_floating:
            raise ValueError(
                f"{label} is a {dtype.name} Variable; gradients exist only for float "
                f"Variables: create it as tf.Variable({_float_hint(p)})"
            )
        if not p.trainable:
            raise ValueError(f"{label} has trainable=False; make it trainable or leave it out")


def _float_hint(p: Any) -> str:
    try:
        return repr(float(p.numpy()))
    except (TypeError, ValueError):
        return "..., dtype=tf.float32"


def dtype_of(style: Style) -> tf.DType:
    """The float dtype data should take: the trained variables', else Keras's floatx."""
    for v in style.trainable:
        if tf.as_dtype(v.dtype).is_floating:
            return tf.as_dtype(v.dtype)
    if style.model is not None:
        policy = getattr(style.model, "dtype_policy", None)
        name = getattr(policy, "compute_dtype", None) or keras.config.floatx()
        return tf.as_dtype(name)
    return tf.as_dtype(keras.config.floatx())


def build_model(style: Style, x_sample: Any) -> None:
    """Create an unbuilt Keras model's weights (on the current device scope)."""
    model = style.model
    if model is None:
        return
    if not model.built:
        try:
            model(x_sample, training=False)
        except Exception as err:
            shapes = [tuple(t.shape) for t in tf.nest.flatten(x_sample)]
            hint = " (for 1-D X, pass X[:, None])" if any(len(s) == 1 for s in shapes) else ""
            raise ValueError(
                f"the model cannot take a batch of X with shape "
                f"{shapes[0] if len(shapes) == 1 else shapes}{hint}: {_first_line(err)}"
            ) from err
    if style.kind == "model":
        style.trainable = list(model.trainable_variables)
        style.names = variable_names(style.trainable)
    style.weights = list(model.variables)


def no_gradient_message(names: Sequence[str], kind: str) -> str:
    """Cause 17 of the catalog, with the variables named."""
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
    what = "predict" if style.kind == "params" else "the model"
    with tf.GradientTape() as tape:
        try:
            pred = style.forward(x, False)
        except Exception as err:
            raise ValueError(
                f"{what} fails on a batch of X with shape {_shape(x)}: {_first_line(err)}"
            ) from err
        if user_loss:
            _warn_broadcast(pred, y)
        try:
            loss = scalar_loss(loss_fn(y, pred))
        except Exception as err:
            raise ValueError(
                f"loss fails on (Y with shape {_shape(y)}, predictions with shape "
                f"{_shape(pred)}): {_first_line(err)}"
            ) from err
    grads = tape.gradient(loss, sources if sources is not None else style.trainable)
    missing = [n for n, g in zip(style.names, grads, strict=True) if g is None]
    if len(missing) == len(style.names):
        raise ValueError(no_gradient_message(style.names, style.kind))
    if missing:
        warnings.warn(
            f"no gradient for {', '.join(missing)}: the loss does not depend on "
            "these variables, so training leaves them as they are",
            stacklevel=3,
        )
    return pred


def _shape(t: Any) -> Any:
    shapes = [tuple(s.shape) for s in tf.nest.flatten(t)]
    return shapes[0] if len(shapes) == 1 else shapes


def _warn_broadcast(pred: Any, y: Any) -> None:
    """(n, 1) predictions against (n,) targets broadcast to (n, n) in a hand-written loss."""
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
        warnings.warn(
            f"predictions have shape {tuple(pred.shape)} but Y has {tuple(y.shape)}; they "
            f"broadcast to {tuple(both)} in the loss: reshape Y (e.g. Y[:, None]) or the "
            "predictions so they match",
            stacklevel=4,
        )


def discover_step(style: Style, x: Any, y: Any) -> None:
    """Trace the user's step once to find (and build) every variable it touches."""
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), (x, y))
    concrete = tf.function(style.user_step).get_concrete_function(*spec)
    found = list(concrete.variables)
    lr = [v for v in found if not v.trainable and v.name.split("/")[-1] == "learning_rate:0"]
    style.lr_variable = lr[0] if len(lr) == 1 else None
    state = [v for v in found if not any(v is r for r in lr)]
    if style.model is not None:
        style.weights = list(style.model.variables)
    known = {id(unwrap(v)) for v in style.weights}
    style.weights += [v for v in state if id(v) not in known]
    if not style.trainable:
        if style.model is not None:
            style.trainable = list(style.model.trainable_variables)
        else:
            style.trainable = [v for v in state if v.trainable]
        style.names = variable_names(style.trainable)


def make_steps(
    style: Style, loss_fn: Callable | None, optimizer: Any
) -> tuple[Callable, Callable | None]:
    """The compiled loop's train step and evaluation step for this style."""
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

        return train_step, eval_step

    trainable, names, model = style.trainable, style.names, style.model
    values = all_scalar(trainable)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            pred = forward(x, True)
            loss = scalar_loss(loss_fn(y, pred))
            if model is not None and model.losses:
                loss = loss + tf.cast(tf.add_n(model.losses), loss.dtype)
        grads = tape.gradient(loss, trainable)
        pairs = [(g, v) for g, v in zip(grads, trainable, strict=True) if g is not None]
        if not pairs:
            raise ValueError(no_gradient_message(names, style.kind))
        optimizer.apply_gradients(pairs)
        return tf.cast(loss, tf.float32), gradient_summaries(grads, values), pred

    return train_step, eval_step


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
