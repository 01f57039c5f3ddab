"""Bookkeeping between compiled calls: where training stands and how big the next call is.

`Position` is the invariant the trainer keeps: the weights always correspond to `epoch`
completed epochs plus `batch` steps of the next one, whose sums are in `partial`.
`Pacer` sizes calls so each lasts about `CALL_SECONDS`: many tiny epochs per call, or a
span of batches of a big epoch, growing at most 4x per call so a poor first estimate
cannot freeze the controls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tapemagic.training.loop import ChunkResult

CALL_SECONDS = 0.1  # target length of one compiled call: how fast the controls act
GROWTH = 4  # a call may be at most this many times the largest call made so far

Plan = tuple[int, int, int, int | None]  # (epoch0, n_epochs, b0, b1)


def _empty() -> dict[str, float]:
    return {"loss": 0.0, "gn": 0.0, "steps": 0.0, "seconds": 0.0}


@dataclass
class Position:
    """Completed epochs, steps into the next one, and that partial epoch's sums."""

    epoch: int = 0
    batch: int = 0
    partial: dict[str, float] = field(default_factory=_empty)

    def set(self, epoch: int, batch: int = 0, partial: dict | None = None) -> None:
        self.epoch, self.batch = epoch, batch
        self.partial = dict(partial) if partial and batch else _empty()

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "partial": dict(self.partial)}


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
    ) -> Plan:
        """Epochs [pos.epoch, limit) remain; `one_epoch` when callbacks need each epoch;
        `spans_ok` False (a Dataset) plans whole epochs only."""
        nb, e, b = steps_per_epoch, pos.epoch, pos.batch
        remaining = max(limit - e, 1)
        budget = 1
        if self.per_step is not None:
            budget = max(1, min(int(self.seconds / self.per_step), GROWTH * self.max_steps))
        if nb is None or not spans_ok:  # whole epochs only
            k = 1 if self.per_step is None else max(1, budget // max(nb or self.epoch_steps, 1))
            return e, 1 if one_epoch else min(k, remaining), 0, nb
        if b > 0 or budget < nb:  # a span of batches inside one epoch
            return e, 1, b, min(nb, b + budget)
        return e, 1 if one_epoch else min(budget // nb, remaining), 0, nb

    def measured(self, res: ChunkResult) -> None:
        steps = int(res.steps.sum())
        if not res.traced and steps > 0:
            s = res.seconds / steps
            self.per_step = s if self.per_step is None else 0.5 * (self.per_step + s)
        self.max_steps = max(self.max_steps, steps)
        if len(res.steps):
            self.epoch_steps = max(int(res.steps[0]), 1)


def epoch_columns(
    res: ChunkResult, pos: Position, b0: int, param_names: list[str]
) -> tuple[dict, tuple | None]:
    """The epochs a call completed, as History.extend keyword columns, and where the next
    call starts: (epoch, batch, partial), or None to leave `pos` as it is.

    A call that began mid-epoch (b0 > 0) adds the partial sums carried in `pos`. A call
    that ends mid-epoch carries its sums on. After a fault only the completed epochs
    count; the fault handler decides the rest.
    """
    steps = res.steps.astype(np.float64)
    seconds = steps * (res.seconds / max(steps.sum(), 1.0))
    loss = res.loss_sum.copy()
    gn = None if res.gn_sum is None else res.gn_sum.copy()
    if b0 > 0 and len(steps):
        p = pos.partial
        loss[0] += p["loss"]
        steps[0] += p["steps"]
        seconds[0] += p["seconds"]
        if gn is not None:
            gn[0] += p["gn"]
    n = int(res.complete.sum())
    first = pos.epoch
    columns = {
        "epochs": range(first, first + n),
        "loss": loss[:n] / steps[:n],
        "val_loss": None if res.val_loss is None else res.val_loss[:n],
        "grad_norm": None if gn is None else gn[:n] / steps[:n],
        "seconds": seconds[:n],
        "metrics": {k: v[:n] for k, v in res.metrics.items()},
        "params": None
        if res.params is None
        else {name: res.params[:n, j] for j, name in enumerate(param_names)},
    }
    after = None
    if res.ok and n < res.touched:  # stopped inside an epoch: carry its sums
        partial = {
            "loss": float(loss[-1]),
            "gn": 0.0 if gn is None else float(gn[-1]),
            "steps": float(steps[-1]),
            "seconds": float(seconds[-1]),
        }
        after = (first + n, res.end_batch, partial)
    elif res.ok or n:
        after = (first + n, 0, None)
    return columns, after
