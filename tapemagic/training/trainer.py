"""`Trainer`: the headless engine behind the training panel; its public API and bookkeeping.

It trains the seed's three ways (raw Variables and a predict function, a Keras model, a
user-written step) in compiled calls of about 0.1 s each, and between calls applies what
a panel sets from another thread: stop, pause, one more epoch, a new learning rate.
History, checkpoints and fault handling keep one invariant (`pacing.Position`): the
weights always match the recorded epochs, plus a known part of the next one. With
`strategy=` the same loop runs each step on the strategy's replicas
(`distributed/replicas.py`); across workers the chief's decisions reach every worker
before each call (`distributed/lockstep.py`). Which module owns which argument: the
package docstring (`tapemagic/training/__init__.py`).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic import devices
from tapemagic.training import ownership
from tapemagic.training.callbacks import CallbackModel, Callbacks
from tapemagic.training.checkpoints import CheckpointStore, check_arguments
from tapemagic.training.controls import Controls
from tapemagic.training.data import ArrayData, check_batch_size
from tapemagic.training.distributed.lockstep import CALL, CLOSE, END, RESET, Lockstep, Order
from tapemagic.training.distributed.replicas import Replicas
from tapemagic.training.faults import (
    Fault,
    FaultedCall,
    TrainingFault,
    check_on_nonfinite,
    fault_message,
    locate_fault,
    replay_to_fault,
)
from tapemagic.training.health import Finding, HealthThresholds
from tapemagic.training.health_watch import TrainerHealth
from tapemagic.training.history import EpochRecord, History
from tapemagic.training.loop import CallResult, CompiledLoop, snapshot_variables, step_error
from tapemagic.training.objectives import check_learning_rate, make_optimizer, optimizer_state
from tapemagic.training.pacing import (
    CallPlan,
    Pacer,
    PartialEpoch,
    Position,
    check_epochs,
    epoch_columns,
)
from tapemagic.training.parts import build_parts, make_loop
from tapemagic.training.subject import resolve, scalar_names
from tapemagic.training.trajectory import Trajectory, flat_weights
from tapemagic.training.user_warnings import warn_user
from tapemagic.variables import unwrap

MAX_RECORDED_PARAMS = 20  # models this small get their parameter values in the history

__all__ = ["Fault", "Trainer", "TrainingFault"]


class Trainer:
    """Gradient descent you can watch and steer: `run`, `step`, `pause`, `reset`...

    What to train, one of the seed's three styles:
    `params=[a, b]` (or `{"a": a, "b": b}`) with `predict=lambda X: a * X + b`;
    `model=keras_model`; or `step=train_step`, a function (x, y) -> loss that takes its
    own tape and updates the weights (pass `model=`/`predict=` too for validation).

    `loss`: a function (y_true, y_pred) or a Keras loss name, called as Keras `fit` calls
    it (a `(n,)` Y against `(n, 1)` predictions is brought to the same rank first); the
    epoch loss is `fit`'s (the batches' losses weighted by their sizes), and callbacks get
    the logs `fit` gives them. `data`: (X, Y) as arrays,
    lists or tensors, or a `tf.data.Dataset` of (x, y) batches. `validation_data` or
    `validation_split` (the last fraction, as in Keras). `optimizer`: sgd, momentum,
    adam, rmsprop, adagrad or a Keras optimizer. `batch_size=None` trains on all the data
    each step, as the seed does. `shuffle` and `seed` make batch order reproducible.
    `device`: 'auto', 'CPU', 'GPU', '/GPU:1'. `callbacks`: Keras callbacks (they see a
    model with `stop_training` and `optimizer`; with any callback each compiled call
    runs one epoch, so what they change applies from the very next epoch).
    `checkpoint_dir`: save there when a run ends and every `checkpoint_every` epochs; a
    new Trainer on the same directory resumes (`resume=True`), refusing a damaged one;
    `resume='latest_valid'` resumes from its newest valid checkpoint, `resume=False`
    starts at epoch 0 (nothing there is deleted). One trainer writes a directory at a
    time: a newer one here takes it from an idle one; `close()` lets it go.
    `on_nonfinite`: 'restore' (go back to the last finite step when a loss or gradient
    turns NaN/Inf) or 'keep' (leave the weights for inspection; `restore_last_finite()`
    later).

    `strategy`: a `tf.distribute` strategy (MirroredStrategy, MultiWorkerMirroredStrategy)
    whose scope the model or Variables were made in; each batch is split across its
    replicas and the losses and history are those of one device. Whether the loss sums
    or averages over samples is probed; `loss_reduction='sum'|'mean'` says it instead.
    With several workers, run the same program on each: the chief leads (panel,
    controls, checkpoints), the others follow (`follow()` between runs).

    `record_trajectory`: keep the weights after each epoch, thinned, in `trajectory` (for
    the loss landscape); None records models of up to 2 million weights.

    `health`: record each layer's gradient norm, update ratio and dead ReLU units per epoch
    (`history.gradients`) and report problems in words (`findings`, also in `messages`);
    True, False (the fastest runs: nothing recorded) or a `HealthThresholds`.
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
        resume: bool | str = True,
        on_nonfinite: str = "restore",
        strategy: Any = None,
        loss_reduction: str | None = None,
        record_trajectory: bool | None = None,
        health: bool | HealthThresholds = True,
    ):
        check_on_nonfinite(on_nonfinite)
        checkpoint_dir = check_arguments(checkpoint_dir, checkpoint_every, resume)
        self._controls = Controls()
        spec = resolve(model, params, predict, step)
        self._replicas = Replicas(strategy, loss_reduction) if strategy is not None else None
        if self._replicas:
            self._replicas.check_style(spec.kind, device)
            self.device = self._replicas.host
        else:
            self.device = devices.resolve(device)
        parts = build_parts(
            spec,
            self.device,
            loss=loss,
            data=data,
            validation_data=validation_data,
            validation_split=validation_split,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=learning_rate,
            metrics=metrics,
            replicas=self._replicas,
        )
        # An older trainer's run on these variables stops before this one reads its
        # starting weights or resumes a checkpoint; `claim` below supersedes it.
        ownership.stop_owners(parts.style.weights, self)
        self._parts = parts  # its optimizer and batch_size change between runs
        self._style = parts.style  # what is trained: fixed for the trainer's life
        self._batch_size_next = parts.batch_size
        if self._style.kind == "step" and learning_rate is not None:
            self.learning_rate = learning_rate
        style = self._style
        small = sum(int(np.prod(v.shape)) for v in style.trainable) <= MAX_RECORDED_PARAMS
        self._record_vars = list(style.trainable) if small else []
        self._param_names = scalar_names(style.trainable, style.names) if small else []
        self.history = History(self._parts.metric_names, self._param_names)
        self.seed = int(seed) if seed is not None else random.randrange(2**31)
        self.shuffle = bool(shuffle)
        self._on_nonfinite = on_nonfinite
        self._initial = [unwrap(v).numpy() for v in self._state()]
        self._snapshot = self._make_snapshot()
        self._listeners: list[Callable[[EpochRecord], Any]] = []
        self._pos, self._pacer, self._target = Position(), Pacer(), 0
        self._engine: CompiledLoop | None = None
        self._loop_wrap: Callable[[CompiledLoop], Any] | None = None
        self._last_fault: FaultedCall | None = None
        self.error: BaseException | None = None
        self.fault: Fault | None = None
        self.messages: deque[str] = deque(maxlen=100)
        self._health = TrainerHealth.make(health, style, small, self._replicas is not None)
        if self._health:
            self.history.gradients = self._health.new_table()
            for finding in self._health.first_step(parts.loss, parts.data):
                self._say(finding.text)
        proxy = CallbackModel(lambda: self._parts.optimizer, style.weights, style.model)
        self._callbacks = Callbacks(callbacks, proxy)
        role = self._replicas.role if self._replicas else None
        self._lockstep = Lockstep(strategy, role.chief) if role and role.workers > 1 else None
        self._closed = False  # a worker's follow() ends when the chief closes
        self._ckpt_every = checkpoint_every
        self._store: CheckpointStore | None = None
        self._saved_at: tuple | None = None  # what the last save recorded (_save_key)
        if checkpoint_dir is not None:
            controls = self._controls  # not self: the store must not keep the trainer alive
            writer = role is None or role.chief
            store = CheckpointStore(checkpoint_dir, writer=writer, busy=lambda: controls.running)
            store.claim()  # unwritable, or another trainer writing there: an error now
            try:
                store.bind(self._checkpoint_variables())
                self._store = store
                self._resume(learning_rate, resume)
            except BaseException:
                store.release()
                raise
        if self._lockstep:
            self._agree_with_chief()
        self._trajectory = Trajectory.for_variables(style.trainable, record_trajectory)
        self._trajectory.record([self._pos.epoch], self._flat())
        ownership.claim(self, self._style.weights)  # last: a failed construction takes nothing

    # -- state -----------------------------------------------------------------------

    def _opt_state(self) -> list:
        return optimizer_state(self._parts.optimizer) if self._style.kind != "step" else []

    def _metric_vars(self) -> list:
        return [v for m in self._parts.train_metrics + self._parts.val_metrics for v in m.variables]

    def _state(self) -> list:
        """Everything a rollback, a reset or a checkpoint must restore."""
        return list(self._style.weights) + self._opt_state() + self._metric_vars()

    def _checkpoint_variables(self) -> dict[str, Any]:
        out = {f"w{i}": v for i, v in enumerate(self._style.weights)}
        out.update({f"o{i}": v for i, v in enumerate(self._opt_state())})
        out.update({f"m{i}": v for i, v in enumerate(self._metric_vars())})
        return out

    def _make_snapshot(self) -> list | None:
        """Under a strategy: the loops' snapshot variables, made here (see
        `snapshot_variables`); without one each loop makes its own."""
        if not self._replicas:
            return None
        with self._replicas.scope():
            return snapshot_variables(self._state())

    def _loop(self) -> CompiledLoop:
        if self._engine is None:
            self._engine = make_loop(
                self._parts,
                state=self._state(),
                record_vars=self._record_vars,
                shuffle=self.shuffle,
                seed=self.seed,
                per_batch=self._callbacks.per_batch,
                device=self.device,
                replicas=self._replicas,
                snapshot=self._snapshot,
            )
            if self._health:
                self._health.attach(self._engine, self._parts.loss, self._parts.optimizer)
            if self._trajectory.enabled and not self._rows_hold_weights and not self._replicas:
                self._engine.record_path(self._style.trainable, self._trajectory.call_stride)
            if self._loop_wrap is not None:
                self._engine = self._loop_wrap(self._engine)
        return self._engine

    def wrap_loop(self, wrap: Callable[[CompiledLoop], Any]) -> None:
        """Make each call go through `wrap(loop)`, an object with the compiled loop's
        interface (compare runs its copies' calls together). Between runs."""
        self._require_idle("wrap the compiled loop")
        self._loop_wrap = wrap
        if self._engine is not None:
            self._engine = wrap(self._engine)

    @property
    def _rows_hold_weights(self) -> bool:
        """A small model: the per-epoch rows hold all its weights (named in the history)."""
        return len(self._record_vars) == len(self._style.trainable)

    # -- what a panel reads ----------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Completed epochs (the next epoch's index)."""
        return self._pos.epoch

    @property
    def batch(self) -> int:
        """Steps done into the next epoch: 0 unless a run stopped inside a big epoch."""
        return self._pos.batch

    @property
    def target_epoch(self) -> int:
        """Where the current (or last) run stops: for progress bars."""
        return self._target

    @property
    def samples_per_epoch(self) -> int | None:
        """Training samples per epoch (None for a Dataset)."""
        return self._parts.data.n if isinstance(self._parts.data, ArrayData) else None

    @property
    def variables(self) -> list:
        """The trained variables."""
        return list(self._style.trainable)

    @property
    def trajectory(self) -> Trajectory:
        """The weights after each epoch (flat, thinned to a bounded number of points)."""
        return self._trajectory

    def _flat(self) -> Any:
        return flat_weights(self._style.trainable) if self._trajectory.enabled else None

    def param_values(self) -> dict[str, float]:
        """Current values of a small model's parameters by name ({} for big models)."""
        flat = [np.ravel(unwrap(v).numpy()) for v in self._record_vars]
        values = np.concatenate(flat) if flat else []
        return {n: float(x) for n, x in zip(self._param_names, values, strict=True)}

    @property
    def findings(self) -> list[Finding]:
        """Gradient-health problems found so far, in words (empty with health=False)."""
        return self._health.findings if self._health else []

    @property
    def strategy(self) -> Any:
        """The tf.distribute strategy (None: one device)."""
        return self._replicas.strategy if self._replicas else None

    @property
    def loss_reduction(self) -> str | None:
        """Under a strategy: whether the loss sums ('sum') or averages ('mean') over
        samples, as given or probed; None without a strategy."""
        return self._replicas.reduction if self._replicas else None

    @property
    def num_replicas(self) -> int:
        """Replicas each batch is split across (1 without a strategy)."""
        return self._replicas.count if self._replicas else 1

    @property
    def is_chief(self) -> bool:
        """False only on a worker of a multi-worker cluster that is not the chief."""
        return self._lockstep is None or self._lockstep.chief

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all replicas (for a Dataset: its first batch's)."""
        if isinstance(self._parts.data, ArrayData):
            return self._parts.batch_size or self._parts.data.n
        return self._parts.first_batch

    def distribution(self) -> str | None:
        """E.g. 'MirroredStrategy · 2 replicas · global batch 64' (None: one device)."""
        return self._replicas.describe(self.global_batch_size) if self._replicas else None

    @staticmethod
    def available_devices() -> list[str]:
        """What `device=` accepts here: 'auto' and these ('/CPU:0', '/GPU:0', ...)."""
        return devices.available()

    # -- settings --------------------------------------------------------------------

    @property
    def optimizer(self) -> Any:
        """The optimizer; set a name or an object between runs (its state starts fresh)."""
        return self._parts.optimizer

    @optimizer.setter
    def optimizer(self, spec: Any) -> None:
        self._require_idle("change the optimizer")
        if self._style.kind == "step":
            raise ValueError("a step= trainer uses the optimizer inside its step; change it there")
        if self._lockstep:
            raise ValueError(
                "with several workers the optimizer is chosen when the trainers are made: "
                "make them again with optimizer=..."
            )
        lr = self.learning_rate if isinstance(spec, str) else None
        if self._replicas and isinstance(spec, keras.optimizers.Optimizer):
            self._replicas.check_optimizer(spec)
        with self._replicas.scope() if self._replicas else tf.device(self.device):
            opt = make_optimizer(spec, lr)
            opt.build(self._style.trainable)
        n_weights, n_opt = len(self._style.weights), len(self._opt_state())
        self._parts.optimizer = opt
        fresh = [unwrap(v).numpy() for v in self._opt_state()]
        self._initial = self._initial[:n_weights] + fresh + self._initial[n_weights + n_opt :]
        self._engine = self._last_fault = None
        self._snapshot = self._make_snapshot()
        self._pacer = Pacer()
        if self._store:
            self._store.bind(self._checkpoint_variables())

    @property
    def batch_size(self) -> int | None:
        """Samples per step (None: all of them); a new value applies from the next epoch."""
        return self._batch_size_next

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._require_idle("change the batch size")
        self._batch_size_next = check_batch_size(value, self._parts.data)

    @property
    def learning_rate(self) -> float | None:
        """Settable at any time, even mid-run from another thread: applies from the next call."""
        pending = self._controls.pending_learning_rate
        return pending if pending is not None else self._current_lr()

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        value = check_learning_rate(value)
        sched = keras.optimizers.schedules.LearningRateSchedule
        if isinstance(getattr(self._parts.optimizer, "_learning_rate", None), sched):
            raise TypeError(
                "this optimizer's learning rate is a schedule, which cannot be set; pass a "
                "fixed learning_rate (or an optimizer name) to change it during training"
            )
        if self._parts.optimizer is None and self._style.lr_variable is None:
            raise ValueError(
                "this step= trainer cannot find your optimizer's learning rate; pass "
                "optimizer=<the optimizer your step uses>"
            )
        self._controls.set_learning_rate(value, self._set_lr)

    def _current_lr(self) -> float | None:
        if self._parts.optimizer is not None:
            return float(self._parts.optimizer.learning_rate.numpy())
        if self._style.lr_variable is not None:
            return float(self._style.lr_variable.numpy())
        return None

    def _set_lr(self, value: float) -> None:
        if self._parts.optimizer is not None:
            self._parts.optimizer.learning_rate = value
        else:
            self._style.lr_variable.assign(value)

    # -- controls (thread-safe) ------------------------------------------------------

    @property
    def superseded_by(self) -> Any:
        """The newer trainer made on (some of) these variables, which owns them now; None
        while this one does. A superseded trainer refuses to run, reset or restore."""
        event = ownership.superseded(self)
        return event.new if event is not None else None

    @property
    def running(self) -> bool:
        """True while `run` (or `step`) is training, in whatever thread."""
        return self._controls.running

    @property
    def paused(self) -> bool:
        """True while a run holds between steps, waiting for `resume()` or `step()`."""
        return self._controls.paused

    def request_stop(self) -> None:
        """End the run between steps (within about 0.1 s); also ends a pause."""
        self._controls.request_stop()

    def pause(self) -> None:
        """Hold the run after the current call (about 0.1 s); no CPU is used while held."""
        self._controls.pause()

    def resume(self) -> None:
        """Continue a paused run."""
        self._controls.resume()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress; False if `timeout` seconds passed first."""
        return self._controls.wait_idle(timeout)

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Block until a run holds in its pause (or has ended); False on timeout."""
        return self._controls.wait_paused(timeout)

    def add_listener(self, fn: Callable[[EpochRecord], Any]) -> Callable[[EpochRecord], Any]:
        """Call `fn(record)` after each epoch, in the training thread (e.g. to redraw)."""
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn: Callable[[EpochRecord], Any]) -> None:
        """Stop calling `fn`."""
        self._listeners.remove(fn)

    def _require_idle(self, what: str) -> None:
        if self.running:
            raise RuntimeError(f"cannot {what} while training runs; request_stop() and wait()")

    def _say(self, text: str) -> None:
        self.messages.append(text)

    # -- running ---------------------------------------------------------------------

    def step(self) -> History:
        """One epoch. During a run: hold after one more epoch (returns at once)."""
        if self._controls.step_while_running(self._pos.epoch):
            return self.history
        return self.run(1)

    def run(self, epochs: int = 1) -> History:
        """Train `epochs` more epochs (blocking); returns the history of all epochs so far.

        `epochs`: a whole number from 0 (nothing) to `pacing.MAX_EPOCHS`, taken as given.
        An error raised inside the compiled step (by your predict, loss or step) comes out
        as one exception of its type whose message is your own, then your file and line;
        TensorFlow's trace is its `__cause__`. It is also `self.error`."""
        epochs = check_epochs(epochs)
        if self._store:
            self._store.check_owner()  # another trainer writes its checkpoint_dir now
        self._controls.begin()
        try:
            ownership.check(self)  # after begin: a claim made meanwhile has stopped this run
        except RuntimeError:
            self._controls.end()
            raise
        self._target = self._pos.epoch + epochs
        self.error = self.fault = self._last_fault = None
        ctrl_c = _CtrlCStops(self._controls.request_stop)
        try:
            with ctrl_c:
                self._train()
        except BaseException as err:
            self.error = err
            self._say(f"stopped by an error at epoch {self.epoch}: {type(err).__name__}: {err}")
            raise
        finally:
            # A rate set during the last call is applied before the final checkpoint.
            self._controls.end(self._set_lr, self._final_save, again=not self._lockstep)
        if ctrl_c.fired:  # raised here, not from deep inside the loop: one short traceback
            raise KeyboardInterrupt(f"training stopped at epoch {self.epoch}")
        return self.history

    def _train(self) -> None:
        cbs = self._callbacks
        cbs.model.stop_training = False
        if cbs:
            cbs.set_params({"epochs": self._target, "steps": None, "verbose": 0})
            cbs.call("on_train_begin", {})
        if self._lockstep and not self._lockstep.chief:
            self._follow_orders()
        else:
            self._lead()
        if cbs:
            cbs.call("on_train_end", {})

    def _lead(self) -> None:
        """Plan each call from the controls; with workers, send them each plan first."""
        pos, lockstep = self._pos, self._lockstep
        while pos.epoch < self._target:
            if not self._controls.wait_turn(pos.epoch, self._set_lr):
                self._say(f"stopped at epoch {pos.epoch}")
                break
            self._use_batch_size(self._batch_size_next)
            engine = self._loop()
            plan = self._pacer.plan(
                pos, engine.steps_per_epoch, self._limit(), self._callbacks.per_epoch,
                engine.spans_ok,
            )  # fmt: skip
            if lockstep:
                lr, size = self._current_lr(), self._parts.batch_size
                lockstep.send(Order(CALL, plan, lr, size, self._target))
            if not self._call(engine, plan):
                return  # a fault or a callback ended it: the workers saw the same results
        if lockstep:
            lockstep.send(Order(END))

    def _follow_orders(self) -> None:
        """On a worker: run exactly the calls the chief runs, until its run ends."""
        while True:
            order = self._lockstep.receive()
            if order.kind == RESET:
                self._reset_here()
                continue
            if order.kind != CALL:
                self._closed = order.kind == CLOSE
                return
            self._target = order.target
            self._use_batch_size(order.batch_size)
            if order.learning_rate and order.learning_rate != self._current_lr():
                self._set_lr(order.learning_rate)
            if not self._call(self._loop(), order.plan):
                return

    def _use_batch_size(self, size: int | None) -> None:
        if self._pos.batch == 0 and size != self._parts.batch_size:
            self._parts.batch_size, self._engine = size, None
            self._pacer = Pacer()  # step times change with the batch size

    def _call(self, engine: CompiledLoop, plan: CallPlan) -> bool:
        """One compiled call and its bookkeeping; False when the run must end."""
        pos, cbs = self._pos, self._callbacks
        if pos.batch == 0 and cbs:
            cbs.call("on_epoch_begin", pos.epoch, {})
        lr, partial_before = self._current_lr(), pos.partial
        if self._health:
            self._health.before_call()
        try:
            res = engine(*plan)
        except Exception as err:
            engine.restore_snapshot()  # nothing of this call is kept
            clear = step_error(err)  # the user's message and line, not TensorFlow's trace
            if clear is err:
                raise
            raise clear from err
        except BaseException:
            engine.restore_snapshot()
            raise
        self._commit(res, plan, lr)
        if not res.ok:
            self._handle_fault(res, plan, partial_before, lr)
            return False
        if cbs.stop_requested:
            self._say(f"stopped by a callback after epoch {pos.epoch - 1}")
            return False
        return True

    def _limit(self) -> int:
        """The epoch the next call must not pass: target, a pause-step, a checkpoint."""
        limit, until = self._target, self._controls.step_until
        if until is not None:
            limit = min(limit, until)
        if self._ckpt_every:
            limit = min(limit, (self._pos.epoch // self._ckpt_every + 1) * self._ckpt_every)
        return limit

    def _commit(self, res: CallResult, plan: CallPlan, lr: float | None) -> None:
        """Record what the call completed; then listeners, callbacks, checkpoints."""
        first = self._pos.epoch
        carried = self._pos.partial if plan.b0 > 0 else None  # this epoch's earlier steps
        done = epoch_columns(res, self._pos, plan, self._param_names)
        self.history.extend(done.columns, learning_rate=lr)
        if done.after is not None:
            self._pos.move_to(done.after)
        n = len(done.columns.epochs)
        if self._health:
            table = self.history.gradients
            for finding in self._health.commit(res, plan.b0, first, n, table, lr):
                self._say(finding.text)
        self._record_trajectory(res, first, n)
        self._pacer.measured(res)
        cbs = self._callbacks
        if cbs.per_batch and res.batch_rows is not None:
            names = self._parts.metric_names[: len(self._parts.train_metrics)]
            sums = (carried.loss, carried.samples) if carried else ()
            cbs.batches(plan.b0, res.batch_rows, names, *sums)
        if self._listeners or cbs:
            for i in range(first, first + n):
                record = self.history[i]
                for fn in list(self._listeners):
                    fn(record)
                cbs.call("on_epoch_end", i, record.logs())
        every = self._ckpt_every
        if self._store and every and n and first // every != self._pos.epoch // every:
            self.save_checkpoint()

    def _record_trajectory(self, res: CallResult, first: int, n: int) -> None:
        """A small model's weights after each epoch (the call's rows hold them); a bigger
        model's after the epochs the call wrote (on the stride), then where the call ends,
        when that is an epoch boundary."""
        if not self._trajectory.enabled or not n:
            return
        if res.params is not None and self._rows_hold_weights:
            self._trajectory.record(range(first + 1, first + n + 1), res.params[:n])
            return
        last = first
        if res.path_epochs is not None:
            kept = res.path_epochs <= first + n  # not past a fault's epoch
            self._trajectory.record(res.path_epochs[kept], res.path_weights[kept])
            last = int(res.path_epochs[kept].max(initial=first))
        if self._pos.batch == 0 and self._pos.epoch != last:
            self._trajectory.record([self._pos.epoch], self._flat())

    # -- faults ----------------------------------------------------------------------

    def _handle_fault(
        self, res: CallResult, plan: CallPlan, partial_before: PartialEpoch, lr: float | None
    ) -> None:
        site = locate_fault(res, plan, self._style.names, self._param_names)
        self._last_fault = FaultedCall(plan, res, partial_before)
        restored = None
        if self._on_nonfinite == "restore":
            restored = self._restore_fault()
        elif site.epoch == plan.epoch0:  # keep the weights; the position stays before the fault
            self._pos.set(site.epoch, plan.b0, partial_before)
        else:
            self._pos.set(site.epoch)
        where_batch = None if self._loop().steps_per_epoch == 1 else site.batch
        text = fault_message(
            site.epoch, where_batch, site.loss, site.variables, site.weights, lr, restored,
            self._style.kind,
        )  # fmt: skip
        self.fault = Fault(site.epoch, site.batch, site.loss, site.variables + site.weights, text)
        self._say(text)
        warn_user(text, TrainingFault)

    def _restore_fault(self) -> str:
        fault, self._last_fault = self._last_fault, None
        self._pos.move_to(replay_to_fault(self._loop(), fault))
        e, b = self._pos.epoch, self._pos.batch
        if len(self.history) > e:  # stepping back undid epochs recorded in this call
            self.history.truncate(e)
        self._trajectory.truncate(e)
        where = f"start of epoch {e}" if b == 0 else f"epoch {e}, batch {b}"
        if not all(np.isfinite(unwrap(v).numpy()).all() for v in self._style.trainable):
            where += "; some weights are non-finite there too: reset() or reload a checkpoint"
        return where

    def restore_last_finite(self) -> bool:
        """After a fault with on_nonfinite='keep': back to the last finite step."""
        self._require_idle("restore")
        ownership.check(self)  # the variables are another trainer's now
        if self._last_fault is None:
            return False
        self._say(f"restored the last finite weights: {self._restore_fault()}")
        return True

    # -- reset and checkpoints -------------------------------------------------------

    def reset(self) -> None:
        """Weights and optimizer state as at construction; the history is cleared."""
        self._require_idle("reset")
        ownership.check(self)  # the variables are another trainer's now
        if self._lockstep:
            if not self._lockstep.chief:
                raise RuntimeError("a worker resets when the chief does: call reset() there")
            self._lockstep.send(Order(RESET))
        self._reset_here()

    def _reset_here(self) -> None:
        for v, value in zip(self._state(), self._initial, strict=True):
            unwrap(v).assign(value)
        self.history.clear()
        if self._health:
            self._health.reset(self.history.gradients)
        self._trajectory.clear()
        self._trajectory.record([0], self._flat())
        self._pos.set(0)
        self.error = self.fault = self._last_fault = None
        self._callbacks.model.stop_training = False
        self._say("reset to the initial weights")

    def save_checkpoint(self) -> str | None:
        """Save weights, optimizer state and history now (None without checkpoint_dir).

        With several workers, call it on every worker (saving metrics all-reduces them);
        the chief writes to checkpoint_dir, the others to a directory deleted at once."""
        if not self._store:
            return None
        meta = {
            **self._pos.to_json(),
            "seed": self.seed,
            "batch_size": self._parts.batch_size,
            "optimizer": type(self._parts.optimizer).__name__ if self._parts.optimizer else None,
            "learning_rate": self.learning_rate,  # a pending rate is the next call's
            "history": self.history.to_json(),
        }
        path = self._store.save(meta)
        self._saved_at = self._save_key()
        return path

    def _save_key(self) -> tuple:
        """What a save records that a run's end must not leave unsaved: the position and,
        but with several workers (whose saves must match in number), the learning rate."""
        where = (self._pos.epoch, self._pos.batch)
        lr = self.learning_rate  # float32 in the optimizer: 0.01 pending equals it applied
        return where if self._lockstep or lr is None else (*where, float(np.float32(lr)))

    def _final_save(self) -> None:
        if self._store and self._saved_at != self._save_key():
            self.save_checkpoint()

    def _resume(self, learning_rate: float | None, mode: bool | str) -> None:
        opt_name = type(self._parts.optimizer).__name__ if self._parts.optimizer else None
        resumed = self._store.resume(opt_name, mode)
        meta = resumed.meta
        if meta is None:
            if resumed.note:
                self._say(resumed.note)
            return
        self.history = History.from_json(meta["history"])
        partial = PartialEpoch.from_json(meta["partial"])
        self._pos.set(int(meta["epoch"]), int(meta["batch"]), partial)
        self.seed = int(meta["seed"])
        if self._pos.batch and meta.get("batch_size") != self._parts.batch_size:
            self._parts.batch_size = self._batch_size_next = meta.get("batch_size")
        same_opt = meta.get("optimizer") == opt_name
        if learning_rate is None and same_opt and meta.get("learning_rate"):
            self._set_lr(float(meta["learning_rate"]))
        self._saved_at = self._save_key()
        note = "" if same_opt else f" (optimizer state not restored: it was {meta['optimizer']})"
        self._say(f"resumed from {resumed.path} at epoch {self._pos.epoch}{note}{resumed.note}")
        if self._health:
            self._health.restore(self.history)

    # -- several workers -------------------------------------------------------------

    def _agree_with_chief(self) -> None:
        """Compare setups across workers (an error on all of them, not a hang) and take
        the chief's shuffling seed."""
        samples = self.samples_per_epoch or -self._parts.first_batch
        size = sum(int(np.prod(v.shape)) for v in self._style.weights)
        self.seed = self._lockstep.agree(self._pos.epoch, self._pos.batch, samples, size, self.seed)

    def follow(self) -> History:
        """On a worker that is not the chief: do what the chief does (its runs, resets)
        until the chief calls `close()`; returns the history (the chief's too)."""
        if self.is_chief:
            raise RuntimeError("follow() is for the workers that are not the chief; this one leads")
        self._closed = False
        while not self._closed:
            self.run()
        return self.history

    def close(self) -> None:
        """On the chief of several workers: end their `follow()`. And let checkpoint_dir go
        (to another process too): this trainer saves no more there."""
        if self._lockstep and self._lockstep.chief:
            self._require_idle("close")
            self._lockstep.send(Order(CLOSE))
        if self._store:
            self._require_idle("close")
            self._store.release()

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        opt = type(self._parts.optimizer).__name__ if self._parts.optimizer else "own step"
        where = self.distribution() or f"device {self.device}"
        return (
            f"Trainer({self._style.kind}, {opt}, lr={self.learning_rate}, epoch {self.epoch}, "
            f"{state}, {where})"
        )


class _CtrlCStops:
    """Ctrl-C (or a kernel's Interrupt) during a run in the main thread ends it between
    steps: a KeyboardInterrupt raised wherever the main thread happens to be could land
    between a step and its bookkeeping. `run` raises one short KeyboardInterrupt after.
    A second Ctrl-C raises at once, for a step that never ends (that call is rolled back).
    Other threads cannot receive signals: a panel's worker is stopped by the panel."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._prev: Any = None
        self._installed = False
        self.fired = False

    def __enter__(self) -> _CtrlCStops:
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGINT)
            if prev not in (signal.SIG_IGN, None):  # ignored, or handled outside Python
                self._prev, self._installed = prev, True
                signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.fired:
            raise KeyboardInterrupt
        self.fired = True
        self._stop()
        prev = self._prev
        if callable(prev) and prev is not signal.default_int_handler:
            # e.g. a notebook layer's handler, which stops its own runs too; its
            # KeyboardInterrupt is dropped: this run ends cleanly instead
            with contextlib.suppress(KeyboardInterrupt):
                prev(signum, frame)
