"""`Trainer`: the headless engine behind the training panel (issue 3).

It trains the seed's three ways (raw Variables and a predict function, a Keras model, a
user-written step), runs compiled calls of about `CALL_SECONDS` each, and between calls
applies the controls a panel sets from another thread: stop, pause, one more epoch, a
new learning rate. History, checkpoints and fault handling keep one invariant: the
weights always match the recorded epochs (plus, for big epochs, a known partial one).
"""

from __future__ import annotations

import random
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic.checkpoints import CheckpointStore
from tapemagic.history import EpochRecord, History
from tapemagic.training_callbacks import CallbackModel, Callbacks
from tapemagic.training_data import ArrayData, check_batch_size, prepare, split
from tapemagic.training_faults import Fault, TrainingFault, fault_message
from tapemagic.training_loop import ChunkResult, CompiledLoop
from tapemagic.training_setup import (
    make_optimizer,
    optimizer_state,
    raw,
    resolve_device,
    resolve_loss,
    resolve_metrics,
    scalar_names,
)
from tapemagic.training_style import (
    build_model,
    discover_step,
    dtype_of,
    make_steps,
    probe,
    resolve,
)

CALL_SECONDS = 0.1  # target length of one compiled call: how fast the controls act
MAX_RECORDED_PARAMS = 20  # models this small get their parameter values in the history
_EMPTY = {"loss": 0.0, "gn": 0.0, "steps": 0.0, "seconds": 0.0}

__all__ = ["Fault", "Trainer", "TrainingFault"]


class Trainer:
    """Gradient descent you can watch and steer: `run`, `step`, `pause`, `reset`...

    Styles: `Trainer(params=[a, b], predict=lambda X: a * X + b, loss=..., data=(X, Y))`,
    `Trainer(model=keras_model, loss=..., data=...)`, or `Trainer(step=train_step,
    data=...)` where `train_step(x, y)` updates the weights itself and returns the loss.
    """

    def __init__(
        self,
        *,
        model: Any = None,
        params: Any = None,
        predict: Callable | None = None,
        step: Callable | None = None,
        loss: Any = None,
        data: Any = None,
        validation_data: Any = None,
        validation_split: float | None = None,
        optimizer: Any = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        metrics: Sequence[Any] | None = None,
        device: str = "auto",
        callbacks: Sequence[Any] | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        on_nonfinite: str = "restore",
    ):
        if on_nonfinite not in ("restore", "keep"):
            raise ValueError(f"on_nonfinite must be 'restore' or 'keep', got {on_nonfinite!r}")
        self.device = resolve_device(device)
        style = self._style = resolve(model, params, predict, step)
        data = prepare(data, dtype_of(style))
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data= or validation_split=, not both")
        val = None
        if validation_split is not None:
            data, val = split(data, validation_split)
        elif validation_data is not None:
            val = prepare(validation_data, dtype_of(style), "validation_data")
        self._data = data.to_device(self.device) if isinstance(data, ArrayData) else data
        self._val = val.to_device(self.device) if isinstance(val, ArrayData) else val
        self._batch_size = check_batch_size(batch_size, data)
        x1, y1 = data.take(0, min(2, data.n)).x, data.take(0, min(2, data.n)).y
        if not isinstance(data, ArrayData):
            x1, y1 = data.first()
        if model is not None and loss is None and style.kind == "model":
            loss = getattr(model, "loss", None)  # a compiled model brings its loss
        needs_loss = style.kind != "step" or val is not None or metrics
        if style.kind == "step" and needs_loss and style.forward is None:
            raise ValueError(
                "validation and metrics with step= need predictions: also pass model= or "
                "params= with predict=, and loss="
            )
        self._loss = resolve_loss(loss) if needs_loss else None
        with tf.device(self.device):
            build_model(style, x1)
            if style.kind == "step":
                discover_step(style, x1, y1)
                self._optimizer = optimizer
                if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
                    raise ValueError(
                        "with step=, optimizer= may only be the optimizer object your step uses"
                    )
            else:
                if optimizer is None:
                    optimizer = getattr(model, "optimizer", None) or "sgd"
                self._optimizer = make_optimizer(optimizer, learning_rate)
                self._optimizer.build(style.trainable)
                probe(style, self._loss, x1, y1, user_loss=not isinstance(loss, str))
            m_train, m_val, names = resolve_metrics(metrics, self.device)
        if style.kind == "step" and learning_rate is not None:
            self._set_lr(float(learning_rate))
        self._metrics = (m_train, m_val if val is not None else [])
        self._metric_names = names + ([f"val_{n}" for n in names] if val is not None else [])
        n_scalars = sum(int(np.prod(v.shape)) for v in style.trainable)
        small = n_scalars <= MAX_RECORDED_PARAMS
        self._record_vars = list(style.trainable) if small else []
        self._param_names = scalar_names(style.trainable, style.names) if small else []
        self.history = History(self._metric_names, self._param_names)
        self.seed = int(seed) if seed is not None else random.randrange(2**31)
        self.shuffle = bool(shuffle)
        self._on_nonfinite = on_nonfinite
        self._initial = [raw(v).numpy() for v in self._state()]
        self._cv = threading.Condition()
        self._running = self._paused = self._stop = False
        self._step_until: int | None = None
        self._lr_pending: float | None = None
        self._batch_size_next = self._batch_size
        self._listeners: list[Callable[[EpochRecord], Any]] = []
        self._epoch, self._batch, self._partial = 0, 0, dict(_EMPTY)
        self._target = 0
        self._per_step: float | None = None
        self._last_steps = self._last_epoch_steps = 1
        self._engine: CompiledLoop | None = None
        self._last_fault: tuple | None = None
        self.error: BaseException | None = None
        self.fault: Fault | None = None
        self.messages: deque[str] = deque(maxlen=100)
        proxy = CallbackModel(lambda: self._optimizer, style.weights, style.model)
        self._callbacks = Callbacks(callbacks, proxy)
        self._ckpt_every = checkpoint_every
        if checkpoint_every is not None and (
            not isinstance(checkpoint_every, int) or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        self._store = CheckpointStore(checkpoint_dir) if checkpoint_dir else None
        self._saved_at: tuple[int, int] | None = None
        if self._store:
            self._store.bind(self._checkpoint_variables())
            self._resume(learning_rate)

    # -- state -----------------------------------------------------------------------

    def _opt_state(self) -> list:
        return optimizer_state(self._optimizer) if self._style.kind != "step" else []

    def _metric_vars(self) -> list:
        return [v for m in self._metrics[0] + self._metrics[1] for v in m.variables]

    def _state(self) -> list:
        """Everything a rollback, a reset or a checkpoint must restore."""
        return list(self._style.weights) + self._opt_state() + self._metric_vars()

    def _checkpoint_variables(self) -> dict[str, Any]:
        out = {f"w{i}": v for i, v in enumerate(self._style.weights)}
        out.update({f"o{i}": v for i, v in enumerate(self._opt_state())})
        out.update({f"m{i}": v for i, v in enumerate(self._metric_vars())})
        return out

    def _loop(self) -> CompiledLoop:
        if self._engine is None:
            train_step, eval_step = make_steps(self._style, self._loss, self._optimizer)
            n_grads = len(self._style.trainable) if self._style.kind != "step" else 0
            self._engine = CompiledLoop(
                train_step=train_step,
                eval_step=eval_step,
                data=self._data,
                val=self._val,
                batch_size=self._batch_size,
                shuffle=self.shuffle,
                seed=self.seed,
                state=self._state(),
                record_vars=self._record_vars,
                train_metrics=self._metrics[0],
                val_metrics=self._metrics[1],
                metric_names=self._metric_names,
                n_grad_vars=n_grads,
                collect_batches=self._callbacks.per_batch,
                device=self.device,
            )
        return self._engine

    # -- settings --------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Completed epochs (the next epoch's index)."""
        return self._epoch

    @property
    def target_epoch(self) -> int:
        """Where the current (or last) run stops: for progress bars."""
        return self._target

    @property
    def samples_per_epoch(self) -> int | None:
        """Training samples per epoch (None for a Dataset)."""
        return self._data.n if isinstance(self._data, ArrayData) else None

    @property
    def variables(self) -> list:
        """The trained variables."""
        return list(self._style.trainable)

    def param_values(self) -> dict[str, float]:
        """Current values of a small model's parameters by name ({} for big models)."""
        flat = [np.ravel(raw(v).numpy()) for v in self._record_vars]
        values = np.concatenate(flat) if flat else []
        return {n: float(x) for n, x in zip(self._param_names, values, strict=True)}

    @property
    def optimizer(self) -> Any:
        """The optimizer; set a name or object between runs (state starts fresh)."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, spec: Any) -> None:
        self._require_idle("change the optimizer")
        if self._style.kind == "step":
            raise ValueError("a step= trainer uses the optimizer inside its step; change it there")
        lr = self.learning_rate if isinstance(spec, str) else None
        with tf.device(self.device):
            opt = make_optimizer(spec, lr)
            opt.build(self._style.trainable)
        n_weights = len(self._style.weights)
        metric_init = self._initial[n_weights + len(self._opt_state()) :]
        self._optimizer = opt
        self._initial = (
            self._initial[:n_weights] + [raw(v).numpy() for v in self._opt_state()] + metric_init
        )
        self._engine, self._last_fault = None, None
        if self._store:
            self._store.bind(self._checkpoint_variables())

    @property
    def batch_size(self) -> int | None:
        """Samples per step (None: all); a new value applies from the next epoch start."""
        return self._batch_size_next

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._require_idle("change the batch size")
        self._batch_size_next = check_batch_size(value, self._data)

    @property
    def learning_rate(self) -> float | None:
        """Settable at any time, even mid-run: it applies from the next compiled call."""
        with self._cv:
            if self._lr_pending is not None:
                return self._lr_pending
        return self._current_lr()

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        value = float(value)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"learning_rate must be a positive number, got {value}")
        opt = self._optimizer
        sched = keras.optimizers.schedules.LearningRateSchedule
        if opt is not None and isinstance(getattr(opt, "_learning_rate", None), sched):
            raise TypeError(
                "this optimizer's learning rate is a schedule, which cannot be set; pass a "
                "fixed learning_rate (or an optimizer name) to change it during training"
            )
        if opt is None and self._style.lr_variable is None:
            raise ValueError(
                "this step= trainer cannot find your optimizer's learning rate; pass "
                "optimizer=<the optimizer your step uses>"
            )
        with self._cv:
            self._lr_pending = value
            if not self._running:
                self._apply_pending_lr()

    def _current_lr(self) -> float | None:
        if self._optimizer is not None:
            return float(keras.ops.convert_to_numpy(self._optimizer.learning_rate))
        if self._style.lr_variable is not None:
            return float(self._style.lr_variable.numpy())
        return None

    def _set_lr(self, value: float) -> None:
        if self._optimizer is not None:
            self._optimizer.learning_rate = value
        elif self._style.lr_variable is not None:
            self._style.lr_variable.assign(value)

    def _apply_pending_lr(self) -> None:  # with self._cv held
        if self._lr_pending is not None:
            self._set_lr(self._lr_pending)
            self._lr_pending = None

    # -- controls (thread-safe) ------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while `run` (or `step`) is training, in whatever thread."""
        return self._running

    @property
    def paused(self) -> bool:
        """True while a run waits between steps for `resume()` (or `step()`)."""
        return self._paused and self._running

    def request_stop(self) -> None:
        """End the run between steps (within about CALL_SECONDS); also ends a pause."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def pause(self) -> None:
        """Hold the run between steps until `resume()`; no CPU is used while paused."""
        with self._cv:
            self._paused = True
            self._cv.notify_all()

    def resume(self) -> None:
        """Continue a paused run."""
        with self._cv:
            self._paused = False
            self._step_until = None
            self._cv.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress; False if `timeout` seconds passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._running, timeout)

    def add_listener(self, fn: Callable[[EpochRecord], Any]) -> Callable[[EpochRecord], Any]:
        """Call `fn(record)` after each epoch, in the training thread (e.g. to redraw)."""
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn: Callable[[EpochRecord], Any]) -> None:
        """Stop calling `fn`."""
        self._listeners.remove(fn)

    def _require_idle(self, what: str) -> None:
        if self._running:
            raise RuntimeError(
                f"cannot {what} while training runs; request_stop() and wait() first"
            )

    def _say(self, text: str) -> None:
        self.messages.append(text)

    # -- running ---------------------------------------------------------------------

    def step(self) -> History:
        """One epoch. While a run is paused, let it do one more epoch and pause again."""
        with self._cv:
            if self._running:
                self._paused = True
                self._step_until = self._epoch + 1
                self._cv.notify_all()
                return self.history
        return self.run(1)

    def run(self, epochs: int = 1) -> History:
        """Train `epochs` more epochs (blocking); the history of all epochs so far."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        with self._cv:
            if self._running:
                raise RuntimeError(
                    "this trainer is already running (in another thread); request_stop() "
                    "and wait() first"
                )
            self._running, self._stop, self._paused, self._step_until = True, False, False, None
            self._target = self._epoch + epochs
            self._apply_pending_lr()
        self.error = self.fault = None
        self._last_fault = None
        try:
            self._train()
        except BaseException as err:
            self.error = err
            self._say(f"stopped by an error at epoch {self._epoch}: {type(err).__name__}: {err}")
            raise
        finally:
            self._finish()
        return self.history

    def _train(self) -> None:
        cbs = self._callbacks
        cbs.model.stop_training = False
        if cbs:
            cbs.set_params({"epochs": self._target, "steps": None, "verbose": 0})
            cbs.call("on_train_begin", {})
        while self._epoch < self._target:
            if not self._wait_turn():
                self._say(f"stopped at epoch {self._epoch}")
                break
            if self._batch == 0 and self._batch_size_next != self._batch_size:
                self._batch_size, self._engine = self._batch_size_next, None
            engine = self._loop()
            plan = self._plan(engine)
            if self._batch == 0 and cbs:
                cbs.call("on_epoch_begin", self._epoch, {})
            lr = self._current_lr()
            partial_before = dict(self._partial)
            try:
                res = engine(*plan)
            except BaseException:
                engine.restore_snapshot()  # nothing of this call is recorded
                raise
            self._commit(res, plan, lr)
            if not res.ok:
                self._handle_fault(res, plan, partial_before, lr)
                break
            if cbs.stop_requested:
                self._say(f"stopped by a callback after epoch {self._epoch - 1}")
                break
        if cbs:
            cbs.call("on_train_end", {})

    def _wait_turn(self) -> bool:
        """Between calls: apply the new learning rate, honour pause and stop."""
        with self._cv:
            while not self._stop:
                stepping = self._step_until is not None and self._epoch < self._step_until
                if not self._paused or stepping:
                    self._apply_pending_lr()
                    return True
                self._step_until = None
                self._cv.wait()
            return False

    def _plan(self, engine: CompiledLoop) -> tuple[int, int, int, int | None]:
        """(epoch0, n_epochs, b0, b1) for the next call, sized to about CALL_SECONDS."""
        nb, e, b = engine.steps_per_epoch, self._epoch, self._batch
        limit = self._target if self._step_until is None else min(self._target, self._step_until)
        if self._ckpt_every:
            limit = min(limit, (e // self._ckpt_every + 1) * self._ckpt_every)
        remaining = max(limit - e, 1)
        per = self._per_step
        budget = 1 if per is None else max(1, min(int(CALL_SECONDS / per), 4 * self._last_steps))
        if nb is None:  # a Dataset: whole epochs, sized by the last epoch's steps
            k = 1 if per is None else max(1, budget // max(self._last_epoch_steps, 1))
            return e, 1 if self._callbacks.per_epoch else min(k, remaining), 0, None
        if b > 0 or budget < nb:
            return e, 1, b, min(nb, b + budget)
        k = 1 if self._callbacks.per_epoch else min(budget // nb, remaining)
        return e, k, 0, nb

    def _commit(self, res: ChunkResult, plan: tuple, lr: float | None) -> None:
        """Record the epochs this call completed and where the next call starts."""
        epoch0, _, b0, _ = plan
        steps = res.steps.astype(np.float64)
        seconds = steps * (res.seconds / max(steps.sum(), 1.0))
        loss, gn = res.loss_sum.copy(), None if res.gn_sum is None else res.gn_sum.copy()
        if b0 > 0:  # the call continued a partial epoch
            p = self._partial
            loss[0] += p["loss"]
            steps[0] += p["steps"]
            seconds[0] += p["seconds"]
            if gn is not None:
                gn[0] += p["gn"]
        n = int(res.complete.sum())
        first = self._epoch
        self.history.extend(
            range(first, first + n),
            loss[:n] / steps[:n],
            val_loss=None if res.val_loss is None else res.val_loss[:n],
            learning_rate=lr,
            grad_norm=None if gn is None else gn[:n] / steps[:n],
            seconds=seconds[:n],
            metrics={k: v[:n] for k, v in res.metrics.items()},
            params=None
            if res.params is None
            else {name: res.params[:n, j] for j, name in enumerate(self._param_names)},
        )
        self._epoch = first + n
        if res.ok and n < res.touched:
            self._batch = res.end_batch
            self._partial = {
                "loss": float(loss[-1]),
                "gn": 0.0 if gn is None else float(gn[-1]),
                "steps": float(steps[-1]),
                "seconds": float(seconds[-1]),
            }
        elif res.ok or n:
            self._batch, self._partial = 0, dict(_EMPTY)
        if not res.traced and res.steps.sum() > 0:
            s = res.seconds / float(res.steps.sum())
            self._per_step = s if self._per_step is None else 0.5 * (self._per_step + s)
        self._last_steps = int(res.steps.sum()) or 1
        self._last_epoch_steps = int(res.steps[0]) if len(res.steps) else 1
        self._after_commit(res, first, n, b0)

    def _after_commit(self, res: ChunkResult, first: int, n: int, b0: int) -> None:
        """Listeners, callbacks and periodic checkpoints, in the training thread."""
        cbs = self._callbacks
        if cbs.per_batch and res.batch_losses is not None:
            cbs.batches(b0, res.batch_losses)
        if self._listeners or cbs:
            for i in range(first, first + n):
                record = self.history[i]
                for fn in list(self._listeners):
                    fn(record)
                cbs.call("on_epoch_end", i, record.logs())
        every = self._ckpt_every
        if self._store and every and n and (first // every) != (self._epoch // every):
            self.save_checkpoint()

    # -- faults ----------------------------------------------------------------------

    def _handle_fault(self, res: ChunkResult, plan: tuple, partial_before: dict, lr) -> None:
        epoch = plan[0] + res.touched - 1
        batch = res.end_batch - 1
        bad = []
        if res.last_sq is not None:
            bad = [
                n for n, s in zip(self._style.names, res.last_sq, strict=True) if not np.isfinite(s)
            ]
        loss = float(res.loss_sum[-1]) if len(res.loss_sum) else float("nan")
        self._last_fault = (plan, res, partial_before)
        restored = None
        if self._on_nonfinite == "restore":
            restored = self._restore_fault()
        else:  # keep the weights for inspection; the record stays at the last good epoch
            self._batch = plan[2] if epoch == plan[0] else 0
            self._partial = dict(partial_before) if epoch == plan[0] else dict(_EMPTY)
        text = fault_message(epoch, batch, loss, bad, lr, restored, self._style.kind)
        self.fault = Fault(epoch, batch, loss, bad, text)
        self._say(text)
        warnings.warn(text, TrainingFault, stacklevel=4)

    def _restore_fault(self) -> str:
        """Restore the call's snapshot and replay up to the step before the fault."""
        (e0, _, b0, _), res, partial_before = self._last_fault
        self._last_fault = None
        engine = self._loop()
        engine.restore_snapshot()
        off, bad = res.touched - 1, res.end_batch - 1
        nb = engine.steps_per_epoch
        if off == 0 and bad <= b0:
            self._epoch, self._batch, self._partial = e0, b0, dict(partial_before)
        elif bad == 0:
            engine(e0, off, b0, nb)
            self._epoch, self._batch, self._partial = e0 + off, 0, dict(_EMPTY)
        else:
            rep = engine(e0, off + 1, b0, bad)
            extra = partial_before if off == 0 else _EMPTY
            gn = 0.0 if rep.gn_sum is None else float(rep.gn_sum[-1])
            self._epoch, self._batch = e0 + off, bad
            self._partial = {
                "loss": float(rep.loss_sum[-1]) + extra["loss"],
                "gn": gn + extra["gn"],
                "steps": float(rep.steps[-1]) + extra["steps"],
                "seconds": extra["seconds"],
            }
        where = f"epoch {self._epoch}, batch {self._batch}"
        finite = all(np.isfinite(raw(v).numpy()).all() for v in self._style.trainable)
        return where if finite else where + " (but some weights are non-finite there too)"

    def restore_last_finite(self) -> bool:
        """After a fault with on_nonfinite='keep': go back to the last finite step."""
        self._require_idle("restore")
        if self._last_fault is None:
            return False
        where = self._restore_fault()
        self._say(f"restored the last finite weights: {where}")
        return True

    # -- reset and checkpoints -------------------------------------------------------

    def reset(self) -> None:
        """Weights and optimizer state as at construction; the history is cleared."""
        self._require_idle("reset")
        for v, value in zip(self._state(), self._initial, strict=True):
            raw(v).assign(value)
        self.history.clear()
        self._epoch, self._batch, self._partial = 0, 0, dict(_EMPTY)
        self.error = self.fault = self._last_fault = None
        self._callbacks.model.stop_training = False
        self._say("reset to the initial weights")

    def save_checkpoint(self) -> str | None:
        """Save weights, optimizer state and history now (needs checkpoint_dir)."""
        if not self._store:
            return None
        meta = {
            "epoch": self._epoch,
            "batch": self._batch,
            "partial": self._partial,
            "seed": self.seed,
            "batch_size": self._batch_size,
            "optimizer": type(self._optimizer).__name__ if self._optimizer else None,
            "learning_rate": self._current_lr(),
            "history": self.history.to_json(),
        }
        path = self._store.save(meta)
        self._saved_at = (self._epoch, self._batch)
        return path

    def _resume(self, learning_rate: float | None) -> None:
        meta = self._store.read_meta()
        if meta is None:
            return
        saved_opt = meta.get("optimizer")
        same_opt = saved_opt == (type(self._optimizer).__name__ if self._optimizer else None)
        meta = self._store.restore(skip=() if same_opt else ("o",))
        self.history = History.from_json(meta["history"])
        self._epoch, self._batch = int(meta["epoch"]), int(meta["batch"])
        self._partial = {k: float(v) for k, v in meta["partial"].items()}
        self.seed = int(meta["seed"])
        if self._batch and meta.get("batch_size") != self._batch_size:
            self._batch_size = self._batch_size_next = meta.get("batch_size")
        if learning_rate is None and same_opt and meta.get("learning_rate"):
            self._set_lr(float(meta["learning_rate"]))
        self._saved_at = (self._epoch, self._batch)
        note = "" if same_opt else f" (optimizer state not restored: it was {saved_opt})"
        self._say(f"resumed from {self._store.latest} at epoch {self._epoch}{note}")

    def _finish(self) -> None:
        try:
            if self._store and self._saved_at != (self._epoch, self._batch):
                self.save_checkpoint()
        finally:
            with self._cv:
                self._running = self._paused = False
                self._step_until = None
                self._cv.notify_all()

    def __repr__(self) -> str:
        state = "running" if self._running else "idle"
        opt = type(self._optimizer).__name__ if self._optimizer else "own step"
        return (
            f"Trainer({self._style.kind}, {opt}, lr={self.learning_rate}, epoch {self._epoch}, "
            f"{state}, device {self.device})"
        )
