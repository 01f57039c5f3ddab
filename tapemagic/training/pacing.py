"""Bookkeeping between compiled calls: where training stands and how big the next call is.

`Position` is the invariant the trainer keeps: the weights always correspond to `epoch`
completed epochs plus `batch` steps of the next one, whose sums are a `PartialEpoch`.
`Pacer` sizes calls so each lasts about `CALL_SECONDS`: many tiny epochs per call, or a
span of batches of a big epoch, growing at most 4x per call so a poor first estimate
cannot freeze the controls. `epoch_columns` turns what a call did into history records
and the position after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tapemagic.training.history import EpochColumns
from tapemagic.training.loop import CallResult

CALL_SECONDS = 0.1  # target length of one compiled call: how fast the controls act
# The most epochs one run may ask for: far beyond any run that can finish (a million
# epochs a second would take 30 years), and small enough that epoch numbers stay exact
# in the int64 counters and float64 columns they go through.
MAX_EPOCHS = 10**15
GROWTH = 4  # a call may be at most this many times the largest call made so far


def check_epochs(epochs: Any) -> int:
    """A whole number of epochs from 0 to MAX_EPOCHS, as an int; else a one-line ValueError.
    0 runs nothing; no number is ever rounded or capped."""
    whole = isinstance(epochs, int | np.integer) and not isinstance(epochs, bool | np.bool_)
    if whole and 0 <= epochs <= MAX_EPOCHS:
        return int(epochs)
    if whole:
        raise ValueError(
            f"epochs must be from 0 to {MAX_EPOCHS:,} (the most one run can count), got "
            f"{int(epochs)}: run(n) trains n more epochs"
        )
    hint = (
        f" (pass {int(epochs)})"
        if isinstance(epochs, float) and epochs.is_integer() and epochs >= 0
        else ""
    )
    raise ValueError(
        f"epochs must be a whole number such as 100, got {type(epochs).__name__} {epochs!r}{hint}"
    )


class CallPlan(NamedTuple):
    """What one compiled call runs: epochs epoch0.. (n_epochs of them), the first from
    batch b0, the last up to batch b1 (None: to its end)."""

    epoch0: int
    n_epochs: int
    b0: int = 0
    b1: int | None = None


@dataclass(frozen=True)
class PartialEpoch:
    """Sums over the steps done so far of an epoch that a call left unfinished."""

    loss: float = 0.0  # sum of the steps' losses times their batch sizes
    gn: float = 0.0  # sum of the steps' gradient norms
    steps: float = 0.0
    seconds: float = 0.0
    samples: float = 0.0

    @classmethod
    def after(cls, res: CallResult, carried: PartialEpoch, seconds: float) -> PartialEpoch:
        """The last epoch `res` touched: its sums plus those `carried` into the call (when
        that epoch is the one the call started inside) and its share of the call's time."""
        gn = 0.0 if res.gn_sum is None else float(res.gn_sum[-1])
        return cls(
            loss=float(res.loss_sum[-1]) + carried.loss,
            gn=gn + carried.gn,
            steps=float(res.steps[-1]) + carried.steps,
            seconds=seconds + carried.seconds,
            samples=float(res.samples[-1]) + carried.samples,
        )

    def to_json(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "gn": self.gn,
            "steps": self.steps,
            "seconds": self.seconds,
            "samples": self.samples,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> PartialEpoch:
        data = data or {}
        loss, gn, steps, seconds = (
            float(data.get(k, 0.0)) for k in ("loss", "gn", "steps", "seconds")
        )
        # saved before losses were weighted by batch size: its loss is a plain sum over steps
        samples = float(data.get("samples", steps))
        return cls(loss, gn, steps, seconds, samples)


@dataclass
class Position:
    """Completed epochs, steps into the next one, and that partial epoch's sums."""

    epoch: int = 0
    batch: int = 0
    partial: PartialEpoch = field(default_factory=PartialEpoch)

    def set(self, epoch: int, batch: int = 0, partial: PartialEpoch | None = None) -> None:
        self.epoch, self.batch = epoch, batch
        self.partial = partial if partial is not None and batch else PartialEpoch()

    def move_to(self, other: Position) -> None:
        self.set(other.epoch, other.batch, other.partial)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "partial": self.partial.to_json()}


@dataclass
class Pacer:
    """Measures seconds per step and plans the next call."""

    seconds: float = CALL_SECONDS
    per_step: float | None = None
    max_steps: int = 1
    epoch_steps: int = 1  # steps of the last epoch seen (for Datasets of unknown length)

    def plan(
        self,
        pos: Position,
        steps_per_epoch: int | None,
        limit: int,
        one_epoch: bool,
        spans_ok: bool = True,
    ) -> CallPlan:
        """Epochs [pos.epoch, limit) remain; `one_epoch` when callbacks need each epoch;
        `spans_ok` False (a Dataset) plans whole epochs only."""
        nb, e, b = steps_per_epoch, pos.epoch, pos.batch
        remaining = max(limit - e, 1)
        budget = 1
        if self.per_step is not None:
            budget = max(1, min(int(self.seconds / self.per_step), GROWTH * self.max_steps))
        if nb is None or not spans_ok:  # whole epochs only
            k = 1 if self.per_step is None else max(1, budget // max(nb or self.epoch_steps, 1))
            return CallPlan(e, 1 if one_epoch else min(k, remaining), 0, nb)
        if b > 0 or budget < nb:  # a span of batches inside one epoch
            return CallPlan(e, 1, b, min(nb, b + budget))
        return CallPlan(e, 1 if one_epoch else min(budget // nb, remaining), 0, nb)

    def measured(self, res: CallResult) -> None:
        steps = int(res.steps.sum())
        if not res.traced and steps > 0:
            s = res.seconds / steps
            self.per_step = s if self.per_step is None else 0.5 * (self.per_step + s)
        self.max_steps = max(self.max_steps, steps)
        if len(res.steps):
            self.epoch_steps = max(int(res.steps[0]), 1)


class Completed(NamedTuple):
    """What a call completed, and where the next call starts."""

    columns: EpochColumns
    after: Position | None  # None: leave the position as it is (a fault decides)


def epoch_columns(
    res: CallResult, pos: Position, plan: CallPlan, param_names: list[str]
) -> Completed:
    """The epochs a call completed, as history columns, and the position after it.

    A call that began mid-epoch (plan.b0 > 0) adds the partial sums carried in `pos`. A
    call that ends mid-epoch carries its sums on. After a fault only the completed epochs
    count; the fault handler decides the rest.
    """
    steps = res.steps.astype(np.float64)
    share = steps * (res.seconds / max(steps.sum(), 1.0))  # each epoch's part of the call
    seconds = share.copy()
    loss = res.loss_sum.copy()
    samples = res.samples.astype(np.float64)
    gn = None if res.gn_sum is None else res.gn_sum.copy()
    carried = pos.partial if plan.b0 > 0 else PartialEpoch()
    if plan.b0 > 0 and len(steps):
        loss[0] += carried.loss
        samples[0] += carried.samples
        steps[0] += carried.steps
        seconds[0] += carried.seconds
        if gn is not None:
            gn[0] += carried.gn
    n = int(res.complete.sum())
    first = pos.epoch
    columns = EpochColumns(
        epochs=range(first, first + n),
        # Keras's epoch loss: the sample-weighted mean, divided in float32 as its tracker does
        loss=(loss[:n].astype(np.float32) / samples[:n].astype(np.float32)).astype(np.float64),
        val_loss=None if res.val_loss is None else res.val_loss[:n],
        grad_norm=None if gn is None else gn[:n] / steps[:n],
        seconds=seconds[:n],
        metrics={k: v[:n] for k, v in res.metrics.items()},
        params=None
        if res.params is None
        else {name: res.params[:n, j] for j, name in enumerate(param_names)},
    )
    after = None
    if res.ok and n < res.touched:  # stopped inside an epoch: carry its sums
        into_last = carried if res.touched == 1 else PartialEpoch()
        partial = PartialEpoch.after(res, into_last, float(share[-1]))
        after = Position(first + n, res.end_batch, partial)
    elif res.ok or n:
        after = Position(first + n)
    return Completed(columns, after)
