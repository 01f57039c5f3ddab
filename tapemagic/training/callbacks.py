"""Keras-compatible callbacks for a trainer that is not `model.fit`.

Keras callbacks reach the model through `self.model`: EarlyStopping and TerminateOnNaN
set `self.model.stop_training`, ReduceLROnPlateau reads and sets
`self.model.optimizer.learning_rate`, EarlyStopping(restore_best_weights=True) calls
`get_weights`/`set_weights`. With raw Variables there is no model, and an uncompiled
Keras model has no optimizer, so callbacks get a `CallbackModel` that has all of these
and forwards anything else to the Keras model when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


class CallbackModel:
    """What `self.model` is inside a callback: stop flag, optimizer, weights."""

    def __init__(self, get_optimizer: Callable[[], Any], variables: Sequence[Any], model=None):
        self.stop_training = False
        self._get_optimizer = get_optimizer
        self._variables = list(variables)
        self._model = model

    @property
    def optimizer(self) -> Any:
        """The trainer's current optimizer (setting its learning_rate applies next call)."""
        return self._get_optimizer()

    @property
    def weights(self) -> list:
        return list(self._variables)

    @property
    def trainable_variables(self) -> list:
        return [v for v in self._variables if getattr(v, "trainable", True)]

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(v.numpy()) for v in self._variables]

    def set_weights(self, weights: Sequence[Any]) -> None:
        for v, w in zip(self._variables, weights, strict=True):
            v.assign(w)

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("_model")
        if model is None:
            raise AttributeError(
                f"callbacks see a CallbackModel here (raw Variables, no Keras model), which "
                f"has no {name!r}"
            )
        return getattr(model, name)


def _overrides(cb: Any, hook: str) -> bool:
    """True when the callback does something in `hook` (Keras marks its no-ops)."""
    method = getattr(type(cb), hook, None)
    return method is not None and not getattr(method, "_is_default", False)


class Callbacks:
    """Calls the hooks each callback has; Keras's base class provides no-op defaults."""

    def __init__(self, callbacks: Sequence[Any] | None, model: CallbackModel):
        if callbacks is not None and not isinstance(callbacks, list | tuple):
            callbacks = [callbacks]
        self.items = list(callbacks or [])
        for cb in self.items:
            if not any(hasattr(cb, h) for h in ("on_epoch_end", "on_train_begin", *BATCH_HOOKS)):
                raise ValueError(
                    f"callbacks: {cb!r} has no on_epoch_end / on_train_begin ...; pass "
                    "keras.callbacks.Callback objects or objects with those methods"
                )
        self.model = model
        for cb in self.items:
            if hasattr(cb, "set_model"):
                cb.set_model(model)
        # Any per-epoch hook needs one epoch per compiled call, so it sees every epoch
        # and what it changes (learning rate, stop) applies to the very next one.
        self.per_epoch = bool(self.items)
        self.per_batch = any(_overrides(cb, h) for cb in self.items for h in BATCH_HOOKS)

    def __bool__(self) -> bool:
        return bool(self.items)

    def set_params(self, params: dict) -> None:
        for cb in self.items:
            if hasattr(cb, "set_params"):
                cb.set_params(params)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.items:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def batches(
        self,
        first: int,
        rows: np.ndarray,
        metric_names: Sequence[str],
        carried_loss: float = 0.0,
        carried_samples: float = 0.0,
    ) -> None:
        """Replay batch hooks after the compiled call, one per step, with the logs `fit`
        gives: the epoch's running loss (sample-weighted mean so far, counting the
        `carried` sums of steps done in earlier calls) and the metrics' running results.

        `rows`: per step, its loss, its batch size, then each metric's result after it."""
        # in float32, step by step, as Keras's loss tracker adds them up
        total, count = np.float32(carried_loss), np.float32(carried_samples)
        for i, row in enumerate(np.asarray(rows, dtype=np.float32)):
            total, count = total + row[0] * row[1], count + row[1]
            logs = {"loss": float(total / count) if count else float(row[0])}
            logs.update(zip(metric_names, row[2:].tolist(), strict=True))
            self.call("on_train_batch_begin", first + i, {})
            self.call("on_train_batch_end", first + i, logs)

    @property
    def stop_requested(self) -> bool:
        return bool(self.model.stop_training)
