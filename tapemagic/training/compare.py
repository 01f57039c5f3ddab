"""Optimizers side by side: copies of one model from the same weights, one per optimizer.

`Comparison` makes one `Trainer` per contender ('sgd:0.001', 'adam:0.07', ...), each on its
own copy of the weights: a Keras model is cloned with its weights; Variables with a
`predict` function get new Variables and a `predict` that reads them (the traced forward
pass with its weight reads replaced, as the landscape does). Each copy is an ordinary
Trainer (its own history, faults and rollbacks), and each gives exactly the losses a
single Trainer gives. The controls (pause, step, stop, reset) act on all of them together.

They run at the same time, one thread each. Where the model allows it (scalar weights,
full-batch data in memory, ops that come out alike in any layout: race.py says which),
their calls also meet at a table and run as one compiled call, their weights stacked:
on a problem as small as the seed's, a copy's epoch is a few microseconds of small ops,
which threads on a few cores could only share out, not save. `threads_because` says why
a comparison runs in threads alone.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapemagic.threads import Worker
from tapemagic.training.history import History
from tapemagic.training.landscape import Landscape, LandscapeMaker, pca_plane, project
from tapemagic.training.race import Fused, Table, why_not
from tapemagic.training.slice_loss import SliceLoss, Substituted, substituted_forward
from tapemagic.training.subject import resolve
from tapemagic.training.trainer import Trainer
from tapemagic.variables import unwrap

NAMES = ("sgd", "momentum", "adam", "rmsprop", "adagrad")


@dataclass(frozen=True)
class Contender:
    """One copy's optimizer: a name and a learning rate (None: the trainer's default)."""

    optimizer: str
    learning_rate: float | None

    @property
    def label(self) -> str:
        return (
            self.optimizer
            if self.learning_rate is None
            else f"{self.optimizer} {self.learning_rate:g}"
        )


def parse_contenders(spec: Any, learning_rate: float | None = None) -> list[Contender]:
    """'sgd,momentum,adam' or ['sgd:0.001', 'adam:0.07'] into contenders; an entry without
    a rate takes `learning_rate`."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if not any(str(item).strip() for item in items):
        raise ValueError("compare needs at least two optimizers, e.g. 'sgd,adam'")
    out = []
    for item in items:
        text = str(item).strip()
        name, _, rate = text.partition(":")
        name = name.strip().lower()
        if name not in NAMES:
            raise ValueError(
                f"compare: unknown optimizer {name!r} in {text!r}: use {', '.join(NAMES)}, "
                "optionally with a rate, e.g. 'adam:0.07'"
            )
        try:
            lr = float(rate) if rate.strip() else learning_rate
        except ValueError:
            raise ValueError(
                f"compare: {text!r}: the learning rate after ':' must be a number, e.g. 'sgd:0.001'"
            ) from None
        out.append(Contender(name, lr))
    if len(out) < 2:
        raise ValueError("compare needs at least two optimizers, e.g. 'sgd,adam'")
    if len({c.label for c in out}) < len(out):
        raise ValueError("compare: the same optimizer and rate twice; give each copy its own")
    return out


@dataclass(frozen=True)
class ComparedLandscape:
    """One grid for all the copies, and each copy's path on it."""

    landscape: Landscape  # the grid; its own path and point are the first copy's
    labels: list[str]
    paths: list[np.ndarray]  # per copy: (P, 2) in the grid's coordinates


class Comparison:
    """Copies of one model trained side by side from the same initial weights.

    `optimizers`: 'sgd,momentum,adam' or a list such as ['sgd:0.001', 'adam:0.07'];
    the other keyword arguments are the `Trainer`'s (model= or params= with predict=,
    loss, data, ...), shared by all copies. Your own model or Variables are not trained:
    each copy trains its own weights."""

    def __init__(self, optimizers: Any, *, learning_rate: float | None = None, **kwargs: Any):
        for taken in ("optimizer", "step", "checkpoint_dir", "strategy"):
            if kwargs.get(taken) is not None:
                raise ValueError(
                    f"compare: {taken}= is not for a comparison"
                    + (" (the optimizers are the first argument)" if taken == "optimizer" else "")
                )
        self.contenders = parse_contenders(optimizers, learning_rate)
        model, params = kwargs.pop("model", None), kwargs.pop("params", None)
        predict = kwargs.pop("predict", None)
        spec = self._spec = resolve(model, params, predict, None)
        kwargs.setdefault("seed", random.randrange(2**31))  # the same batches for every copy
        # the compare panel shows no gradient view, and health's rows keep the copies apart
        kwargs.setdefault("health", False)
        data = kwargs.get("data")
        x_spec = _x_spec(data) if spec.kind == "params" else None
        raw = _substituted(spec, x_spec) if spec.kind == "params" else None
        self.trainers: list[Trainer] = []
        for c in self.contenders:
            subject = self._copy(spec, data, raw, x_spec)
            self.trainers.append(
                Trainer(**subject, optimizer=c.optimizer, learning_rate=c.learning_rate, **kwargs)
            )
        # One compiled call for all the copies where the model allows it (race.py)
        self._refused = why_not(self.trainers, raw.call if raw else None)
        self._table: Table | None = None
        if self._refused is None:
            fused = Fused(raw.call, self.trainers[0]._parts.loss)
            self._table = Table(self.trainers, fused)
            for k, t in enumerate(self.trainers):
                t.wrap_loop(self._table.seat(k))
        self._threads: list[Worker] = []
        self.errors: dict[str, BaseException] = {}
        self._maker: LandscapeMaker | None = None
        self.superseded = False  # a newer comparison of the same model took over
        self.watchers: list[Callable[[], Any]] = []  # told (in its thread) when superseded
        originals = spec.params if spec.kind == "params" else spec.model.variables
        _supersede(self, originals)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.contenders]

    @staticmethod
    def _copy(spec: Any, data: Any, raw: Substituted | None, x_spec: Any) -> dict[str, Any]:
        """The model's subject on fresh weights equal to the original's."""
        if spec.kind == "model":
            model = spec.model
            if not model.built:  # build it so that every copy starts from its weights
                x = data[0] if isinstance(data, tuple | list) else next(iter(data))[0]
                model(tf.nest.map_structure(lambda t: tf.convert_to_tensor(t)[:1], x))
            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
            return {"model": clone}
        copies = {
            name: tf.Variable(v.numpy(), dtype=v.dtype, name=name)
            for name, v in zip(spec.names, spec.params, strict=True)
        }
        variables = list(copies.values())
        forward = _forward_of(raw, spec, x_spec)

        def predict(xs: Any) -> Any:
            # read here, plainly, so that this predict can itself be traced and substituted
            return forward([tf.convert_to_tensor(v) for v in variables], xs)

        return {"params": copies, "predict": predict}

    # -- running (shared controls) ---------------------------------------------------

    @property
    def threads_because(self) -> str | None:
        """Why the copies run one thread each and not in one compiled call (None: they do
        run in one call where their plans agree)."""
        return self._refused or (self._table.broken if self._table else None)

    @property
    def running(self) -> bool:
        # a copy's thread outlives its trainer's run by its last bookkeeping
        return any(t.running for t in self.trainers) or not all(w.ended for w in self._threads)

    def start(self, epochs: int) -> None:
        """Train every copy `epochs` more epochs, each in its own thread (returns at once)."""
        if self.superseded:
            raise RuntimeError(
                "this comparison was superseded by a newer one of the same model: train that one"
            )
        if self.running:
            return
        self.errors = {}
        run = self._table.open() if self._table is not None else 0
        self._threads = [
            Worker(self._work, f"tapemagic-compare-{label}", (k, t, label, epochs, run))
            for k, (t, label) in enumerate(zip(self.trainers, self.labels, strict=True))
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, k: int, trainer: Trainer, label: str, epochs: int, run: int) -> None:
        try:
            trainer.run(epochs)
        except BaseException as err:  # one copy's error ends only that copy's run
            self.errors[label] = err
        finally:
            if self._table is not None:  # the others do not wait for this copy any more
                self._table.leave(k, run)

    def run(self, epochs: int) -> dict[str, History]:
        """Train every copy `epochs` more epochs and wait; returns each copy's history.
        Ctrl-C (the kernel's Interrupt) stops every copy, then raises KeyboardInterrupt."""
        self.start(epochs)
        try:
            self.wait()
        except KeyboardInterrupt:
            self.request_stop()
            self.wait(30)
            epochs_now = ", ".join(f"{label}: {t.epoch}" for label, t in self._pairs())
            raise KeyboardInterrupt(f"comparison stopped at epochs {epochs_now}") from None
        return self.histories

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every copy's run to end, `timeout` seconds in all at most."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.wait(left)
        return all(worker.ended for worker in self._threads)

    def _pairs(self) -> list[tuple[str, Trainer]]:
        return list(zip(self.labels, self.trainers, strict=True))

    def pause(self) -> None:
        for t in self.trainers:
            t.pause()

    def resume(self) -> None:
        for t in self.trainers:
            t.resume()

    def step(self) -> None:
        """During a run: each copy holds after one more epoch; when idle: one epoch each."""
        if self.running:
            for t in self.trainers:
                if t.running:  # a copy that stopped (a fault) stays where it is
                    t.step()
        else:
            self.start(1)

    def request_stop(self) -> None:
        for t in self.trainers:
            t.request_stop()

    def reset(self) -> None:
        self.request_stop()
        if not self.wait(30):
            raise RuntimeError("the copies did not stop within 30 s: nothing was reset")
        for t in self.trainers:
            t.reset()

    @property
    def histories(self) -> dict[str, History]:
        return {label: t.history for label, t in self._pairs()}

    # -- one landscape for all -------------------------------------------------------

    @property
    def has_paths(self) -> bool:
        """A landscape can be drawn: two parameters, or a copy has moved."""
        return self.trainers[0].trajectory.n_weights == 2 or any(
            len(t.trajectory) > 1 for t in self.trainers
        )

    def landscape(self, resolution: int = 61) -> ComparedLandscape:
        """All the copies' paths on one grid: two parameters in their own coordinates;
        otherwise the plane through the shared first weights spanned by the top two
        principal directions of all the paths together."""
        if self._maker is None:
            # the original's forward (plain weight reads) draws the copies' loss
            like = (
                SliceLoss(self.trainers[0], like=self._spec)
                if self._spec.kind == "params"
                else None
            )
            self._maker = LandscapeMaker(self.trainers[0], resolution=resolution, loss=like)
        maker = self._maker
        points = [t.trajectory.points() for t in self.trainers]
        if maker.kind == "parameters":
            plane = maker.plane(points[0])
        elif not self.has_paths:
            raise ValueError(
                "the copies have not moved yet: their landscape is the plane of their paths; "
                "train an epoch first"
            )
        else:
            stacked = np.concatenate([p.weights for p in points])
            first = points[0].initial.astype(np.float64)
            plane = pca_plane(stacked, first, "the paths'", about_center=False)
        land = maker.on_plane(plane, points, resolution)
        paths = [project(p.weights, plane.center, plane.directions) for p in points]
        return ComparedLandscape(land, self.labels, paths)

    def __repr__(self) -> str:
        state = "superseded" if self.superseded else ("running" if self.running else "idle")
        epochs = ", ".join(f"{label}: epoch {t.epoch}" for label, t in self._pairs())
        how = "one thread each" if self.threads_because else "one compiled call"
        return f"Comparison({epochs}; {state}; {how})"


def _x_spec(data: Any) -> Any:
    """The inputs' signature with the batch size left open."""
    x = data[0] if isinstance(data, tuple | list) else next(iter(data))[0]
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    return tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), x)


def _substituted(spec: Any, x_spec: Any) -> Substituted:
    """The original's forward pass as a function of (weight values, x)."""
    return substituted_forward(lambda xs: spec.forward(xs, False), spec.params, spec.names, x_spec)


def _forward_of(raw: Substituted, spec: Any, x_spec: Any) -> Any:
    """The forward pass for one copy: a call op, so a tape differentiates through it.
    Traced once, here, for any batch size, so the copy's thread only calls it. Each copy
    has its own: copies tracing their steps in their threads at the same time cannot
    share one."""
    weights = [tf.TensorSpec(v.shape, v.dtype) for v in spec.params]
    fn = tf.function(raw.call, input_signature=[weights, x_spec], autograph=False)
    fn.get_concrete_function()
    return fn


# The latest comparison of each original variable: re-running a cell that makes one stops
# the older one, which would otherwise go on training its copies in the background.
_latest: weakref.WeakValueDictionary[int, Comparison] = weakref.WeakValueDictionary()
_latest_lock = threading.Lock()


def _supersede(new: Comparison, originals: Any) -> None:
    """Make `new` the comparison of `originals`; older ones of any of them stop and refuse
    to run again. A comparison keeps its originals alive, so their ids are not reused."""
    keys = [id(unwrap(v)) for v in originals]
    with _latest_lock:
        olds = {id(c): c for k in keys if (c := _latest.get(k)) is not None and c is not new}
        for k in keys:
            _latest[k] = new
    for old in olds.values():
        old.superseded = True
        old.request_stop()
        old.wait(30)
        for fn in list(old.watchers):
            fn()
