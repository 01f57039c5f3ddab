"""What training optimizes and reports: optimizer, loss and metrics from names or objects.

Owns the Trainer's `optimizer`, `learning_rate`, `loss` and `metrics`. Every name that
does not resolve is a one-line ValueError that lists the names that do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from tapemagic.variables import unwrap

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "adagrad")  # the names a panel offers
MOMENTUM = 0.9  # what "momentum" means as an optimizer name


def check_learning_rate(value: Any, name: str = "learning_rate", schedule_ok: bool = False) -> Any:
    """A finite number above 0 as a float, else a one-line ValueError saying why not. With
    `schedule_ok` (an optimizer being made) a Keras LearningRateSchedule passes as it is."""
    if schedule_ok and isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool | str | bytes):
        number = None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None:
        raise ValueError(
            f"{name} must be a number such as 0.01, got {type(value).__name__} {value!r}"
        )
    if math.isfinite(number) and number > 0:
        return number
    why = (
        "it is not finite"
        if not math.isfinite(number)
        else "0 never moves the weights"
        if number == 0
        else "a negative rate climbs the loss instead of descending it"
    )
    raise ValueError(
        f"{name} must be a finite number above 0, got {number:g} ({why}): use a small "
        "positive rate such as 0.01"
    )


def make_optimizer(spec: Any, learning_rate: float | None) -> keras.optimizers.Optimizer:
    """An optimizer from a name (sgd, momentum, adam, rmsprop, adagrad) or an object."""
    if learning_rate is not None:
        learning_rate = check_learning_rate(learning_rate, schedule_ok=True)
    if isinstance(spec, keras.optimizers.Optimizer):
        if learning_rate is not None:
            spec.learning_rate = learning_rate
        elif not isinstance(
            getattr(spec, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule
        ):  # the optimizer's own rate: the same rule
            check_learning_rate(float(spec.learning_rate.numpy()), "the optimizer's learning_rate")
        return spec
    if not isinstance(spec, str):
        raise ValueError(
            f"optimizer must be a name ({', '.join(OPTIMIZERS)}) or a keras.optimizers."
            f"Optimizer, got {type(spec).__name__}"
        )
    name = spec.lower()
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    if name == "momentum":
        return keras.optimizers.SGD(momentum=MOMENTUM, **kwargs)
    try:
        opt = keras.optimizers.get(name)
    except ValueError:
        opt = None
    if not isinstance(opt, keras.optimizers.Optimizer):
        raise ValueError(
            f"unknown optimizer {spec!r}: use one of {', '.join(OPTIMIZERS)}, or pass an "
            "optimizer object such as keras.optimizers.Adam(0.01)"
        )
    return type(opt)(**kwargs)


def optimizer_state(opt: keras.optimizers.Optimizer) -> list:
    """Its variables except the learning rate (a setting the user controls, not state)."""
    lr = getattr(opt, "_learning_rate", None)
    lr = unwrap(lr) if isinstance(lr, keras.Variable | tf.Variable) else None
    return [v for v in opt.variables if unwrap(v) is not lr]


def resolve_loss(spec: Any) -> Callable:
    """A callable (y_true, y_pred) -> scalar, from a callable or a Keras loss name."""
    if spec is None:
        raise ValueError(
            "loss is missing: pass loss=fn(y_true, y_pred) or a Keras loss name such as 'mse'"
        )
    if isinstance(spec, str):
        try:
            fn = keras.losses.get(spec)
        except ValueError:
            fn = None
        if fn is None:
            raise ValueError(
                f"unknown loss {spec!r}: use a Keras loss name ('mse', 'mae', "
                "'binary_crossentropy', ...) or pass a function fn(y_true, y_pred)"
            )
    elif not callable(spec):
        raise ValueError(f"loss must be callable or a Keras loss name, got {type(spec).__name__}")
    else:
        fn = spec
    if isinstance(fn, keras.losses.Loss):
        return fn  # Keras calls Loss objects as they are (its wrappers align shapes themselves)
    return KerasShapedLoss(fn)


class KerasShapedLoss:
    """A loss function called as Keras `fit` calls it (`compile` wraps every function in a
    `LossFunctionWrapper`): targets and predictions first brought to the same rank, so a
    `(n,)` Y against `(n, 1)` predictions is compared sample by sample, not as an `(n, n)`
    broadcast; non-float targets take the predictions' dtype (Keras converts both)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred)

    def __repr__(self) -> str:
        return f"KerasShapedLoss({self.fn!r})"


def same_rank(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Keras's `squeeze_or_expand_to_same_rank(y_true, y_pred)` leaf by leaf (same structure
    only), plus its conversion of integer or boolean targets to the predictions' float dtype."""
    try:
        tf.nest.assert_same_structure(y_true, y_pred)
    except (TypeError, ValueError):
        return y_true, y_pred
    leaves = zip(tf.nest.flatten(y_true), tf.nest.flatten(y_pred), strict=True)
    pairs = [_same_rank(t, p) for t, p in leaves]
    return (
        tf.nest.pack_sequence_as(y_true, [t for t, _ in pairs]),
        tf.nest.pack_sequence_as(y_pred, [p for _, p in pairs]),
    )


def _same_rank(t: Any, p: Any) -> tuple[Any, Any]:
    if not (tf.is_tensor(t) and tf.is_tensor(p)):
        return t, p
    if p.dtype.is_floating and not t.dtype.is_floating:
        t = tf.cast(t, p.dtype)
    rt, rp = t.shape.rank, p.shape.rank
    if rt is None or rp is None or rt == rp:
        return t, p
    # As Keras: a trailing 1 on the higher rank is dropped, except that a rank-1 tensor
    # against (n, 1) gains the axis instead; ranks further apart are left as they are.
    if rt == rp + 1 and t.shape[-1] == 1:
        return (t, p[..., None]) if rp == 1 else (tf.squeeze(t, -1), p)
    if rp == rt + 1 and p.shape[-1] == 1:
        return (t[..., None], p) if rt == 1 else (t, tf.squeeze(p, -1))
    return t, p


def scalar_loss(value: Any) -> tf.Tensor:
    """Losses that return one value per sample are averaged, as Keras does."""
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 0:
        value = tf.reduce_mean(value)
    return value


def _accuracy(y_shape: tuple | None, pred_shape: tuple | None) -> keras.metrics.Metric:
    """'accuracy' as Keras `fit` reads it: binary, sparse or categorical by the shapes."""
    if pred_shape is None or len(pred_shape) < 2 or pred_shape[-1] == 1:
        return keras.metrics.BinaryAccuracy(name="accuracy")
    if y_shape is not None and (len(y_shape) < len(pred_shape) or y_shape[-1] == 1):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.CategoricalAccuracy(name="accuracy")


def _one_metric(spec: Any, shapes: tuple) -> keras.metrics.Metric:
    if spec in ("accuracy", "acc"):
        return _accuracy(*shapes)
    if isinstance(spec, keras.metrics.Metric):
        try:
            return type(spec).from_config(spec.get_config())
        except Exception:  # custom metrics without a round-tripping config
            import copy

            return copy.deepcopy(spec)
    if isinstance(spec, str):
        try:
            metric = keras.metrics.get(spec)
        except ValueError:
            metric = None
        if isinstance(metric, keras.metrics.Metric):
            return metric
        if callable(metric):
            return keras.metrics.MeanMetricWrapper(metric, name=spec)
        raise ValueError(
            f"unknown metric {spec!r}: use a Keras metric name ('mae', 'mse', 'accuracy', ...), "
            "a keras.metrics.Metric or a function fn(y_true, y_pred)"
        )
    if callable(spec):
        return keras.metrics.MeanMetricWrapper(spec, name=getattr(spec, "__name__", "metric"))
    raise ValueError(f"metrics: cannot use {spec!r}; pass names, Metric objects or functions")


@dataclass(frozen=True)
class Metrics:
    """The metrics twice over (training and validation keep separate state), and names."""

    train: list[keras.metrics.Metric] = field(default_factory=list)
    val: list[keras.metrics.Metric] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def resolve_metrics(
    specs: Sequence[Any] | None, device: str | None, y_sample: Any = None, pred_sample: Any = None
) -> Metrics:
    """Fresh Metric objects for training and for validation, and their names.

    The shapes of a sample of targets and predictions pick which accuracy 'accuracy'
    means. `device=None`: where the surrounding scope puts them (a strategy's scope).
    """
    if specs is None:
        return Metrics()
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        specs = [specs]
    with tf.device(device) if device else contextlib.nullcontext():
        shapes = (_single_shape(y_sample), _single_shape(pred_sample))
        train = [_one_metric(s, shapes) for s in specs]
        val = [_one_metric(s, shapes) for s in specs]
    names = [s if isinstance(s, str) else m.name for s, m in zip(specs, train, strict=True)]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics: names repeat ({', '.join(names)}); give each a distinct name")
    return Metrics(train, val, names)


def _single_shape(t: Any) -> tuple | None:
    """The shape of a single tensor (None for structures: no accuracy guessing then)."""
    leaves = tf.nest.flatten(t) if t is not None else []
    return tuple(leaves[0].shape) if len(leaves) == 1 else None
