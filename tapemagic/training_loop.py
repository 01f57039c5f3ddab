"""The compiled part of training: one `tf.function` call runs a span of steps.

A call covers whole epochs (`n_epochs` of them, for tiny epochs) or a span of batches
inside one epoch (for big ones), so each call lasts about as long as the trainer asks and
its controls act between calls. Per-epoch sums come back in TensorArrays, so records stay
exact however many epochs one call runs. Each call first copies the state to snapshot
variables: an error mid-call rolls back to the call's start, and a fault can be replayed.

The NaN check is per step but cheap: `is_finite(loss + grad_norm)`, two ops. The bad
update is applied (a conditional would slow the tiny seed loop by about 20%); the
trainer restores the snapshot and replays up to the step before the fault instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic.training_data import ArrayData, DatasetData, batch_count
from tapemagic.training_setup import raw

# step(x, y) -> (loss: f32 scalar, per-variable squared grad norms: f32 vector or None,
#                y_pred or None); it applies the update itself.
TrainStep = Callable[[Any, Any], tuple[tf.Tensor, tf.Tensor | None, Any]]
# evaluate(x, y) -> (loss: f32 scalar, y_pred or None), no update.
EvalStep = Callable[[Any, Any], tuple[tf.Tensor, Any]]


@dataclass
class ChunkResult:
    """What one call did, as NumPy. Arrays have one row per epoch touched."""

    touched: int  # epochs the call worked on; the last may be partial or faulty
    loss_sum: np.ndarray
    gn_sum: np.ndarray | None
    steps: np.ndarray
    ok: bool  # False: the step before `end_batch` had a non-finite loss or gradient
    end_batch: int  # position after the last step, in the last touched epoch
    complete: np.ndarray  # per touched epoch: did it finish (all batches, all finite)
    val_loss: np.ndarray | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    params: np.ndarray | None = None
    batch_losses: np.ndarray | None = None
    last_sq: np.ndarray | None = None  # per-variable squared gradient norm, last step
    seconds: float = 0.0
    traced: bool = False


class CompiledLoop:
    """Holds the compiled chunk function and the snapshot for one configuration."""

    def __init__(
        self,
        *,
        train_step: TrainStep,
        eval_step: EvalStep | None,
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
        collect_batches: bool,
        device: str,
    ):
        self.train_step, self.eval_step = train_step, eval_step
        self.data, self.val = data, val
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, int(seed)
        self.state = [raw(v) for v in state]
        self.record_vars = list(record_vars)
        self.train_metrics, self.val_metrics = list(train_metrics), list(val_metrics)
        self.metric_names = list(metric_names)  # training metrics, then "val_" ones
        self.n_grad_vars, self.collect_batches = n_grad_vars, collect_batches
        self.device = device
        if isinstance(data, ArrayData):
            self.steps_per_epoch: int | None = batch_count(data.n, batch_size)
        else:
            self.steps_per_epoch = data.steps
        with tf.device(device):
            self.snapshot = [
                tf.Variable(v.read_value(), trainable=False, name="snapshot") for v in self.state
            ]
        self._fn = tf.function(self._chunk)

    # -- host side -------------------------------------------------------------------

    def __call__(
        self, epoch0: int, n_epochs: int, b0: int = 0, b1: int | None = None
    ) -> ChunkResult:
        """Run epochs epoch0.. (the first from batch b0, the last up to batch b1)."""
        nb = self.steps_per_epoch
        b1 = (nb if nb is not None else 0) if b1 is None else b1
        traces = self._fn.experimental_get_tracing_count()
        arrays = self.data if isinstance(self.data, ArrayData) else None
        vals = self.val if isinstance(self.val, ArrayData) else None
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
            )
            out = {k: v.numpy() for k, v in out.items()}
        seconds = time.perf_counter() - start
        touched = int(out["touched"])
        return ChunkResult(
            touched=touched,
            loss_sum=out["loss_sum"][:touched].astype(np.float64),
            gn_sum=out["gn_sum"][:touched].astype(np.float64) if "gn_sum" in out else None,
            steps=out["steps"][:touched],
            ok=bool(out["ok"]),
            end_batch=int(out["end_batch"]),
            complete=out["complete"][:touched],
            val_loss=out["val_loss"][:touched].astype(np.float64) if "val_loss" in out else None,
            metrics={k[2:]: out[k][:touched].astype(np.float64) for k in out if k.startswith("m:")},
            params=out["params"][:touched].astype(np.float64) if "params" in out else None,
            batch_losses=out.get("batch_losses"),
            last_sq=out.get("last_sq"),
            seconds=seconds,
            traced=self._fn.experimental_get_tracing_count() != traces,
        )

    def restore_snapshot(self) -> None:
        """Put the state back as it was when the last call started."""
        with tf.device(self.device):
            for v, s in zip(self.state, self.snapshot, strict=True):
                v.assign(s)

    def reset_metrics(self) -> None:
        """Start a fresh epoch's metric accumulation (after a rollback or reset)."""
        for m in self.train_metrics + self.val_metrics:
            m.reset_state()

    # -- compiled side ---------------------------------------------------------------

    def _batch(self, x, y, perm, b):
        """Batch b: a slice, or a gather through this epoch's permutation."""
        bs, n = self.batch_size, self.data.n
        lo = b * bs
        hi = tf.minimum(lo + bs, n)
        if perm is None:
            return tf.nest.map_structure(lambda t: t[lo:hi], (x, y))
        idx = perm[lo:hi]
        return tf.nest.map_structure(lambda t: tf.gather(t, idx), (x, y))

    def _step(self, x, y):
        loss, sq, pred = self.train_step(x, y)
        for m in self.train_metrics:
            m.update_state(y, pred)
        if sq is None:
            return loss, None, None, tf.math.is_finite(loss)
        gn = tf.sqrt(tf.reduce_sum(sq))
        return loss, sq, gn, tf.math.is_finite(loss + gn)

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

    def _epoch(self, x, y, epoch, start, stop, last_sq, batch_ta):
        """Batches [start, stop) of one epoch: sums, steps done, finiteness."""
        collect = self.collect_batches

        def body(b, ok, total, gsum, last_sq, bta, elem=None):
            xb, yb = elem if elem is not None else self._batch(x, y, perm, b)
            loss, sq, gn, ok = self._step(xb, yb)
            if collect:
                bta = bta.write(b - start, loss)
            if gn is not None:
                gsum, last_sq = gsum + gn, sq
            return b + 1, ok, total + loss, gsum, last_sq, bta

        zero = tf.constant(0.0)
        if isinstance(self.data, DatasetData):
            perm = None
            state = (start, tf.constant(True), zero, zero, last_sq, batch_ta)
            return self._loop_batches(body, lambda b, ok, *_: ok, state, iter(self.data.ds))
        if self.steps_per_epoch == 1:  # full batch, as in the seed: no loop, no shuffle
            perm = None
            return body(start, tf.constant(True), zero, zero, last_sq, batch_ta, (x, y))
        perm = None
        if self.shuffle:
            seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
            perm = tf.random.experimental.stateless_shuffle(tf.range(self.data.n), seed)
        state = (start, tf.constant(True), zero, zero, last_sq, batch_ta)
        return self._loop_batches(body, lambda b, ok, *_: (b < stop) & ok, state)

    def _chunk(self, x, y, xv, yv, epoch0, n_epochs, b0, b1):
        for s, v in zip(self.snapshot, self.state, strict=True):
            s.assign(v)
        nb = self.steps_per_epoch

        def ta(dtype=tf.float32):
            return tf.TensorArray(dtype, size=0, dynamic_size=True)

        tas = {
            "loss_sum": ta(),
            "gn_sum": ta(),
            "steps": ta(tf.int32),
            "complete": ta(tf.bool),
            "val_loss": ta(),
            "params": ta(),
            "metrics": tuple(ta() for _ in self.metric_names),
        }

        def body(e, ok, end_batch, last_sq, batch_ta, tas):
            start = tf.where(e == 0, b0, 0)
            stop = tf.where(e == n_epochs - 1, b1, nb or 0)
            epoch = epoch0 + tf.cast(e, tf.int64)
            b, ok, total, gsum, last_sq, batch_ta = self._epoch(
                x, y, epoch, start, stop, last_sq, batch_ta
            )
            complete = ok & (b == nb) if nb is not None else ok
            tas = dict(tas)
            tas["loss_sum"] = tas["loss_sum"].write(e, total)
            tas["gn_sum"] = tas["gn_sum"].write(e, gsum)
            tas["steps"] = tas["steps"].write(e, b - start)
            tas["complete"] = tas["complete"].write(e, complete)
            if self.record_vars:
                flat = [tf.cast(tf.reshape(v, [-1]), tf.float32) for v in self.record_vars]
                tas["params"] = tas["params"].write(e, tf.concat(flat, 0))
            if self.metric_names or self.val is not None:
                vloss, results = self._finish_epoch(complete, xv, yv)
                tas["val_loss"] = tas["val_loss"].write(e, vloss)
                tas["metrics"] = tuple(
                    t.write(e, r) for t, r in zip(tas["metrics"], results, strict=True)
                )
            return e + 1, ok, b, last_sq, batch_ta, tas

        state = (
            tf.constant(0),
            tf.constant(True),
            tf.constant(0),
            tf.zeros([self.n_grad_vars]),
            ta(),
            tas,
        )
        e, ok, end_batch, last_sq, batch_ta, tas = tf.while_loop(
            lambda e, ok, *_: (e < n_epochs) & ok, body, state
        )
        out = {
            "touched": e,
            "ok": ok,
            "end_batch": end_batch,
            "loss_sum": tas["loss_sum"].stack(),
            "steps": tas["steps"].stack(),
            "complete": tas["complete"].stack(),
        }
        if self.n_grad_vars:
            out["gn_sum"] = tas["gn_sum"].stack()
            out["last_sq"] = last_sq
        if self.record_vars:
            out["params"] = tas["params"].stack()
        if self.val is not None:
            out["val_loss"] = tas["val_loss"].stack()
        for name, t in zip(self.metric_names, tas["metrics"], strict=True):
            out["m:" + name] = t.stack()
        if self.collect_batches:
            out["batch_losses"] = batch_ta.stack()
        return out

    # -- end of epoch: metrics and validation ----------------------------------------

    @staticmethod
    def _results(metrics) -> list[tf.Tensor]:
        out = [tf.cast(tf.reshape(m.result(), []), tf.float32) for m in metrics]
        for m in metrics:
            m.reset_state()
        return out

    def _validate(self, xv, yv):
        """Mean validation loss over its batches (no update), and validation metrics."""

        def body(b, total, elem=None):
            xb, yb = elem if elem is not None else self._batch_plain(xv, yv, b)
            loss, pred = self.eval_step(xb, yb)
            for m in self.val_metrics:
                m.update_state(yb, pred)
            return b + 1, total + loss

        state = (tf.constant(0), tf.constant(0.0))
        if isinstance(self.val, DatasetData):
            count, total = self._loop_batches(body, lambda b, t: True, state, iter(self.val.ds))
        else:
            nvb = batch_count(self.val.n, self.batch_size)
            if nvb == 1:
                count, total = body(0, tf.constant(0.0), (xv, yv))
            else:
                count, total = tf.while_loop(lambda b, t: b < nvb, body, state)
        vloss = total / tf.maximum(tf.cast(count, tf.float32), 1.0)
        return vloss, self._results(self.val_metrics)

    def _batch_plain(self, x, y, b):
        lo = b * self.batch_size
        return tf.nest.map_structure(lambda t: t[lo : lo + self.batch_size], (x, y))

    def _finish_epoch(self, complete, xv, yv):
        """At a completed epoch: metric results (then reset) and validation."""
        n_out = len(self.metric_names)

        def finish():
            results = self._results(self.train_metrics)
            vloss = tf.constant(np.nan, tf.float32)
            if self.val is not None:
                vloss, val_results = self._validate(xv, yv)
                results += val_results
            return [vloss, *results]

        def skip():
            return [tf.constant(np.nan, tf.float32)] * (1 + n_out)

        values = tf.cond(complete, finish, skip)
        return values[0], values[1:]
