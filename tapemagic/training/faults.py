"""Non-finite losses and gradients: finding the bad step, going back, explaining it.

Owns the Trainer's `on_nonfinite`: 'restore' replays the faulty call up to the last
finite step; 'keep' leaves the weights for inspection (`restore_last_finite()` later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from tapemagic.training.loop import CallResult, CompiledLoop
from tapemagic.training.pacing import CallPlan, PartialEpoch, Position

ON_NONFINITE = ("restore", "keep")


def check_on_nonfinite(value: str) -> str:
    """'restore' or 'keep', else a one-line ValueError."""
    if value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be 'restore' or 'keep', got {value!r}")
    return value


class TrainingFault(RuntimeWarning):
    """Warned when a NaN or Inf loss or gradient pauses training."""


@dataclass
class Fault:
    """Where training went non-finite, and which variables' gradients did."""

    epoch: int
    batch: int
    loss: float
    variables: list[str] = field(default_factory=list)
    message: str = ""


class FaultSite(NamedTuple):
    """The bad step, and what went non-finite there."""

    epoch: int
    batch: int
    loss: float
    variables: list[str]  # those with a non-finite gradient
    weights: list[str]  # parameters the step's update made non-finite


@dataclass(frozen=True)
class FaultedCall:
    """The call that went non-finite, kept so its last finite step can be replayed."""

    plan: CallPlan
    result: CallResult
    partial_before: PartialEpoch  # the position's partial sums when the call began


def fault_message(
    epoch: int,
    batch: int | None,
    loss: float,
    variables: list[str],
    weights: list[str],
    learning_rate: float | None,
    restored: str | None,
    kind: str,
) -> str:
    """One paragraph: what went non-finite where, what was done, what to try."""
    what = f"loss is {loss:g}" if not math.isfinite(loss) else "loss is finite"
    if variables:
        what += f"; non-finite gradient for {', '.join(variables)}"
    if weights:
        what += f"; its update made {', '.join(weights)} non-finite"
    elif not variables and kind != "step" and math.isfinite(loss):
        what += "; the gradient norm overflowed"
    where = f"epoch {epoch}" if batch is None else f"epoch {epoch}, batch {batch}"
    text = f"Training paused at {where}: {what}."
    if restored:
        text += f" Weights restored to the last finite step ({restored})."
    else:
        text += " Weights left as they are; trainer.restore_last_finite() goes back."
    hint = " Try a smaller learning rate"
    if learning_rate is not None:
        hint += f" (now {learning_rate:g})"
    return text + hint + ", or look for log/sqrt/division of values that reach 0."


def locate_fault(
    res: CallResult, plan: CallPlan, names: list[str], param_names: list[str]
) -> FaultSite:
    """Epoch, batch and loss of the bad step; variables with a non-finite gradient; and
    parameters its update made non-finite (when the history records parameters)."""
    epoch, batch = plan.epoch0 + res.touched - 1, res.end_batch - 1
    bad, weights = [], []
    if res.last_sq is not None:
        bad = [n for n, sq in zip(names, res.last_sq, strict=True) if not np.isfinite(sq)]
    if res.bad_params is not None:
        pairs = zip(param_names, res.bad_params, strict=True)
        weights = [n for n, b in pairs if b and n not in bad]
    loss = float(res.loss_sum[-1]) if len(res.loss_sum) else float("nan")
    return FaultSite(epoch, batch, loss, bad, weights)


def replay_to_fault(engine: CompiledLoop, fault: FaultedCall) -> Position:
    """Restore the faulty call's snapshot and replay it up to the step before the fault.

    Replay is deterministic (same compiled function, same start state, stateless shuffle),
    so this lands on the last finite step without keeping a copy of every step's weights.
    Returns the position there.
    """
    plan, res, partial_before = fault.plan, fault.result, fault.partial_before
    e0, b0 = plan.epoch0, plan.b0
    engine.restore_snapshot()
    off, bad = res.touched - 1, res.end_batch - 1
    nb = engine.steps_per_epoch
    if not engine.spans_ok:  # a Dataset restarts each call: replay whole epochs only
        bad = 0
    elif nb:
        # The faulty step's weights already give a non-finite loss or gradient, so the
        # step before made them: go back one more (within this call, whose snapshot is
        # the limit). Resuming from there with a smaller learning rate then gets through.
        steps_before = off * nb + bad - b0
        if steps_before >= 1:
            off, bad = divmod(b0 + steps_before - 1, nb)
    if off == 0 and bad <= b0:
        return Position(e0, b0, partial_before)
    if bad == 0:
        engine(e0, off, b0, nb)
        return Position(e0 + off)
    rep = engine(e0, off + 1, b0, bad)
    carried = partial_before if off == 0 else PartialEpoch()
    return Position(e0 + off, bad, PartialEpoch.after(rep, carried, seconds=0.0))
