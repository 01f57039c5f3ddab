"""The compiled part of training: one `tf.function` call runs a span of steps.

A call covers whole epochs (`n_epochs` of them, for tiny epochs) or a span of batches
inside one epoch (for big ones), so each call lasts about as long as the trainer asks and
its controls act between calls. Each epoch writes one row of numbers (loss, gradient
summary, parameters, metrics) to a TensorArray, so records stay exact however many epochs
one call runs. Each call first copies the state to snapshot variables: an error mid-call
rolls back to the call's start, and a fault can be replayed up to the step before it.

Two loops, because ops per epoch are what limit tiny epochs (the seed's regression runs
about 10 us an epoch; every extra op costs several percent):
- full-batch arrays ("fast"): one step per epoch; the row is one `tf.stack`; there is no
  in-graph NaN test: the host scans the rows and replays up to the first bad one;
- batches or a Dataset: a while loop over batches that stops at the first non-finite loss
  or gradient (cheap there, next to a real step).

Under a tf.distribute strategy the loop is the same: its steps split each batch across
the replicas and update the metrics there (`distributed/replicas.py`); a distributed
Dataset's iterator is made on the host and passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic.training.data import ArrayData, DatasetData, batch_count
from tapemagic.training.steps import Steps
from tapemagic.training.subject import traced_message
from tapemagic.training.user_warnings import quiet_own_retracing
from tapemagic.variables import unwrap

quiet_own_retracing()  # each trainer's loop is traced once, by design


@dataclass(frozen=True)
class RowLayout:
    """Where each number sits in an epoch's row, one float32 vector per epoch.

    Full-batch ("fast") rows: loss, then each variable's gradient summary. Batched rows:
    the sum of each step's loss times its batch size, the sum of gradient norms, steps
    done, 1.0 if the epoch completed, samples done. Then, in both: the validation loss
    (with validation data), the metrics, the recorded parameters."""

    width: int
    grads: slice  # fast rows: per-variable gradient summaries (empty otherwise)
    gn: int | None  # batched rows: sum of the steps' gradient norms
    steps: int | None  # batched rows: steps done in the epoch
    complete: int | None  # batched rows: 1.0 when every batch ran and all were finite
    samples: int | None  # batched rows: samples in the steps done
    val_loss: int | None  # None: no validation data
    metrics: slice  # training metrics, then "val_" ones, as `metric_names`
    params: slice  # scalar entries of the recorded variables
    health: slice  # gradient health's entries (`health.HealthPlan`), last

    LOSS = 0  # the epoch's loss (sample-weighted sum over its steps) is always first

    @classmethod
    def make(
        cls,
        fast: bool,
        n_grad_vars: int,
        has_val: bool,
        n_metrics: int,
        n_params: int,
        n_health: int = 0,
    ) -> RowLayout:
        head = 1 + n_grad_vars if fast else 5
        grads = slice(1, head) if fast else slice(1, 1)
        gn, steps, complete, samples = (None,) * 4 if fast else (1, 2, 3, 4)
        val_loss = head if has_val else None
        m0 = head + int(has_val)
        p0 = m0 + n_metrics
        h0 = p0 + n_params
        width = h0 + n_health
        metrics, params, health = slice(m0, p0), slice(p0, h0), slice(h0, width)
        return cls(width, grads, gn, steps, complete, samples, val_loss, metrics, params, health)


@dataclass
class CallResult:
    """What one call did, as NumPy; per-epoch arrays have one entry per epoch touched."""

    touched: int  # epochs worked on; the last may be partial (span) or faulty
    loss_sum: np.ndarray  # per epoch: sum over its steps of loss x batch size
    samples: np.ndarray  # per epoch: samples in its steps (loss_sum / samples: Keras's mean)
    gn_sum: np.ndarray | None
    steps: np.ndarray
    complete: np.ndarray  # per touched epoch: all its batches done, all finite
    ok: bool  # False: the step before `end_batch` (last touched epoch) went non-finite
    end_batch: int  # position after the last step counted, in the last touched epoch
    val_loss: np.ndarray | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    params: np.ndarray | None = None
    # per step, when batch callbacks need them: loss, batch size, then each training
    # metric's running result after that step (the logs `fit` gives on_train_batch_end)
    batch_rows: np.ndarray | None = None
    last_sq: np.ndarray | None = None  # per-variable squared gradient norm at the fault
    bad_params: np.ndarray | None = None  # per scalar parameter: non-finite after the fault
    health: Any = None  # `health.HealthRows` per touched epoch, when health is watched
    # a bigger model's weights after the epochs on the call's stride (`record_path`):
    # epochs done at each point, and the flat weights there
    path_epochs: np.ndarray | None = None
    path_weights: np.ndarray | None = None
    seconds: float = 0.0
    traced: bool = False


def snapshot_variables(state: Sequence[Any]) -> list[tf.Variable]:
    """Copies of the state, made where the caller's scope puts them.

    Under a strategy they are made once per trainer, not per loop: creating a variable
    there is a collective (the chief broadcasts its value), which all workers must
    enter at the same point of the program."""
    return [tf.Variable(unwrap(v).read_value(), trainable=False, name="snapshot") for v in state]


class CompiledLoop:
    """The compiled call and its snapshot, for one configuration (steps, data, batch size)."""

    def __init__(
        self,
        *,
        steps: Steps,
        data: ArrayData | DatasetData,
        val: ArrayData | DatasetData | None,
        batch_size: int | None,
        shuffle: bool,
        seed: int,
        state: Sequence[Any],
        record_vars: Sequence[Any],
        train_metrics: Sequence[keras.metrics.Metric],
        val_metrics: Sequence[keras.metrics.Metric],
        metric_names: Sequence[str],
        n_grad_vars: int,
        grads_are_values: bool,
        collect_batches: bool,
        device: str,
        snapshot: Sequence[Any] | None = None,
        batch_iterator: Callable[[], Any] | None = None,
    ):
        self.train_step, self.eval_step = steps.train, steps.eval
        self.data, self.val = data, val
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, int(seed)
        self.state = [unwrap(v) for v in state]
        self.record_vars = list(record_vars)
        self.n_params = sum(int(np.prod(v.shape)) for v in self.record_vars)
        self.train_metrics, self.val_metrics = list(train_metrics), list(val_metrics)
        self.metric_names = list(metric_names)  # training metrics, then "val_" ones
        self.n_grad_vars, self.grads_are_values = n_grad_vars, grads_are_values
        self.collect_batches, self.device = collect_batches, device
        # under a strategy the steps update the metrics in each replica themselves
        self.steps_update_metrics = steps.updates_metrics
        # a distributed Dataset is iterated from the host: one iterator kept across calls
        self._new_iterator, self._iterator, self._aligned = batch_iterator, None, False
        if isinstance(data, ArrayData):
            self.steps_per_epoch: int | None = batch_count(data.n, batch_size)
        else:
            self.steps_per_epoch = data.steps
        self.fast = isinstance(data, ArrayData) and self.steps_per_epoch == 1
        # a call can start inside an epoch only with arrays: a Dataset restarts each call
        self.spans_ok = isinstance(data, ArrayData)
        self.layout = RowLayout.make(
            self.fast, n_grad_vars, val is not None, len(self.metric_names), self.n_params
        )
        if snapshot is None:
            with tf.device(device):
                snapshot = snapshot_variables(self.state)
        self.snapshot = list(snapshot)
        self.health: Any = None  # a `health.HealthPlan` (see `watch`)
        self.path_vars: list = []  # weights written after the epochs on a stride (`record_path`)
        self._path_stride: Callable[[int], int] | None = None
        self._fn = tf.function(self._compiled)

    def watch(self, plan: Any, train_step: Callable | None = None) -> None:
        """Record gradient health (`health.HealthPlan`) in each epoch's row, with
        `train_step` (one that also returns layer outputs) when given. Before the first call."""
        self.health = plan
        if train_step is not None:
            self.train_step = train_step
        self.layout = RowLayout.make(
            self.fast, self.n_grad_vars, self.val is not None, len(self.metric_names),
            self.n_params, plan.width(self.fast),
        )  # fmt: skip

    def record_path(self, variables: Sequence[Any], stride: Callable[[int], int]) -> None:
        """Write `variables` (flattened, joined) after every epoch whose count of epochs
        done is a multiple of `stride(n_epochs)`, asked before each call: the trajectory of
        a model too big for the rows, one point per epoch however many epochs a call runs.
        Before the first call."""
        self.path_vars = [unwrap(v) for v in variables]
        self._path_stride = stride

    # -- host side -------------------------------------------------------------------

    def __call__(
        self, epoch0: int, n_epochs: int, b0: int = 0, b1: int | None = None
    ) -> CallResult:
        """Run epochs epoch0.. (the first from batch b0, the last up to batch b1): a
        `CallPlan`'s fields, so `loop(*plan)` runs it."""
        nb = self.steps_per_epoch
        b1 = (nb or 0) if b1 is None else b1
        traces = self._fn.experimental_get_tracing_count()
        arrays = self.data if isinstance(self.data, ArrayData) else None
        vals = self.val if isinstance(self.val, ArrayData) else None
        extra = ()
        if self._new_iterator is not None:  # calls start at an epoch's first batch
            if self._iterator is None or not self._aligned:
                self._iterator = self._new_iterator()
            extra, self._aligned = (self._iterator,), False
        start = time.perf_counter()
        with tf.device(self.device):
            out = self._fn(
                arrays.x if arrays else None,
                arrays.y if arrays else None,
                vals.x if vals else None,
                vals.y if vals else None,
                tf.constant(epoch0, tf.int64),
                tf.constant(n_epochs, tf.int32),
                tf.constant(b0, tf.int32),
                tf.constant(b1, tf.int32),
                tf.constant(self._path_stride(n_epochs) if self._path_stride else 1, tf.int64),
                *extra,
            )
            out = {k: v.numpy() for k, v in out.items()}
        res = self._decode(out)
        self._aligned = res.ok and bool(res.complete.all())
        res.seconds = time.perf_counter() - start
        res.traced = self._fn.experimental_get_tracing_count() != traces
        return res

    def _decode(self, out: dict) -> CallResult:
        rows, c = out["rows"], self.layout
        params = rows[:, c.params].astype(np.float64) if self.n_params else None
        if self.fast:  # find the first non-finite epoch here, not in the graph
            g = rows[:, c.grads].astype(np.float64) if self.n_grad_vars else rows[:, :0]
            sq = g * g if self.grads_are_values else g
            checked = np.concatenate([rows[:, :1], g] + ([params] if params is not None else []), 1)
            finite = np.isfinite(checked).all(axis=1)
            touched = len(rows) if finite.all() else int(np.argmin(finite)) + 1
            res = CallResult(
                touched=touched,
                loss_sum=rows[:touched, 0].astype(np.float64),
                samples=np.ones(touched),  # one step an epoch: its loss is the epoch's
                gn_sum=np.sqrt(sq[:touched].sum(axis=1)) if self.n_grad_vars else None,
                steps=np.ones(touched),
                complete=finite[:touched],
                ok=bool(finite.all()),
                end_batch=1,
                last_sq=sq[touched - 1] if self.n_grad_vars else None,
                batch_rows=self._fast_batch_rows(rows[:touched]) if self.collect_batches else None,
            )
            if params is not None and not res.ok:
                res.bad_params = ~np.isfinite(params[touched - 1])
            if self.health is not None:
                res.health = self.health.decode(rows[:touched, c.health], sq[:touched])
        else:
            touched = len(rows)
            res = CallResult(
                touched=touched,
                loss_sum=rows[:, c.LOSS].astype(np.float64),
                samples=rows[:, c.samples].astype(np.float64),
                gn_sum=rows[:, c.gn].astype(np.float64) if self.n_grad_vars else None,
                steps=rows[:, c.steps].astype(np.float64),
                complete=rows[:, c.complete] > 0.5,
                ok=bool(out["ok"]),
                end_batch=int(out["end_batch"]),
                last_sq=out["last_sq"] if self.n_grad_vars else None,
                batch_rows=out.get("batch_rows"),
            )
            if self.health is not None:
                res.health = self.health.decode(rows[:, c.health], None)
        n = res.touched
        res.params = None if params is None else params[:n]
        if self.path_vars:
            res.path_epochs, res.path_weights = out["path_epochs"], out["path_weights"]
        if c.val_loss is not None:
            res.val_loss = rows[:n, c.val_loss].astype(np.float64)
        first = c.metrics.start
        res.metrics = {
            k: rows[:n, first + i].astype(np.float64) for i, k in enumerate(self.metric_names)
        }
        return res

    def _fast_batch_rows(self, rows: np.ndarray) -> np.ndarray:
        """Full-batch epochs as batch rows: the loss, the samples, the training metrics."""
        n_train = len(self.train_metrics)
        m = rows[:, self.layout.metrics][:, :n_train]
        return np.concatenate([rows[:, :1], np.full((len(rows), 1), self.data.n), m], 1)

    def restore_snapshot(self) -> None:
        """Put the state back as it was when the last call started."""
        with tf.device(self.device):
            for v, s in zip(self.state, self.snapshot, strict=True):
                v.assign(s)

    # -- compiled side ---------------------------------------------------------------

    @staticmethod
    def _row(parts: Sequence[Any]) -> tf.Tensor:
        """One float32 vector from scalars and vectors (a single stack when all scalar)."""
        parts = [tf.cast(p, tf.float32) for p in parts]
        if all(p.shape.rank == 0 for p in parts):
            return tf.stack(parts)
        return tf.concat([tf.reshape(p, [-1]) for p in parts], 0)

    def _params(self) -> list:
        return [v.read_value() if hasattr(v, "read_value") else v for v in self.record_vars]

    def _compiled(self, x, y, xv, yv, epoch0, n_epochs, b0, b1, stride, it=None):
        for s, v in zip(self.snapshot, self.state, strict=True):
            s.assign(v)
        if self.fast:
            out = self._call_fast(x, y, xv, yv, epoch0, n_epochs, stride)
        else:
            out = self._call_batches(x, y, xv, yv, epoch0, n_epochs, b0, b1, stride, it)
        if self.path_vars:
            weights, epochs, _ = out.pop("path")
            out["path_weights"], out["path_epochs"] = weights.stack(), epochs.stack()
        return out

    def _path_start(self) -> tuple:
        """The written points so far: weights, epochs done, how many; () when not asked."""
        if not self.path_vars:
            return ()
        n = sum(int(np.prod(v.shape)) for v in self.path_vars)
        weights = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[n])
        epochs = tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[])
        return (weights, epochs, tf.constant(0))

    def _path_write(self, path: tuple, done) -> tuple:
        """The weights after `done` epochs, written as the next point."""
        weights, epochs, k = path
        parts = [tf.reshape(tf.cast(v.read_value(), tf.float32), [-1]) for v in self.path_vars]
        return weights.write(k, tf.concat(parts, 0)), epochs.write(k, done), k + 1

    def _path_step(self, path: tuple, done, stride, complete) -> tuple:
        """After a batched epoch (`done` epochs done): the weights, when on the stride."""
        if not path:
            return path
        # a cond: an epoch off the stride costs a test, not a copy of the weights
        on_stride = complete & tf.equal(done % stride, 0)
        return tf.cond(on_stride, lambda: self._path_write(path, done), lambda: path)

    def _update(self, metrics, y, pred) -> None:
        if not self.steps_update_metrics:
            for m in metrics:
                m.update_state(y, pred)

    def _call_fast(self, x, y, xv, yv, epoch0, n_epochs, stride):
        width = self.layout.width
        rows = tf.TensorArray(tf.float32, size=n_epochs, element_shape=[width])

        hp = self.health

        def body(e, rows):
            w0 = hp.read() if hp is not None else None
            loss, grads, pred, *acts = self.train_step(x, y)
            self._update(self.train_metrics, y, pred)
            parts = [loss, *(grads or [])]
            if self.val is not None or self.metric_names:
                vloss, results = self._epoch_end(xv, yv)
                parts += ([vloss] if self.val is not None else []) + results
            parts += self._params()
            if hp is not None:
                parts += hp.parts(w0, None, acts[0] if acts else None)
            return e + 1, rows.write(e, self._row(parts))

        def epochs(e, rows, end):
            return tf.while_loop(lambda e, rows: e < end, body, (e, rows))

        if not self.path_vars:
            _, rows = epochs(tf.constant(0), rows, n_epochs)
            return {"rows": rows.stack()}

        # Epochs in runs that end on the stride (or at the call's end), the weights written
        # after each run: no per-epoch test, which costs a tiny epoch a fifth of its time.
        def run(e, rows, path):
            done = epoch0 + tf.cast(e, tf.int64)
            end = tf.minimum(e + tf.cast(stride - done % stride, tf.int32), n_epochs)
            e, rows = epochs(e, rows, end)
            return e, rows, self._path_write(path, epoch0 + tf.cast(e, tf.int64))

        state = (tf.constant(0), rows, self._path_start())
        _, rows, path = tf.while_loop(lambda e, *_: e < n_epochs, run, state)
        return {"rows": rows.stack(), "path": path}

    def _loop_batches(self, body, cond, state, it=None):
        """A tf.while_loop over batches; `it` threads a Dataset iterator's next element."""
        if it is None:
            return tf.while_loop(cond, body, state)
        out = tf.while_loop(
            lambda *s: cond(*s[:-1]) & s[-1].has_value(),
            lambda *s: (*body(*s[:-1], s[-1].get_value()), it.get_next_as_optional()),
            (*state, it.get_next_as_optional()),
        )
        return out[:-1]

    def _batch(self, x, y, perm, b):
        """Batch b: a slice, or a gather through this epoch's permutation."""
        lo = b * self.batch_size
        hi = tf.minimum(lo + self.batch_size, self.data.n)
        if perm is None:
            return tf.nest.map_structure(lambda t: t[lo:hi], (x, y))
        idx = perm[lo:hi]
        return tf.nest.map_structure(lambda t: tf.gather(t, idx), (x, y))

    def _epoch(self, x, y, epoch, start, stop, last_sq, batch_ta, hs=(), it=None):
        """Batches [start, stop) of one epoch, stopping at the first non-finite step.

        `it` iterates a Dataset of known length, repeated: one iterator per call, not
        per epoch (making one costs about a millisecond)."""
        collect, values = self.collect_batches, self.grads_are_values
        perm, hp = None, self.health

        def body(b, ok, total, count, gsum, last_sq, bta, hs, elem=None):
            if it is not None:
                elem = it.get_next()
            xb, yb = elem if elem is not None else self._batch(x, y, perm, b)
            loss, grads, pred, *acts = self.train_step(xb, yb)
            self._update(self.train_metrics, yb, pred)
            # Keras `fit` reports the mean of the steps' losses weighted by their batch
            # sizes (its loss tracker); a short last batch counts for what it holds
            size = batch_samples(xb)
            if collect:
                bta = bta.write(b - start, self._row([loss, size, *self._running()]))
            ok = tf.math.is_finite(loss)
            if grads is not None:
                sq = tf.stack(grads)
                sq = sq * sq if values else sq
                gn = tf.sqrt(tf.reduce_sum(sq))
                gsum, last_sq, ok = gsum + gn, sq, tf.math.is_finite(loss + gn)
                if hp is not None:
                    hs = hp.step(hs, sq, acts[0] if acts else None)
            return b + 1, ok, total + loss * size, count + size, gsum, last_sq, bta, hs

        zero = tf.constant(0.0)
        state = (start, tf.constant(True), zero, zero, zero, last_sq, batch_ta, hs)
        if isinstance(self.data, DatasetData) and it is None:
            return self._loop_batches(body, lambda b, ok, *_: ok, state, iter(self.data.ds))
        if self.shuffle and it is None:
            seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
            perm = tf.random.experimental.stateless_shuffle(tf.range(self.data.n), seed)
        return self._loop_batches(body, lambda b, ok, *_: (b < stop) & ok, state)

    def _call_batches(self, x, y, xv, yv, epoch0, n_epochs, b0, b1, stride, it=None):
        nb = self.steps_per_epoch
        rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        if it is None and isinstance(self.data, DatasetData) and nb is not None:
            it = iter(self.data.ds.repeat())

        hp = self.health

        def body(e, ok, end_batch, last_sq, batch_ta, rows, path):
            start = tf.where(e == 0, b0, 0)
            stop = tf.where(e == n_epochs - 1, b1, nb or 0)
            epoch = epoch0 + tf.cast(e, tf.int64)
            hs = ()
            if hp is not None:  # the epoch's starting weights, and its running sums
                hp.mark(start)
                hs = hp.start()
            b, ok, total, count, gsum, last_sq, batch_ta, hs = self._epoch(
                x, y, epoch, start, stop, last_sq, batch_ta, hs, it
            )
            complete = ok & (b == nb) if nb is not None else ok
            steps, done = tf.cast(b - start, tf.float32), tf.cast(complete, tf.float32)
            parts = [total, gsum, steps, done, count]
            if self.val is not None or self.metric_names:
                values = tf.cond(complete, lambda: self._epoch_end_flat(xv, yv), self._skipped)
                parts += values
            parts += self._params()
            if hp is not None:
                parts += hp.parts(None, hs)
            path = self._path_step(path, epoch + 1, stride, complete)
            return e + 1, ok, b, last_sq, batch_ta, rows.write(e, self._row(parts)), path

        state = (
            tf.constant(0),
            tf.constant(True),
            tf.constant(0),
            tf.zeros([self.n_grad_vars]),
            tf.TensorArray(
                tf.float32, size=0, dynamic_size=True, element_shape=[2 + len(self.train_metrics)]
            ),
            rows,
            self._path_start(),
        )
        _, ok, end_batch, last_sq, batch_ta, rows, path = tf.while_loop(
            lambda e, ok, *_: (e < n_epochs) & ok, body, state
        )
        out = {"rows": rows.stack(), "ok": ok, "end_batch": end_batch, "last_sq": last_sq}
        if path:
            out["path"] = path
        if self.collect_batches:
            out["batch_rows"] = batch_ta.stack()
        return out

    # -- end of epoch: metrics and validation ----------------------------------------

    def _epoch_end(self, xv, yv) -> tuple[tf.Tensor | None, list[tf.Tensor]]:
        """Training metric results (then reset), validation loss and metrics."""
        results = self._results(self.train_metrics)
        vloss = None
        if self.val is not None:
            vloss, val_results = self._validate(xv, yv)
            results += val_results
        return vloss, results

    def _epoch_end_flat(self, xv, yv) -> list[tf.Tensor]:
        vloss, results = self._epoch_end(xv, yv)
        return ([vloss] if vloss is not None else []) + results

    def _skipped(self) -> list[tf.Tensor]:
        n = len(self.metric_names) + (1 if self.val is not None else 0)
        return [tf.constant(np.nan, tf.float32)] * n

    def _running(self) -> list[tf.Tensor]:
        """The training metrics' results so far this epoch (not reset)."""
        return [tf.cast(tf.reshape(m.result(), []), tf.float32) for m in self.train_metrics]

    @staticmethod
    def _results(metrics) -> list[tf.Tensor]:
        out = [tf.cast(tf.reshape(m.result(), []), tf.float32) for m in metrics]
        for m in metrics:
            m.reset_state()
        return out

    def _validate(self, xv, yv):
        """Validation loss (no update) and validation metrics."""

        def body(b, total, count, elem=None):
            xb, yb = elem if elem is not None else self._val_batch(xv, yv, b)
            loss, pred = self.eval_step(xb, yb)
            self._update(self.val_metrics, yb, pred)
            size = batch_samples(xb)
            return b + 1, total + loss * size, count + size

        state = (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        if isinstance(self.val, DatasetData):
            _, total, count = self._loop_batches(
                body, lambda *_: tf.constant(True), state, iter(self.val.ds)
            )
        else:
            nvb = batch_count(self.val.n, self.batch_size)
            if nvb == 1:  # one batch: its loss as it is (exact, also for sum losses)
                loss, pred = self.eval_step(xv, yv)
                self._update(self.val_metrics, yv, pred)
                total, count = loss, tf.constant(1.0)
            else:
                _, total, count = tf.while_loop(lambda b, *_: b < nvb, body, state)
        # weighted by batch size, as Keras evaluates: the mean over samples for mean losses
        return total / tf.maximum(count, 1.0), self._results(self.val_metrics)

    def _val_batch(self, x, y, b):
        lo = b * self.batch_size
        return tf.nest.map_structure(lambda t: t[lo : lo + self.batch_size], (x, y))


def batch_samples(x: Any) -> tf.Tensor:
    """Samples in a batch (float32), as Keras counts them: the first input's first dimension;
    a distributed batch's local parts added up (a worker's count is proportional to the
    global one, which is all a weighted mean needs)."""
    leaf = tf.nest.flatten(x)[0]
    if isinstance(leaf, tf.distribute.DistributedValues):
        return tf.cast(tf.add_n([tf.shape(v)[0] for v in leaf.values]), tf.float32)
    return tf.cast(tf.shape(leaf)[0], tf.float32)


# -- errors raised inside the compiled call ----------------------------------------------


def step_error(err: Exception) -> Exception:
    """An error from inside the compiled call as the user should read it: one exception of
    the same type whose message is the user's own message, then where in the user's code
    it was raised (function, file, line), without TensorFlow's node trace. The original
    is kept as `__cause__` by the caller (`raise step_error(err) from err`). Errors that
    carry no such trace are returned as they are."""
    message = traced_message(err)
    if message is None:
        return err
    try:
        if isinstance(err, tf.errors.OpError):
            return type(err)(err.node_def, err.op, message)
        return type(err)(message)
    except Exception:  # an exception type that takes other arguments
        return RuntimeError(message)
