"""From a call's health rows to the `GradientTable`, and from the table to `Finding`s.

`Recorder` (host side, one per trainer) merges an epoch split across calls, derives the
weight statistics of small models from their recorded parameters, and appends completed
epochs to the table. `Watch` reads the table after each call and reports each problem
once per layer, by the `HealthThresholds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from tapemagic.training.health import (
    Finding,
    HealthPlan,
    HealthRows,
    HealthThresholds,
    layer_groups,
    relu_taps,
)
from tapemagic.training.health_first_step import first_step_findings
from tapemagic.training.health_table import PER_VARIABLE, GradientTable
from tapemagic.training.steps import tapped_train_step
from tapemagic.variables import unwrap


class Recorder:
    """Turns each call's `HealthRows` into table rows for the epochs it completed."""

    def __init__(self, plan: HealthPlan):
        self.plan = plan
        self._carry: tuple | None = None  # sums of an epoch a call left unfinished
        self._prev: np.ndarray | None = None  # host weights: parameters before the call
        self._start: np.ndarray | None = None  # host weights: where an unfinished epoch began

    def reset(self) -> None:
        """Forget an unfinished epoch (the weights went back)."""
        self._carry = self._start = None

    def before_call(self) -> None:
        """With host weights: the parameters as the call starts (after any rollback)."""
        if self.plan.weights == "host":
            self._prev = np.concatenate(
                [np.ravel(v.numpy()).astype(np.float64) for v in self.plan.variables]
            )

    def commit(
        self,
        rows: HealthRows,
        steps: np.ndarray,
        params: np.ndarray | None,
        first: int,
        n_done: int,
        continues: bool,
        ok: bool,
        table: GradientTable,
    ) -> None:
        """Append the `n_done` completed epochs (from epoch `first`); `continues`: the
        call's first epoch began in an earlier call."""
        grad, steps = rows.grad_sq.copy(), steps.astype(np.float64).copy()
        weight, delta = self._weights(
            rows, params, len(steps), continues, ok and n_done < len(steps)
        )
        act = None if rows.act_max is None else rows.act_max.copy()
        if continues and self._carry is not None and len(steps):
            g0, s0, a0 = self._carry
            grad[0] += g0
            steps[0] += s0
            if act is not None:
                act[0] = np.maximum(act[0], a0)
        self._carry = None
        if ok and n_done < len(steps):  # the call ended inside an epoch
            k = len(steps) - 1
            self._carry = (grad[k], steps[k], None if act is None else act[k])
        n = n_done
        if not n:
            return
        s = np.maximum(steps[:n], 1.0)[:, None]
        dead = None
        if act is not None:
            bounds = np.cumsum([0] + [t.units for t in self.plan.taps])
            never = act[:n] <= 0.0
            dead = np.stack(
                [never[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                axis=1,
            )
        table.append(
            range(first, first + n),
            np.sqrt(grad[:n] / s),
            np.sqrt(weight[:n]),
            np.sqrt(delta[:n]) / s,
            dead,
        )

    def _weights(
        self, rows: HealthRows, params: np.ndarray | None, k: int, continues: bool, unfinished: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Squared weight norms at each row's end and squared change since its epoch began."""
        if self.plan.weights == "graph":  # the change since the epoch's start
            return rows.weight_sq.copy(), rows.delta_sq.copy()
        if self.plan.weights == "off":
            nan = np.full((k, self.plan.n), np.nan)
            return nan, nan.copy()
        values = params[:k] if params is not None else np.zeros((k, 0))
        before = np.concatenate([self._prev[None, :], values[:-1]]) if k else values
        if k and continues and self._start is not None:  # the epoch began in an earlier call
            before[0] = self._start
        self._start = before[-1].copy() if k and unfinished else None
        sizes = [int(np.prod(v.shape)) for v in self.plan.variables]
        cut = np.cumsum([0, *sizes])

        def per_var(a: np.ndarray) -> np.ndarray:
            return np.stack(
                [(a[:, i:j] ** 2).sum(axis=1) for i, j in zip(cut, cut[1:], strict=False)], 1
            )

        if k:
            self._prev = values[-1].copy()
        return per_var(values), per_var(values - before)


class Watch:
    """Reads the table after each call; each (kind, layer) is reported once."""

    def __init__(self, thresholds: HealthThresholds, zero_start: Sequence[str] = ()):
        self.t = thresholds
        self.zero_start = set(zero_start)  # layers whose weights all start at 0
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str]] = set()
        self._checked = 0  # table rows already looked at

    def reset(self) -> None:
        """Forget what was reported after training (the weights went back)."""
        self.findings = [f for f in self.findings if f.kind == "no-gradient"]
        self._seen = {(f.kind, f.layer) for f in self.findings}
        self._checked = 0

    def judged(self, n: int) -> None:
        """The table's first n rows were checked elsewhere (a resumed history)."""
        self._checked = n

    def add(self, findings: Sequence[Finding]) -> list[Finding]:
        new = [f for f in findings if (f.kind, f.layer) not in self._seen]
        for f in new:
            self._seen.add((f.kind, f.layer))
            self.findings.append(f)
        return new

    def check(self, table: GradientTable, lr: float | None) -> list[Finding]:
        """New findings among the rows added since the last check (and enough before)."""
        n = len(table)
        if n < self._checked:  # truncated
            self._checked = n
        if n == self._checked:
            return []
        t = self.t
        back = max(t.epochs, t.exploding_window)
        since = max(0, self._checked - back)
        new_from = self._checked - since  # rows before this are context only
        self._checked = n
        epochs = table.epoch_numbers(since)
        found: list[Finding] = []
        grads = table.layer_stat("grad_norm", since)
        found += self._vanishing(table.layers, grads, epochs, new_from)
        first = table.layer_stat("grad_norm", 0, 1)
        found += self._exploding(table.layers, grads, first, epochs, new_from)
        ratio = table.layer_stat("update_ratio", since)
        found += self._updates(table.layers, ratio, epochs, new_from, lr)
        dead = table.layer_stat("dead_fraction", since)
        found += self._dead(table.relu_layers, dead, epochs, new_from)
        # a layer whose gradient vanished or whose units died: its small updates follow;
        # a dead ReLU layer's gradient is zero: that it died says why
        causes = {f.layer for f in found} | {layer for _, layer in self._seen}
        dead_ones = {f.layer for f in found if f.kind == "dead-relu"}
        dead_ones |= {layer for kind, layer in self._seen if kind == "dead-relu"}
        found = [
            f for f in found
            if not (f.kind == "update-too-small" and f.layer in causes)
            and not (f.kind == "vanishing" and f.layer in dead_ones)
        ]  # fmt: skip
        return self.add(found)

    def _runs(self, mask: np.ndarray, new_from: int) -> int | None:
        """Index of the first row ending a run of `epochs` true rows, at or after new_from."""
        k = self.t.epochs
        if len(mask) < k:
            return None
        full = np.convolve(mask.astype(np.int64), np.ones(k, np.int64), "valid") == k
        ends = np.flatnonzero(full) + k - 1
        ends = ends[ends >= new_from]
        return int(ends[0]) if len(ends) else None

    def _vanishing(self, layers, grads, epochs, new_from) -> list[Finding]:
        if len(layers) < 3 or not len(grads):
            return []
        out = []
        for j, name in enumerate(layers):
            others = np.median(np.delete(grads, j, axis=1), axis=1)
            mask = grads[:, j] < self.t.vanishing_ratio * others
            i = self._runs(mask, new_from)
            if i is None:
                continue
            g, m = grads[i, j], others[i]
            out.append(Finding(
                "vanishing", name, int(epochs[i]),
                f"epoch {epochs[i]}: layer {name}'s gradient norm ({g:.2g}) has been over "
                f"{1 / self.t.vanishing_ratio:.0f} times smaller than the other layers' "
                f"(median {m:.2g}) for {self.t.epochs} epochs: a vanishing gradient, so it "
                "barely learns; use ReLU-family activations instead of sigmoid or tanh in deep "
                "stacks, He or Glorot initialisation, BatchNormalization, or residual "
                "connections",
            ))  # fmt: skip
        return out

    def _exploding(self, layers, grads, first, epochs, new_from) -> list[Finding]:
        w = self.t.exploding_window
        if len(grads) < 2 or not len(first):
            return []
        out = []
        for j, name in enumerate(layers):
            g = grads[:, j]
            # lows[i]: the smallest norm in the w epochs before i (inf where there are none)
            padded = np.concatenate([np.full(w, np.inf), g])
            lows = sliding_window_view(padded, w)[: len(g)].min(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                grew = (lows > 0) & np.isfinite(lows) & (g >= self.t.exploding_growth * lows)
            grew &= g > first[0, j]
            grew[: max(1, new_from)] = False
            hits = np.flatnonzero(grew)
            if not len(hits):
                continue
            i = int(hits[0])
            out.append(Finding(
                "exploding", name, int(epochs[i]),
                f"epoch {epochs[i]}: layer {name}'s gradient norm grew {g[i] / lows[i]:.2g}"
                f"-fold within {w} epochs (to {g[i]:.2g}): an exploding gradient; "
                "clip gradients (e.g. optimizer=keras.optimizers.Adam(clipnorm=1.0)), "
                "lower the learning rate, or add normalisation (BatchNormalization, "
                "LayerNormalization)",
            ))  # fmt: skip
        return out

    def _updates(self, layers, ratio, epochs, new_from, lr) -> list[Finding]:
        out, t = [], self.t
        for j, name in enumerate(layers):
            r = ratio[:, j]
            # weights that start at 0 change by large fractions of themselves at first
            warm = epochs >= (t.warmup if name in self.zero_start else 0)
            high = (r > t.update_high) & warm
            i = self._runs(high, new_from)
            if i is not None:
                fix = "lower the learning rate"
                if lr:  # the rate that would bring the ratio to the top of the usual range
                    fix += f" (learning_rate={lr * 1e-2 / r[i]:.2g} would bring it to 1e-2)"
                out.append(Finding(
                    "update-too-large", name, int(epochs[i]),
                    f"epoch {epochs[i]}: each step changes layer {name}'s weights by "
                    f"{r[i]:.2g} of their norm (usually about 1e-3) for {t.epochs} epochs: the "
                    f"learning rate is too high for this layer; {fix}, or normalise the "
                    "inputs it gets (features, or the layer before) so its gradient is smaller",
                ))  # fmt: skip
                continue
            low = (r < t.update_low) & (epochs < t.epochs)
            i = self._runs(low, new_from)
            if i is not None:
                out.append(Finding(
                    "update-too-small", name, int(epochs[i]),
                    f"epoch {epochs[i]}: each step changes layer {name}'s weights by "
                    f"{r[i]:.2g} of their norm (usually about 1e-3) from the start: it barely "
                    "learns; raise the learning rate, or check that its gradient is not "
                    "vanishing",
                ))  # fmt: skip
        return out

    def _dead(self, relu_layers, dead, epochs, new_from) -> list[Finding]:
        out = []
        for j, name in enumerate(relu_layers):
            i = self._runs(dead[:, j] >= self.t.dead_fraction, new_from)
            if i is None:
                continue
            out.append(Finding(
                "dead-relu", name, int(epochs[i]),
                f"epoch {epochs[i]}: {dead[i, j]:.0%} of layer {name}'s ReLU units were never "
                f"active in the epoch for {self.t.epochs} epochs (dead ReLUs): they output 0 "
                "and get no gradient, so they do not recover; lower the learning rate, start "
                "the biases at 0 with He initialisation, or use LeakyReLU / ELU",
            ))  # fmt: skip
        return out


class TrainerHealth:
    """A trainer's gradient health: what its loop records, the recorder, the findings."""

    def __init__(self, style: Any, thresholds: HealthThresholds, host_weights: bool, dist: bool):
        self.style, self.distributed = style, dist
        self.layers, self.layer_of = layer_groups(style.names, style.model)
        taps, tapped = ([], None) if dist or style.kind != "model" else relu_taps(style.model)
        weights = "off" if dist else "host" if host_weights else "graph"
        self.plan = HealthPlan(style.trainable, taps, tapped, weights)
        self.recorder = Recorder(self.plan)
        nonzero = {self.layers[i] for v, i in zip(style.trainable, self.layer_of, strict=True)
                   if np.any(unwrap(v).numpy())}  # fmt: skip
        self.zero_start = [name for name in self.layers if name not in nonzero]
        self.watch = Watch(thresholds, self.zero_start)

    @classmethod
    def make(cls, health: Any, style: Any, host_weights: bool, dist: bool) -> TrainerHealth | None:
        """From `Trainer(health=...)`: True, False or a `HealthThresholds`."""
        if health is False or health is None:
            return None
        if health is True:
            health = HealthThresholds()
        if not isinstance(health, HealthThresholds):
            raise ValueError(
                f"health must be True, False or a HealthThresholds, not {type(health).__name__}"
            )
        if style.kind == "step":  # a user step takes its own gradient: nothing to read
            return None
        return cls(style, health, host_weights, dist)

    @property
    def findings(self) -> list[Finding]:
        return list(self.watch.findings)

    def new_table(self) -> GradientTable:
        return GradientTable(
            self.style.names,
            self.layers,
            self.layer_of,
            [t.name for t in self.plan.taps],
            self.zero_start,
        )

    def restore(self, history: Any) -> None:
        """A resumed history's table under this model's names (a model made again has new
        layer names: Keras numbers them per process); a table for another structure is not
        kept. Its rows were judged by the run that saved them: not again (this trainer's
        weights may not be those that run started from), only as context for new rows."""
        saved, table = history.gradients, self.new_table()
        history.gradients = table
        fits = saved is not None and (
            len(saved.variables) == len(table.variables)
            and saved.layer_of.tolist() == table.layer_of.tolist()
            and len(saved.relu_layers) == len(table.relu_layers)
        )
        if fits and len(saved):
            stats = [saved.variable_stat(s) for s in PER_VARIABLE]
            table.append(saved.epochs, *stats, saved.layer_stat("dead_fraction"))
            # where that run started, not these (restored) weights, says which layers
            # start at zero and change by large fractions of themselves at first
            table.zero_start = [table.layers[saved.layers.index(n)] for n in saved.zero_start]
            self.watch.zero_start = set(table.zero_start)
        self.watch.judged(len(table))

    def first_step(self, loss_fn: Any, data: Any) -> list[Finding]:
        """Variables the first step's gradient misses (not under a strategy, whose
        variables a plain tape outside its replicas does not see)."""
        if self.distributed:
            return []
        if hasattr(data, "take"):  # arrays: a few samples
            sample = data.take(0, min(64, data.n))
            x, y = sample.x, sample.y
        else:  # a Dataset: its first batch
            x, y = data.first()
        try:
            found = first_step_findings(self.style, loss_fn, x, y, self.watch.t)
        except Exception:  # a check must never stop a trainer being made: no findings
            return []
        return self.watch.add(found)

    def attach(self, engine: Any, loss_fn: Any, optimizer: Any) -> None:
        """Before the loop's first call: record health in its rows."""
        step = None
        if not engine.fast:  # an epoch of several steps may span calls
            with tf.device(engine.device):
                self.plan.make_marks()
        if self.plan.tapped_forward is not None:
            step = tapped_train_step(self.style, loss_fn, optimizer, self.plan.tapped_forward)
        engine.watch(self.plan, step)

    def before_call(self) -> None:
        self.recorder.before_call()

    def commit(
        self, res: Any, b0: int, first: int, n: int, table: GradientTable, lr: float | None
    ) -> list[Finding]:
        """A call's completed epochs into the table; the new findings."""
        if res.health is None:
            return []
        self.recorder.commit(
            res.health, res.steps[: res.touched], res.params, first, n, b0 > 0, res.ok, table
        )
        return self.watch.check(table, lr)

    def reset(self, table: GradientTable) -> None:
        """After `Trainer.reset` (the table is cleared): the weights are this trainer's
        initial ones again, whatever a resumed run had started from."""
        self.watch.reset()
        self.recorder.reset()
        table.zero_start = list(self.zero_start)
        self.watch.zero_start = set(self.zero_start)
